"""Video jobs: recorded in the `videos` table, run by a `VideoRunner`, resumed anywhere.

A video is made in three steps: submit the upstream job, poll it until it finishes, then
download the MP4 into our store. The upstream task id is written to the row as soon as
the upstream accepted the job and before any wait, so a job resumed after a restart (or
taken over by another process) polls that task instead of submitting (and paying for) a
second one. Like post jobs (gateway/flow/jobs.py), the process running a job holds a
claim it renews every lease/3; a job whose claim ran out is taken over by any process
with one conditional UPDATE. Every write of a job is conditional on the claim: a process
that lost it (or whose video was deleted meanwhile) stops.

The provider's `poll_interval` and `video_deadline` options (Kling's) set the pace and
the limit; the deadline runs from the submission, across restarts. Stored MP4s live in
the blob store under `videos/` (local disk, and the bucket when one is configured) and
are deleted with their rows once `expires_at` passes.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import math
import random
import secrets
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import anyio
from sqlalchemy import delete, insert, select, update

from gateway.config import GatewayConfig
from gateway.errors import GatewayError, InvalidRequest, UpstreamError, UpstreamTimeout
from gateway.flow.video_inputs import VideoSpec, upstream_failed
from gateway.settings import Settings
from gateway.upstream_slots import UpstreamSlots
from providers.base import ImageData, VideoProvider, VideoStatus
from storage.db import Database
from storage.images import ImageStore
from storage.video_tables import (
    ACTIVE_STATUSES,
    COMPLETED,
    FAILED,
    IN_PROGRESS,
    QUEUED,
    Video,
)

log = logging.getLogger("inkgate.videos")

VIDEO_TTL_SECONDS = 7 * 24 * 3600  # stored videos (and their rows) go after this
SWEEP_SECONDS = 600.0
DEFAULT_POLL_INTERVAL = 3.0
DEFAULT_DEADLINE = 900.0
# progress is estimated when the upstream does not report it: ~63 % after this long
EXPECTED_SECONDS = 90.0
MAX_RETRY_DELAY = 30.0
FOLLOW_POLL_SECONDS = 1.0


def new_video_id() -> str:
    return "video_" + secrets.token_urlsafe(16)


# --- the stored files -------------------------------------------------------------------


def _is_mp4(data: bytes) -> bool:
    return data[4:8] == b"ftyp"


class VideoFiles:
    """MP4s in the blob store under `videos/`: on local disk, and in the bucket when one
    is configured (uploaded once when stored; read back on a local miss). The image
    lifecycle never touches `videos/`: expiry is the runner's sweep."""

    def __init__(self, images: ImageStore) -> None:
        self.local = images.blobs
        self.remote = images.remote

    @staticmethod
    def key(video_id: str) -> str:
        return f"videos/{video_id[6:8] or 'xx'}/{video_id}.mp4"

    def _put(self, key: str, data: bytes) -> None:
        self.local.put(key, data)
        if self.remote is not None:
            try:
                self.remote.put_file(key, self.local.path(key))
            except Exception as exc:  # served from local disk meanwhile
                log.warning("video %s not uploaded to the bucket: %s", key, exc)

    async def put(self, key: str, data: bytes) -> None:
        await anyio.to_thread.run_sync(self._put, key, data)

    def _path(self, key: str) -> Path | None:
        path = self.local.path(key)
        if path.is_file():
            return path
        if self.remote is None:
            return None
        tmp = path.with_name(f".tmp-{secrets.token_hex(6)}-{path.name}")
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.remote.get_to_file(key, tmp)
            tmp.replace(path)
        except Exception as exc:
            log.warning("video %s not readable from the bucket: %s", key, exc)
            return None
        finally:
            tmp.unlink(missing_ok=True)
        return path

    async def path(self, key: str) -> Path | None:
        """The local file (downloaded from the bucket on a miss), or None."""
        return await anyio.to_thread.run_sync(self._path, key)

    def _delete(self, key: str) -> None:
        self.local.delete(key)
        if self.remote is not None:
            try:
                self.remote.delete(key)
            except Exception as exc:
                log.warning("video %s not deleted from the bucket: %s", key, exc)

    async def delete(self, key: str) -> None:
        await anyio.to_thread.run_sync(self._delete, key)


# --- the runner -------------------------------------------------------------------------


