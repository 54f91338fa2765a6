"""Database, blob stores and image storage. Never calls providers."""

from __future__ import annotations
