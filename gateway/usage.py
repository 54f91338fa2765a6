"""A usage row per `/v1` request: who (key id and name), which model and route, the
status, the latency, and for a post its pages and images. Prompts, answers and
credentials are never recorded.

Recorded: every authenticated `/v1` request except `GET /v1/models...` (clients poll
it; it costs nothing). Requests without a valid key are not recorded (no key to
charge, and a flood of them would only grow the table).

`UsageRecorder` (pure ASGI middleware) measures the status and the time until the
answer's last byte (a stream's whole length), then hands the row to `UsageWriter`,
which inserts rows in batches from a background task: the answer never waits for it.
Routes add what only they know with `note(request, ...)`; the error handlers add why
a request failed with `note_error` (nothing is read back from the answer's body).

`sweep_retention` deletes usage rows older than `INKGATE_USAGE_RETENTION_DAYS`, with
the dashboard's stale sign-in rows; `RetentionSweep` runs it hourly in the background.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from fastapi import Request
from sqlalchemy import delete, func, select
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from storage.db import Database
from storage.tables import AdminSession, AdminSignInFailure, Page, UsageRow

log = logging.getLogger("inkgate.usage")

NOTE = "inkgate.usage"
FLUSH_SECONDS = 1.0
BATCH = 200
MAX_QUEUED = 50_000  # rows beyond this are dropped (and logged) rather than grow memory
MESSAGE_MAX = 300


def note(request: Request, **fields: Any) -> None:
    """Attach `model`, `images`, `pages` or `post_id` to this request's usage row."""
    request.scope.setdefault("state", {}).setdefault(NOTE, {}).update(fields)


def note_error(request: Request, code: str | None, message: str) -> None:
    """Why this request failed (`code: message`, at most 300 characters), for its usage
    row. Called by the error handlers only: an answer that succeeds costs nothing."""
    text = f"{code}: {message}" if code else message
    note(request, message=text[:MESSAGE_MAX])


def add_images(request: Request, count: int) -> None:
    notes = request.scope.setdefault("state", {}).setdefault(NOTE, {})
    notes["images"] = (notes.get("images") or 0) + count