def estimated_progress(status: VideoStatus, elapsed: float, previous: int) -> int:
    """0-99 while the job runs: the upstream's own figure, else an estimate from the time
    since submission; never going back."""
    if status.status == "queued":
        return previous
    if status.progress is not None:
        value = int(max(0.0, min(1.0, status.progress)) * 100)
    else:
        value = int(95 * (1 - math.exp(-max(0.0, elapsed) / EXPECTED_SECONDS)))
    return max(previous, 1, min(99, value))


class VideoRunner:
    """Creates, runs, renews, resumes and expires video jobs (see the module docstring)."""

    def __init__(
        self,
        settings: Settings,
        db: Database,
        images: ImageStore,
        config: Callable[[], GatewayConfig],
        slots: UpstreamSlots | None = None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.db = db
        self.images = images
        self.files = VideoFiles(images)
        self._config = config
        self.slots = slots or UpstreamSlots()
        self.clock = clock
        self.lease = settings.job_lease_seconds
        self.process_id = secrets.token_hex(8)
        self._running: dict[str, asyncio.Task] = {}
        self._changed: dict[str, asyncio.Event] = {}
        self._maintainer: asyncio.Task | None = None
        self._next_sweep = 0.0

    # -- rows --------------------------------------------------------------

    async def get(self, video_id: str) -> Video | None:
        table = Video.__table__
        async with self.db.engine.connect() as conn:
            row = (
                (await conn.execute(select(table).where(table.c.id == video_id))).mappings().first()
            )
        return Video(**row) if row else None

    async def list(
        self, owner_key_id: str | None, *, every: bool, limit: int, after: str | None,
        order: str,
    ) -> tuple[list[Video], bool]:  # fmt: skip
        """A page of videos (`every`: all owners), newest first for `desc`; whether more
        follow. `after` is the id of the previous page's last video."""
        table = Video.__table__
        where = [] if every else [table.c.owner_key_id == owner_key_id]
        desc = order != "asc"
        if after:
            anchor = await self.get(after)
            if anchor is None or not (every or anchor.owner_key_id == owner_key_id):
                raise InvalidRequest(f"No video {after!r} to page after", param="after")
            later = (table.c.created_at > anchor.created_at) | (
                (table.c.created_at == anchor.created_at) & (table.c.id > anchor.id)
            )
            earlier = (table.c.created_at < anchor.created_at) | (
                (table.c.created_at == anchor.created_at) & (table.c.id < anchor.id)
            )
            where.append(earlier if desc else later)
        ordering = (
            (table.c.created_at.desc(), table.c.id.desc())
            if desc
            else (table.c.created_at.asc(), table.c.id.asc())
        )
        async with self.db.engine.connect() as conn:
            rows = (
                (
                    await conn.execute(
                        select(table).where(*where).order_by(*ordering).limit(limit + 1)
                    )
                )
                .mappings()
                .all()
            )
        videos = [Video(**row) for row in rows]
        return videos[:limit], len(videos) > limit

    async def _update(self, video_id: str, **values: Any) -> bool:
        """One UPDATE of a job this process holds; False when it no longer does (taken
        over, or the video was deleted)."""
        table = Video.__table__
        values["updated_at"] = self.clock()
        async with self.db.writing(), self.db.engine.begin() as conn:
            result = await conn.execute(
                update(table)
                .where(table.c.id == video_id, table.c.claimed_by == self.process_id)
                .values(**values)
            )
        self._wake(video_id)
        return result.rowcount == 1

    def _wake(self, video_id: str) -> None:
        event = self._changed.pop(video_id, None)
        if event is not None:
            event.set()

    # -- starting ----------------------------------------------------------

    async def create(self, spec: VideoSpec, *, owner_key_id: str | None) -> Video:
        """Record a video job (its frames stored as images of the key) and start it."""
        params = dict(spec.params)
        for name, frame in (
            ("first_frame_id", spec.first_frame),
            ("last_frame_id", spec.last_frame),
        ):
            if frame is not None:
                stored = await self.images.put(frame.data, owner_key_id=owner_key_id)
                params[name] = stored.id
        now = self.clock()
        row = Video(
            id=new_video_id(),
            owner_key_id=owner_key_id,
            model=spec.model,
            provider=spec.provider,
            status=QUEUED,
            progress=0,
            prompt=spec.prompt,
            params=json.dumps(params, ensure_ascii=False),
            seconds=spec.seconds,
            size=spec.size,
            claimed_by=self.process_id,
            claimed_until=now + self.lease,
            created_at=now,
            updated_at=now,
            expires_at=now + VIDEO_TTL_SECONDS,
        )
        async with self.db.writing(), self.db.engine.begin() as conn:
            await conn.execute(insert(Video.__table__), [row.model_dump()])
        self._launch(row.id)
        return row

    def _launch(self, video_id: str) -> asyncio.Task:
        task = asyncio.create_task(self._execute(video_id), name=f"video-{video_id}")
        self._running[video_id] = task
        task.add_done_callback(lambda _t, vid=video_id: self._running.pop(vid, None))
        return task

    async def delete(self, row: Video) -> None:
        """Delete a video's row and its stored MP4 (a job still running stops at its next
        write; its upstream task is not cancelled)."""
        table = Video.__table__
        async with self.db.writing(), self.db.engine.begin() as conn:
            await conn.execute(delete(table).where(table.c.id == row.id))
        if row.file_key:
            await self.files.delete(row.file_key)
        task = self._running.get(row.id)
        if task is not None:
            task.cancel()
        self._wake(row.id)

    async def follow(self, video_id: str) -> AsyncIterator[Video]:
        """The row each time its status or progress changes (whichever process runs the
        job), until it is completed or failed; stops when the video is deleted."""
        last: tuple | None = None
        while True:
            event = self._changed.setdefault(video_id, asyncio.Event())
            row = await self.get(video_id)
            if row is None:
                return
            if (row.status, row.progress) != last:
                last = (row.status, row.progress)
                yield row
            if row.status not in ACTIVE_STATUSES:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), FOLLOW_POLL_SECONDS)

    # -- background: renew claims, resume what a dead process left, expire --

    def start_background(self) -> None:
        if self._maintainer is None:
            self._maintainer = asyncio.create_task(self._maintain(), name="video-jobs")

    async def _maintain(self) -> None:
        every = max(0.2, self.lease / 3)
        while True:
            try:
                await self._renew(list(self._running))
                await self.resume_now()
                if self.clock() >= self._next_sweep:
                    self._next_sweep = self.clock() + SWEEP_SECONDS
                    await self.sweep_expired()
            except Exception:  # the database away for a moment: try again next round
                log.exception("video job maintenance failed")
            await asyncio.sleep(every)

    async def _renew(self, video_ids: list[str]) -> None:
        if not video_ids:
            return
        table = Video.__table__
        async with self.db.writing(), self.db.engine.begin() as conn:
            await conn.execute(
                update(table)
                .where(
                    table.c.id.in_(video_ids),
                    table.c.claimed_by == self.process_id,
                    table.c.status.in_(ACTIVE_STATUSES),
                )
                .values(claimed_until=self.clock() + self.lease)
            )

    async def resume_now(self, limit: int = 20) -> int:
        """Take over unfinished jobs whose claim ran out (their process died or stopped)
        and run them here: polling goes on with the stored task id."""
        table = Video.__table__
        now = self.clock()
        async with self.db.engine.connect() as conn:
            rows = (
                await conn.execute(
                    select(table.c.id, table.c.claimed_until)
                    .where(table.c.status.in_(ACTIVE_STATUSES), table.c.claimed_until < now)
                    .order_by(table.c.created_at)
                    .limit(limit)
                )
            ).all()
        taken = 0
        for video_id, claimed_until in rows:
            if video_id in self._running:
                continue
            async with self.db.writing(), self.db.engine.begin() as conn:
                result = await conn.execute(
                    update(table)
                    .where(
                        table.c.id == video_id,
                        table.c.status.in_(ACTIVE_STATUSES),
                        table.c.claimed_until == claimed_until,
                    )
                    .values(
                        claimed_by=self.process_id,
                        claimed_until=now + self.lease,
                        runs=table.c.runs + 1,
                        updated_at=now,
                    )
                )
            if result.rowcount == 1:
                log.info("resuming video job %s", video_id)
                self._launch(video_id)
                taken += 1
        return taken

    async def sweep_expired(self, limit: int = 200) -> int:
        """Delete videos (rows and files) whose `expires_at` passed; how many."""
        table = Video.__table__
        async with self.db.engine.connect() as conn:
            rows = (
                (
                    await conn.execute(
                        select(table)
                        .where(table.c.expires_at.is_not(None), table.c.expires_at < self.clock())
                        .limit(limit)
                    )
                )
                .mappings()
                .all()
            )
        for row in rows:
            await self.delete(Video(**row))
        if rows:
            log.info("%d expired videos deleted", len(rows))
        return len(rows)

    async def shutdown(self) -> None:
        """Stop working: running jobs are released, not failed, so the next process (or
        this one restarted) resumes them with their stored task ids."""
        if self._maintainer is not None:
            self._maintainer.cancel()
            await asyncio.gather(self._maintainer, return_exceptions=True)
            self._maintainer = None
        running = dict(self._running)
        for task in running.values():
            task.cancel()
        await asyncio.gather(*running.values(), return_exceptions=True)
        if running:
            table = Video.__table__
            with contextlib.suppress(Exception):
                async with self.db.writing(), self.db.engine.begin() as conn:
                    await conn.execute(
                        update(table)
                        .where(
                            table.c.id.in_(list(running)),
                            table.c.claimed_by == self.process_id,
                        )
                        .values(claimed_until=0.0)
                    )

    # -- the job -----------------------------------------------------------

    async def _execute(self, video_id: str) -> None:
        try:
            row = await self.get(video_id)
            if row is None or row.status not in ACTIVE_STATUSES:
                return
            provider = self._config().providers.get(row.provider)
            if not isinstance(provider, VideoProvider):
                raise GatewayError(
                    f"The video's provider {row.provider!r} is no longer configured",
                    code="provider_not_configured",
                )
            if row.task_id is None and row.runs > 1:
                ours, row.task_id = await self._find_submitted(row, provider)
                if not ours:
                    return
            if row.task_id is None:
                task_id = await self._submit(row, provider)
                if task_id is None:
                    return
                row.task_id, row.submitted_at = task_id, self.clock()
            await self._wait(row, provider)
        except asyncio.CancelledError:
            raise  # shutting down (or deleted): the job stays, to be resumed
        except GatewayError as exc:
            await self._fail(video_id, exc.code or "upstream_error", exc.message)
        except Exception:
            # A bug or a database outage: readers must hear of it, not wait forever.
            log.exception("video %s failed unexpectedly", video_id)
            await self._fail(
                video_id, "internal_error", "The video could not be made (internal error)."
            )

    async def _frame(self, image_id: str | None, what: str) -> ImageData | None:
        if not image_id:
            return None
        row = await self.images.get(image_id)
        try:
            if row is not None:
                return ImageData(await self.images.read(row), row.mime)
        except FileNotFoundError:
            pass
        raise GatewayError(f"The video's {what} image is no longer stored", code="frame_missing")

    async def _find_submitted(self, row: Video, provider: VideoProvider) -> tuple[bool, str | None]:
        """A resumed job without a task id: the previous run may have died after the
        upstream accepted the job and before its id was stored. Ask the upstream for a
        job with our id (`external_id`), so that it is not submitted, and paid for, twice.

        (still ours, the task id found or None); not ours: deleted or taken over."""
        from_image = bool(json.loads(row.params).get("first_frame_id"))

        async def call() -> str | None:
            return await provider.find(row.id, from_image=from_image)

        task_id = await self._with_retries(call, what=f"lookup of {row.id}")
        if task_id is None:
            return True, None
        log.info("video %s: the previous run's upstream task %s found; not submitting again",
                 row.id, task_id)  # fmt: skip
        # the deadline counts from the job's creation: its submission time was lost
        submitted = row.created_at or self.clock()
        if not await self._update(row.id, task_id=task_id, submitted_at=submitted):
            return False, None
        row.submitted_at = submitted
        return True, task_id

    async def _submit(self, row: Video, provider: VideoProvider) -> str | None:
        """Submit the upstream job and record its task id before anything else; None when
        this process no longer holds the job."""
        params = json.loads(row.params)
        first = await self._frame(params.pop("first_frame_id", None), "first frame")
        last = await self._frame(params.pop("last_frame_id", None), "last frame")
        limit = self._config().provider_limits.get(row.provider)

        async def call() -> str:
            async with self.slots.slot(row.provider, limit):
                return await provider.submit(
                    row.prompt, first_frame=first, last_frame=last, external_id=row.id, **params
                )

        task_id = await self._with_retries(call, what=f"submit of {row.id}")
        log.info("video %s: upstream task %s submitted", row.id, task_id)
        if not await self._update(row.id, task_id=task_id, submitted_at=self.clock()):
            log.warning(
                "video %s was deleted or taken over after its submission; upstream task %s "
                "runs on unwatched", row.id, task_id,
            )  # fmt: skip
            return None
        return task_id

    async def _with_retries(self, call: Callable[[], Any], *, what: str) -> Any:
        """`call()`, retried with backoff on transient errors (a submit answered 429)."""
        tries = max(1, self.settings.page_retries)
        for n in range(1, tries + 1):
            try:
                return await call()
            except GatewayError as exc:
                if not exc.retryable or n == tries:
                    raise
                delay = exc.retry_after or self.settings.retry_base_delay * 2 ** (n - 1)
                delay = min(MAX_RETRY_DELAY, delay) * (1 + random.random() * 0.25)
                log.warning("%s: %s; retry %d/%d in %.1fs", what, exc.message, n, tries - 1, delay)
                await asyncio.sleep(delay)
        raise AssertionError("unreachable")

    async def _wait(self, row: Video, provider: VideoProvider) -> None:
        """Poll the upstream task until it finished, storing status and progress as they
        change; download and store the result. Transient poll and download errors are
        tolerated until the provider's `video_deadline` after the submission."""
        assert row.task_id is not None
        options = provider.options
        interval = float(getattr(options, "poll_interval", DEFAULT_POLL_INTERVAL))
        seconds = float(getattr(options, "video_deadline", DEFAULT_DEADLINE))
        submitted = row.submitted_at or self.clock()
        deadline = submitted + seconds
        status, progress = row.status, row.progress
        last_problem = ""
        while True:
            remaining = deadline - self.clock()
            if remaining <= 0:
                raise UpstreamTimeout(
                    f"Upstream provider '{provider.name}': the video task did not finish within "
                    f"{seconds:g} s{last_problem}",
                    code="upstream_job_timeout",
                    retryable=False,
                )
            await asyncio.sleep(min(interval, remaining))
            try:
                upstream = await provider.poll(row.task_id)
                if upstream.status == "succeeded":
                    data = await self._result(provider, upstream)
                    await self._complete(row, data)
                    return
            except GatewayError as exc:
                if not exc.retryable:
                    raise
                log.warning("video %s: poll or download failed: %s", row.id, exc.message)
                last_problem = f" (last try: {exc.message})"
                continue
            if upstream.status == "failed":
                raise upstream_failed(provider.name, upstream.error)
            new_status = QUEUED if upstream.status == "queued" else IN_PROGRESS
            new_progress = estimated_progress(upstream, self.clock() - submitted, progress)
            if (new_status, new_progress) != (status, progress):
                status, progress = new_status, new_progress
                if not await self._update(row.id, status=status, progress=progress):
                    return

    async def _result(self, provider: VideoProvider, status: VideoStatus) -> bytes:
        if status.result is not None:
            return status.result
        fetch = getattr(provider, "fetch_video", None)
        if status.result_url and fetch is not None:
            return await fetch(status.result_url)
        raise UpstreamError(
            f"Upstream provider '{provider.name}' finished the video without a result the "
            "gateway can download",
            retryable=False,
        )

    async def _complete(self, row: Video, data: bytes) -> None:
        if not _is_mp4(data):
            raise UpstreamError(
                f"Upstream provider '{row.provider}' returned a video that is not an MP4",
                retryable=False,
            )
        key = self.files.key(row.id)
        sha256 = await anyio.to_thread.run_sync(lambda: hashlib.sha256(data).hexdigest())
        await self.files.put(key, data)
        now = self.clock()
        done = await self._update(
            row.id, status=COMPLETED, progress=100, file_key=key, size_bytes=len(data),
            sha256=sha256, completed_at=now, claimed_by=None, claimed_until=0.0,
        )  # fmt: skip
        if not done:  # deleted meanwhile: the file has no row to serve it
            await self.files.delete(key)
            return
        log.info("video %s completed (%d bytes)", row.id, len(data))

    async def _fail(self, video_id: str, code: str, message: str) -> None:
        log.warning("video %s failed: %s: %s", video_id, code, message)
        with contextlib.suppress(Exception):
            await self._update(
                video_id, status=FAILED, error_code=code[:64], error_message=message[:2000],
                completed_at=self.clock(), claimed_by=None, claimed_until=0.0,
            )  # fmt: skip
