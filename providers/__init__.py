"""Upstream providers behind one set of base classes (see `providers.base`)."""

from __future__ import annotations
