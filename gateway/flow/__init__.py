"""The RedInk flow: topic → outline (text model) → cover → other pages (image model)."""

from __future__ import annotations
