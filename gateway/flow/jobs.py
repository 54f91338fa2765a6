"""Durable post jobs and their stored progress events.

A job row says "this post is being generated, by this process, until this time";
the process renews the claim while it works. A job whose claim ran out (its
process was killed, or stopped) is taken over by any process with one
conditional UPDATE, so exactly one process resumes it.

Every progress event is a row with a per-post sequence number, so any process
(and a client reconnecting with `Last-Event-ID`) can read a post's progress.
Numbers are given out under a per-post lock and each row is committed before the
next is numbered: a reader that saw event n has seen every event before it.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, insert, select, update
from sqlalchemy.exc import IntegrityError

from storage.db import Database
from storage.tables import PostEvent, PostJob

TERMINAL = "finished"
ACTIVE = "running"


@dataclass
class StoredEvent:
    seq: int
    kind: str
    page: int | None
    data: dict[str, Any] = field(default_factory=dict)


def new_job_id() -> str:
    return "job_" + secrets.token_urlsafe(12)


class EventLog:
    """Appends and reads a post's events; wakes readers in this process at once
    (readers of other processes poll)."""

    def __init__(self, db: Database, clock: Callable[[], float] = time.time) -> None:
        self.db = db
        self.clock = clock
        self._locks: dict[str, asyncio.Lock] = {}
        self._next: dict[str, int] = {}
        self._wake: dict[str, asyncio.Event] = {}
        self._latest: dict[str, int] = {}  # the last seq appended here, per post

    async def append(
        self, post_id: str, kind: str, page: int | None = None, data: dict | None = None
    ) -> int:
        lock = self._locks.setdefault(post_id, asyncio.Lock())
        payload = json.dumps(data or {}, ensure_ascii=False, separators=(",", ":"))
        async with lock:
            for _ in range(3):
                seq = self._next.get(post_id) or await self.last_seq(post_id) + 1
                try:
                    async with self.db.writing(), self.db.engine.begin() as conn:
                        await conn.execute(
                            insert(PostEvent.__table__),
                            [
                                {
                                    "post_id": post_id,
                                    "seq": seq,
                                    "kind": kind,
                                    "page": page,
                                    "data": payload,
                                    "created_at": self.clock(),
                                }
                            ],
                        )
                except IntegrityError:
                    # another process wrote this post's events (a job taken over): re-read
                    self._next.pop(post_id, None)
                    continue
                self._next[post_id] = seq + 1
                self._latest[post_id] = seq
                break
            else:
                raise RuntimeError(f"could not number an event of {post_id}")
        wake = self._wake.pop(post_id, None)
        if wake is not None:
            wake.set()
        return seq

    def forget(self, post_id: str) -> None:
        """Drop the cached numbering (the job ended; another process may write next)."""
        self._next.pop(post_id, None)
        lock = self._locks.get(post_id)
        if lock is not None and not lock.locked():
            self._locks.pop(post_id, None)
        # readers still catching up compare against it for a moment longer
        asyncio.get_running_loop().call_later(30, self._latest.pop, post_id, None)

    async def last_seq(self, post_id: str) -> int:
        table = PostEvent.__table__
        async with self.db.engine.connect() as conn:
            value = (
                await conn.execute(select(func.max(table.c.seq)).where(table.c.post_id == post_id))
            ).scalar()
        return int(value or 0)

    async def read(self, post_id: str, after: int = 0, limit: int = 500) -> list[StoredEvent]:
        table = PostEvent.__table__
        async with self.db.engine.connect() as conn:
            rows = (
                await conn.execute(
                    select(table.c.seq, table.c.kind, table.c.page, table.c.data)
                    .where(table.c.post_id == post_id, table.c.seq > after)
                    .order_by(table.c.seq)
                    .limit(limit)
                )
            ).all()
        return [StoredEvent(seq, kind, page, json.loads(data)) for seq, kind, page, data in rows]

    async def wait(self, post_id: str, after: int, timeout: float) -> None:
        """Until an event of `post_id` after `after` is appended in this process, or
        `timeout` (events of other processes are found by polling)."""
        if self._latest.get(post_id, 0) > after:
            return  # appended since the caller read: no wake-up to miss
        wake = self._wake.setdefault(post_id, asyncio.Event())
        try:
            await asyncio.wait_for(wake.wait(), timeout)
        except TimeoutError:
            pass

    async def follow(
        self,
        post_id: str,
        after: int,
        *,
        active: Callable[[], Any],
        poll: float = 1.0,
    ) -> AsyncIterator[StoredEvent]:
        """Events after `after`, live, until a `finished` event with no job running
        after it, or until no job is running and every event was read.

        `active()` is awaited to learn whether a job of the post is running.
        """
        last = after
        while True:
            events = await self.read(post_id, last)
            for event in events:
                last = event.seq
                yield event
            if events and events[-1].kind == TERMINAL and not await active():
                return
            if not events:
                if not await active():
                    # a job that ended between the read and this check: read once more
                    tail = await self.read(post_id, last)
                    for event in tail:
                        yield event
                    return
                await self.wait(post_id, last, poll)


class JobStore:
    """The `post_jobs` rows: start, renew, take over, end."""

    def __init__(self, db: Database, owner: str, lease: float, clock=time.time) -> None:
        self.db = db
        self.owner = owner
        self.lease = lease
        self.clock = clock

    async def create(self, post_id: str, *, outline_only: bool) -> PostJob | None:
        """A running job claimed by this process; None when the post already has one."""
        now = self.clock()
        job = PostJob(
            id=new_job_id(),
            post_id=post_id,
            active_post_id=post_id,
            state=ACTIVE,
            outline_only=outline_only,
            claimed_by=self.owner,
            claimed_until=now + self.lease,
            created_at=now,
            updated_at=now,
        )
        try:
            async with self.db.writing(), self.db.engine.begin() as conn:
                await conn.execute(insert(PostJob.__table__), [job.model_dump()])
        except IntegrityError:
            return None
        return job

    async def active(self, post_id: str) -> PostJob | None:
        table = PostJob.__table__
        async with self.db.engine.connect() as conn:
            row = (
                (await conn.execute(select(table).where(table.c.active_post_id == post_id)))
                .mappings()
                .first()
            )
        return PostJob(**row) if row else None

    async def renew(self, job_ids: list[str]) -> None:
        if not job_ids:
            return
        table = PostJob.__table__
        now = self.clock()
        async with self.db.writing(), self.db.engine.begin() as conn:
            await conn.execute(
                update(table)
                .where(
                    table.c.id.in_(job_ids),
                    table.c.claimed_by == self.owner,
                    table.c.state == ACTIVE,
                )
                .values(claimed_until=now + self.lease, updated_at=now)
            )

    async def take_over(self, limit: int = 20) -> list[PostJob]:
        """Claim running jobs whose claim ran out (their process died or stopped)."""
        table = PostJob.__table__
        now = self.clock()
        async with self.db.engine.connect() as conn:
            rows = (
                (
                    await conn.execute(
                        select(table)
                        .where(table.c.state == ACTIVE, table.c.claimed_until < now)
                        .order_by(table.c.created_at)
                        .limit(limit)
                    )
                )
                .mappings()
                .all()
            )
        taken = []
        for row in rows:
            async with self.db.writing(), self.db.engine.begin() as conn:
                result = await conn.execute(
                    update(table)
                    .where(
                        table.c.id == row["id"],
                        table.c.state == ACTIVE,
                        table.c.claimed_until == row["claimed_until"],
                    )
                    .values(
                        claimed_by=self.owner,
                        claimed_until=now + self.lease,
                        runs=table.c.runs + 1,
                        updated_at=now,
                    )
                )
            if result.rowcount == 1:
                taken.append(PostJob(**{**row, "claimed_by": self.owner, "runs": row["runs"] + 1}))
        return taken

    async def release(self, job_ids: list[str]) -> None:
        """Give up the claims at once (shutting down): the next process resumes them
        without waiting for the lease to run out."""
        if not job_ids:
            return
        table = PostJob.__table__
        async with self.db.writing(), self.db.engine.begin() as conn:
            await conn.execute(
                update(table)
                .where(table.c.id.in_(job_ids), table.c.claimed_by == self.owner)
                .values(claimed_until=0.0)
            )

    async def end(self, job_id: str, state: str, error: str | None = None) -> None:
        table = PostJob.__table__
        async with self.db.writing(), self.db.engine.begin() as conn:
            await conn.execute(
                update(table)
                .where(table.c.id == job_id)
                .values(state=state, active_post_id=None, error=error, updated_at=self.clock())
            )
