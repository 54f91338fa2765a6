"""The operator's dashboard."""

from __future__ import annotations
