"""InkGate: an OpenAI-compatible gateway for AI image posts."""

from __future__ import annotations

__version__ = "0.1.0"