class UsageWriter:
    """Batches usage rows into the database from one background task."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._rows: list[dict] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._lock = asyncio.Lock()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.flush()

    def add(self, row: dict) -> None:
        if len(self._rows) >= MAX_QUEUED:
            log.warning("usage queue full: a usage row was dropped")
            return
        self._rows.append(row)
        if len(self._rows) >= BATCH:
            self._wake.set()

    async def flush(self) -> int:
        """Write every queued row now; the number written."""
        async with self._lock:
            rows, self._rows = self._rows, []
            if not rows:
                return 0
            try:
                await self._fill_posts(rows)
                async with self.db.writing(), self.db.engine.begin() as conn:
                    await conn.execute(UsageRow.__table__.insert(), rows)
            except Exception:
                log.exception("could not write %d usage rows", len(rows))
                return 0
            return len(rows)

    async def _fill_posts(self, rows: list[dict]) -> None:
        """A request that made or changed a post: the post's pages and drawn images
        when its answer finished (where the route did not say)."""
        todo = [
            r
            for r in rows
            if r["post_id"] and r["pages"] is None and r["method"] not in ("GET", "DELETE")
        ]
        wanted = {r["post_id"] for r in todo}
        if not wanted:
            return
        stmt = (
            select(Page.post_id, func.count(), func.count(Page.image_id))
            .where(Page.post_id.in_(wanted))
            .group_by(Page.post_id)
        )
        async with self.db.engine.connect() as conn:
            counts = {pid: (n, drawn) for pid, n, drawn in (await conn.execute(stmt)).all()}
        for row in todo:
            if row["post_id"] in counts:
                row["pages"], drawn = counts[row["post_id"]]
                if row["images"] is None:
                    row["images"] = drawn

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), FLUSH_SECONDS)
            self._wake.clear()
            await self.flush()


def _recorded(scope: Scope) -> bool:
    path = scope["path"]
    if not path.startswith("/v1/"):
        return False
    return not (
        scope["method"] == "GET" and (path == "/v1/models" or path.startswith("/v1/models/"))
    )


class UsageRecorder:
    """Pure ASGI middleware: a usage row per recorded request, written after it."""

    def __init__(self, app: ASGIApp, writer: Callable[[], UsageWriter | None]) -> None:
        self.app = app
        self.writer = writer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not _recorded(scope):
            await self.app(scope, receive, send)
            return
        started = time.time()
        clock = time.perf_counter()
        state = scope.setdefault("state", {})
        status = {"code": 500}

        async def watch(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, watch)
        except Exception as exc:
            # unhandled: its 500 answer is written outside this middleware, after it
            notes = state.setdefault(NOTE, {})
            notes.setdefault("message", f"internal_error: {type(exc).__name__}")
            raise
        finally:
            latency = (time.perf_counter() - clock) * 1000
            principal = state.get("principal")
            writer = self.writer()
            if principal is not None and writer is not None:
                notes = state.get(NOTE, {})
                route = scope.get("route")
                model = notes.get("model")
                writer.add(
                    {
                        "created_at": started,
                        "key_id": principal.key_id,
                        "key_name": principal.name[:200],
                        "model": str(model)[:200] if model else None,
                        "method": scope["method"][:8],
                        "endpoint": (getattr(route, "path", None) or scope["path"])[:200],
                        "status": status["code"],
                        "latency_ms": round(latency, 2),
                        "pages": notes.get("pages"),
                        "images": notes.get("images"),
                        "post_id": notes.get("post_id")
                        or (scope.get("path_params") or {}).get("post_id"),
                        "message": notes.get("message"),
                    }
                )


# -- retention -------------------------------------------------------------------

SWEEP_EVERY = 3600.0
FIRST_SWEEP_AFTER = 60.0  # not in the middle of starting up
SWEEP_BATCH = 5000
SIGNIN_FAILURE_DAYS = 1.0


async def _delete_in_batches(db: Database, table, id_column, condition) -> int:
    """DELETE the rows matching `condition`, `SWEEP_BATCH` at a time, each batch its own
    short transaction (writers of requests never wait long behind it)."""
    deleted = 0
    while True:
        batch = select(id_column).where(condition).limit(SWEEP_BATCH)
        async with db.writing(), db.engine.begin() as conn:
            result = await conn.execute(delete(table).where(id_column.in_(batch)))
        deleted += max(result.rowcount or 0, 0)
        if (result.rowcount or 0) < SWEEP_BATCH:
            return deleted
        await asyncio.sleep(0)


async def sweep_retention(
    db: Database, usage_days: float, *, now: float | None = None
) -> dict[str, int]:
    """Delete usage rows older than `usage_days` (0: kept forever), sign-in failures
    older than a day and expired dashboard sessions; the numbers deleted."""
    now = time.time() if now is None else now
    usage = UsageRow.__table__
    failures = AdminSignInFailure.__table__
    sessions = AdminSession.__table__
    report = {"usage": 0, "signin_failures": 0, "sessions": 0}
    if usage_days > 0:
        report["usage"] = await _delete_in_batches(
            db, usage, usage.c.id, usage.c.created_at < now - usage_days * 86400
        )
    report["signin_failures"] = await _delete_in_batches(
        db, failures, failures.c.id, failures.c.at < now - SIGNIN_FAILURE_DAYS * 86400
    )
    report["sessions"] = await _delete_in_batches(
        db, sessions, sessions.c.id, sessions.c.expires_at < now
    )
    if any(report.values()):
        log.info("retention sweep: %s", report)
    return report


class RetentionSweep:
    """Runs `sweep_retention` in the background: a minute after start, then hourly."""

    def __init__(self, db: Database, usage_days: float, every: float = SWEEP_EVERY) -> None:
        self.db = db
        self.usage_days = usage_days
        self.every = every
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="usage-retention")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        await asyncio.sleep(min(FIRST_SWEEP_AFTER, self.every))
        while True:
            try:
                await sweep_retention(self.db, self.usage_days)
            except Exception:  # the database away for a moment: next hour
                log.exception("usage retention sweep failed")
            await asyncio.sleep(self.every)
