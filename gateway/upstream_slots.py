"""A concurrency cap per upstream provider, shared by every request, post and process.

Five posts of 15 pages must not put 75 calls on an account that allows 4: each
provider's `max_concurrency` (config) bounds the calls in flight to it from every
InkGate process that shares the database — workers of one host on SQLite, or
replicas on PostgreSQL.

How: the provider's slots are rows `(provider, slot_no)` of `upstream_slots`. A
call takes a free row with one atomic `UPDATE ... WHERE holder IS NULL OR
expires_at < now` (rowcount 1 = taken), renews it while the call runs, and frees
it afterwards. A crashed process's rows expire after `LEASE_SECONDS`. In front of
the database sits a per-process semaphore, so a process never has more waiters
polling the table than the limit.
"""

from __future__ import annotations

import asyncio
import logging
import random
import secrets
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress

from sqlalchemy import and_, delete, or_, update

from storage.db import Database
from storage.tables import UpstreamSlot

log = logging.getLogger("inkgate.slots")

LEASE_SECONDS = 90.0  # a holder that stops renewing loses its slot after this
RENEW_SECONDS = 30.0
POLL_MIN, POLL_MAX = 0.05, 1.0


class UpstreamSlots:
    """Per-provider caps. With a database the cap holds across processes."""

    def __init__(self, db: Database | None = None, clock: Callable[[], float] = time.time) -> None:
        self.db = db
        self.clock = clock
        self.holder = secrets.token_hex(8)  # this process
        self._local: dict[tuple[str, int], asyncio.Semaphore] = {}
        self._seeded: set[tuple[str, int]] = set()

    @asynccontextmanager
    async def slot(self, provider: str, limit: int | None) -> AsyncIterator[None]:
        """Hold one of `provider`'s `limit` slots (no limit: no waiting)."""
        if not limit:
            yield
            return
        # keyed by the limit too: a config reload that changes it starts a fresh count
        semaphore = self._local.setdefault((provider, limit), asyncio.Semaphore(limit))
        async with semaphore:
            if self.db is None:
                yield
                return
            slot_no = await self._acquire(provider, limit)
            renew = asyncio.create_task(self._renew(provider, slot_no))
            try:
                yield
            finally:
                renew.cancel()
                with suppress(asyncio.CancelledError):
                    await renew
                await asyncio.shield(self._release(provider, slot_no))

    async def _acquire(self, provider: str, limit: int) -> int:
        await self._seed(provider, limit)
        delay = POLL_MIN
        while True:
            start = random.randrange(limit)
            for i in range(limit):
                slot_no = (start + i) % limit
                if await self._try_take(provider, slot_no):
                    return slot_no
            # every slot is held (by other processes: this one's semaphore let us in)
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))
            delay = min(delay * 2, POLL_MAX)

    async def _seed(self, provider: str, limit: int) -> None:
        if (provider, limit) in self._seeded:
            return
        table = UpstreamSlot.__table__
        if self.db.is_sqlite:
            from sqlalchemy.dialects.sqlite import insert as dialect_insert
        else:
            from sqlalchemy.dialects.postgresql import insert as dialect_insert
        rows = [
            {"provider": provider, "slot_no": n, "holder": None, "expires_at": 0.0}
            for n in range(limit)
        ]
        async with self.db.writing(), self.db.engine.begin() as conn:
            await conn.execute(dialect_insert(table).values(rows).on_conflict_do_nothing())
        self._seeded.add((provider, limit))

    async def _try_take(self, provider: str, slot_no: int) -> bool:
        table = UpstreamSlot.__table__
        now = self.clock()
        async with self.db.writing(), self.db.engine.begin() as conn:
            result = await conn.execute(
                update(table)
                .where(
                    and_(
                        table.c.provider == provider,
                        table.c.slot_no == slot_no,
                        or_(table.c.holder.is_(None), table.c.expires_at < now),
                    )
                )
                .values(holder=self.holder, expires_at=now + LEASE_SECONDS)
            )
            return result.rowcount == 1

    async def _renew(self, provider: str, slot_no: int) -> None:
        table = UpstreamSlot.__table__
        while True:
            await asyncio.sleep(RENEW_SECONDS)
            try:
                async with self.db.writing(), self.db.engine.begin() as conn:
                    await conn.execute(
                        update(table)
                        .where(self._mine(provider, slot_no))
                        .values(expires_at=self.clock() + LEASE_SECONDS)
                    )
            except Exception:
                log.warning("could not renew the %s upstream slot", provider, exc_info=True)

    async def _release(self, provider: str, slot_no: int) -> None:
        table = UpstreamSlot.__table__
        try:
            async with self.db.writing(), self.db.engine.begin() as conn:
                await conn.execute(
                    update(table).where(self._mine(provider, slot_no)).values(holder=None)
                )
        except Exception:  # it expires by itself
            log.warning("could not free the %s upstream slot", provider, exc_info=True)

    def _mine(self, provider: str, slot_no: int):
        table = UpstreamSlot.__table__
        return and_(
            table.c.provider == provider,
            table.c.slot_no == slot_no,
            table.c.holder == self.holder,
        )

    async def release_all(self) -> None:
        """At shutdown: free whatever this process still holds."""
        if self.db is None:
            return
        table = UpstreamSlot.__table__
        with suppress(Exception):
            async with self.db.writing(), self.db.engine.begin() as conn:
                await conn.execute(
                    update(table).where(table.c.holder == self.holder).values(holder=None)
                )

    async def forget(self, provider: str) -> None:
        """Drop a provider's slot rows (tests and provider deletion)."""
        if self.db is None:
            return
        table = UpstreamSlot.__table__
        async with self.db.writing(), self.db.engine.begin() as conn:
            await conn.execute(delete(table).where(table.c.provider == provider))
        self._seeded = {k for k in self._seeded if k[0] != provider}
