"""A concurrency cap per upstream provider, shared by every request and post.

Five posts of 15 pages must not put 75 calls on an account that allows 4: each
provider's `max_concurrency` (config) bounds the calls in flight to it from this
process, whoever makes them.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class UpstreamSlots:
    def __init__(self) -> None:
        self._limits: dict[tuple[str, int], asyncio.Semaphore] = {}

    @asynccontextmanager
    async def slot(self, provider: str, limit: int | None) -> AsyncIterator[None]:
        """Hold one of `provider`'s `limit` slots (no limit: no waiting)."""
        if not limit:
            yield
            return
        # keyed by the limit too: a config reload that changes it starts a fresh count
        semaphore = self._limits.setdefault((provider, limit), asyncio.Semaphore(limit))
        async with semaphore:
            yield
