"""The durable upload queue: local copies go to the bucket, whatever restarts or outages.

Each content's `blobs` row carries its remote state: `pending → uploading →
uploaded | failed`, with attempts, the last error and the next attempt time. A
worker claims a due row with one atomic `UPDATE ... WHERE state = 'pending' AND
next_attempt_at <= now` (rowcount 1 = claimed), so only one process works on a
given upload; a claim a dead process left expires after `CLAIM_SECONDS`.

An unreachable bucket (an R2 outage) keeps rows `pending` with a backoff capped at
5 minutes, however long it lasts; other errors count towards
`INKGATE_UPLOAD_MAX_ATTEMPTS` (backoff up to an hour), then the row is `failed`
until someone retries it. Meanwhile images are served from local disk, whose copy
the lifecycle never evicts before the upload.
"""

from __future__ import annotations

import asyncio
import logging
import random
import secrets

import anyio
from sqlalchemy import and_, or_, select, update

from storage.images import ImageStore
from storage.tables import Blob

log = logging.getLogger("inkgate.uploads")

CLAIM_SECONDS = 300.0
POLL_SECONDS = 5.0
BATCH = 16
PARALLEL = 4
OUTAGE_MAX_DELAY = 300.0
ERROR_MAX_DELAY = 3600.0


def backoff(attempts: int, cap: float) -> float:
    """Seconds before attempt `attempts + 1`: 5 s doubling, with jitter, at most `cap`."""
    return min(cap, 5.0 * 2 ** max(0, attempts - 1)) * random.uniform(0.8, 1.0)


class UploadQueue:
    def __init__(self, images: ImageStore) -> None:
        self.images = images
        self.db = images.db
        self.holder = secrets.token_hex(8)
        self._table = Blob.__table__

    def _due(self, now: float):
        t = self._table
        return or_(
            and_(t.c.remote_state == "pending", t.c.next_attempt_at <= now),
            and_(t.c.remote_state == "uploading", t.c.claimed_until < now),
        )

    async def enqueue_unsent(self) -> int:
        """At start with a bucket configured: contents stored before it (state `none`)."""
        async with self.db.writing(), self.db.engine.begin() as conn:
            result = await conn.execute(
                update(self._table)
                .where(self._table.c.remote_state == "none", self._table.c.local.is_(True))
                .values(remote_state="pending", attempts=0, next_attempt_at=0.0)
            )
        if result.rowcount:
            self.images.uploads_wanted.set()
        return result.rowcount

    async def process_due(self) -> int:
        """Claim and upload what is due now (a batch). Returns how many were uploaded."""
        if not self.images.remote_enabled:
            return 0
        now = self.images.clock()
        async with self.db.session() as session:
            keys = (
                (
                    await session.execute(
                        select(self._table.c.key)
                        .where(self._due(now))
                        .order_by(self._table.c.next_attempt_at)
                        .limit(BATCH)
                    )
                )
                .scalars()
                .all()
            )
        uploaded = 0
        limiter = asyncio.Semaphore(PARALLEL)

        async def one(key: str) -> None:
            nonlocal uploaded
            async with limiter:
                if await self._claim(key, now):
                    done = await self._upload(key)  # not `+= await`: it reads first
                    uploaded += done

        await asyncio.gather(*(one(k) for k in keys))
        return uploaded

    async def _claim(self, key: str, now: float) -> bool:
        t = self._table
        async with self.db.writing(), self.db.engine.begin() as conn:
            result = await conn.execute(
                update(t)
                .where(t.c.key == key, self._due(now))
                .values(
                    remote_state="uploading",
                    claimed_by=self.holder,
                    claimed_until=now + CLAIM_SECONDS,
                    attempts=t.c.attempts + 1,
                )
            )
        return result.rowcount == 1

    async def _upload(self, key: str) -> int:
        from storage.s3 import StorageUnavailable

        path = self.images.blobs.path(key)
        try:
            await anyio.to_thread.run_sync(self.images.remote.put_file, key, path)
        except FileNotFoundError:
            await self._finish(key, error="the local copy is missing", final=True)
            return 0
        except StorageUnavailable as exc:
            await self._finish(key, error=str(exc), outage=True)
            return 0
        except Exception as exc:  # an answer from the bucket: counts as an attempt
            await self._finish(key, error=f"{type(exc).__name__}: {exc}")
            return 0
        t = self._table
        async with self.db.writing(), self.db.engine.begin() as conn:
            await conn.execute(
                update(t)
                .where(t.c.key == key, t.c.claimed_by == self.holder)
                .values(
                    remote_state="uploaded",
                    uploaded_at=self.images.clock(),
                    last_error=None,
                    claimed_by=None,
                    claimed_until=0.0,
                )
            )
        return 1

    async def _finish(
        self, key: str, *, error: str, outage: bool = False, final: bool = False
    ) -> None:
        t = self._table
        async with self.db.session() as session:
            attempts = (
                await session.execute(select(t.c.attempts).where(t.c.key == key))
            ).scalar_one_or_none() or 1
        give_up = final or (not outage and attempts >= self.images.config.upload_max_attempts)
        delay = backoff(attempts, OUTAGE_MAX_DELAY if outage else ERROR_MAX_DELAY)
        log.warning(
            "upload of %s failed (attempt %d%s): %s",
            key, attempts, ", giving up" if give_up else f", again in {delay:.0f} s", error,
        )  # fmt: skip
        async with self.db.writing(), self.db.engine.begin() as conn:
            await conn.execute(
                update(t)
                .where(t.c.key == key, t.c.claimed_by == self.holder)
                .values(
                    remote_state="failed" if give_up else "pending",
                    last_error=error[:2000],
                    next_attempt_at=self.images.clock() + delay,
                    claimed_by=None,
                    claimed_until=0.0,
                )
            )

    async def upload_pending_now(self) -> int:
        """Make every pending upload due now (the admin's "upload pending")."""
        t = self._table
        async with self.db.writing(), self.db.engine.begin() as conn:
            result = await conn.execute(
                update(t).where(t.c.remote_state == "pending").values(next_attempt_at=0.0)
            )
        self.images.uploads_wanted.set()
        return result.rowcount

    async def retry_failed(self) -> int:
        t = self._table
        async with self.db.writing(), self.db.engine.begin() as conn:
            result = await conn.execute(
                update(t)
                .where(t.c.remote_state == "failed")
                .values(remote_state="pending", attempts=0, next_attempt_at=0.0)
            )
        self.images.uploads_wanted.set()
        return result.rowcount

    async def run(self) -> None:
        """The worker: uploads as soon as something is written, and polls for due retries
        and work other processes left."""
        while True:
            self.images.uploads_wanted.clear()
            try:
                while await self.process_due():
                    pass
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("upload worker pass failed")
            # not asyncio.wait_for: on 3.11 a cancel that races its timeout can leave it
            # waiting on the inner task forever (seen as a hang at shutdown)
            waiter = asyncio.ensure_future(self.images.uploads_wanted.wait())
            try:
                await asyncio.wait([waiter], timeout=POLL_SECONDS)
            finally:
                waiter.cancel()
