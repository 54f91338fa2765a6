"""`/admin/api/logs`: the JSON behind the dashboard's Logs page. Requests (the `usage`
table) and post job events (`post_events`), merged newest first, read from the
database so every replica shows the same log.

A page answers `latest`, a cursor `"<usage id>-<event id>"`: sent back as `after_id`,
only rows written since are returned (oldest first up to `limit`, then `has_more`
says to ask again at once). `next_before`, sent as `before_id`, pages to older rows.
"""

from __future__ import annotations

import heapq
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from sqlalchemy import and_, func, or_, select

from admin.api import Admin
from admin.keys import _since
from gateway.errors import InvalidRequest
from gateway.routes.common import AppState, state_of
from gateway.routes.posts import contains_pattern
from storage.tables import ApiKey, Post, PostEvent, UsageRow

router = APIRouter(prefix="/admin/api", tags=["admin"])

Level = Literal["info", "warning", "error"]
MESSAGE_MAX = 300
MASTER = "master"
# a failed `finished` event; the data is compact JSON (gateway/flow/jobs.py)
FAILED_FINISH = '%"status":"failed"%'


@dataclass(frozen=True)
class Cursor:
    """The last (or first) usage id and post event id a page covered."""

    usage: int
    events: int

    @classmethod
    def parse(cls, value: str, param: str) -> Cursor:
        usage, sep, events = value.partition("-")
        if not (sep and usage.isdigit() and events.isdigit()):
            raise InvalidRequest(
                f"'{param}' must be a cursor from an earlier answer, like '120-3401'",
                param=param,
            )
        return cls(int(usage), int(events))

    def __str__(self) -> str:
        return f"{self.usage}-{self.events}"


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat()


def request_level(status: int) -> str:
    return "error" if status >= 500 else "warning" if status >= 400 else "info"


def event_level(kind: str, data: dict) -> str:
    failed = kind == "page_failed" or (kind == "finished" and data.get("status") == "failed")
    return "error" if failed else "info"


def _page_name(page: int | None) -> str:
    return "the cover" if page == 0 else f"page {page + 1}" if page is not None else "a page"


def event_message(kind: str, page: int | None, data: dict) -> str:
    """A line for the log; page numbers from 1 (the `page` field is the 0-based index)."""
    if kind == "outline":
        text = f"outline: {len(data.get('pages') or ())} pages"
    elif kind == "page_started":
        text = f"drawing {_page_name(page)}"
    elif kind == "page_done":
        text = f"{_page_name(page)} drawn ({data.get('image_id')})"
    elif kind == "page_failed":
        text = f"{_page_name(page)} failed: {data.get('reason') or 'unknown reason'}"
    elif kind == "copy":
        titles = data.get("titles") or []
        text = f"copy written: {titles[0]}" if titles else "copy written"
    elif kind == "finished":
        error = data.get("error")
        if error:
            text = f"failed: {error.get('code')}: {error.get('message')}"
        else:
            text = f"finished: {data.get('status')}"
            failed = data.get("failed") or []
            if failed:
                text += " (failed: " + ", ".join(_page_name(i) for i in failed) + ")"
    else:
        text = kind
    return text[:MESSAGE_MAX]


def _request_item(row: Any) -> dict:
    return {
        "id": f"r:{row.id}",
        "source": "request",
        "time": _iso(row.created_at),
        "ts": row.created_at,
        "level": request_level(row.status),
        "key_id": row.key_id,
        "key_name": row.key_name,
        "model": row.model,
        "post_id": row.post_id,
        "message": row.message,
        "method": row.method,
        "endpoint": row.endpoint,
        "status": row.status,
        "latency_ms": row.latency_ms,
        "kind": None,
        "page": None,
        "topic": None,
    }


def _event_item(row: Any) -> dict:
    try:
        data = json.loads(row.data)
    except ValueError:
        data = {}
    return {
        "id": f"j:{row.id}",
        "source": "job",
        "time": _iso(row.created_at),
        "ts": row.created_at,
        "level": event_level(row.kind, data),
        "key_id": row.owner_key_id,
        "key_name": row.key_name if row.owner_key_id else MASTER,
        "model": row.model,
        "post_id": row.post_id,
        "message": event_message(row.kind, row.page, data),
        "method": None,
        "endpoint": None,
        "status": None,
        "latency_ms": None,
        "kind": row.kind,
        "page": row.page,
        "topic": row.topic[:MESSAGE_MAX] if row.topic else None,
    }


@dataclass(frozen=True)
class Filters:
    level: str | None
    pattern: str | None  # a LIKE pattern
    key_id: str | None
    model: str | None
    start: float | None
    latest: Cursor
    after: Cursor | None
    before: Cursor | None
    limit: int

    def ids(self, column, which: str) -> list:
        out = [column <= getattr(self.latest, which)]
        if self.after is not None:
            out.append(column > getattr(self.after, which))
        if self.before is not None:
            out.append(column < getattr(self.before, which))
        return out

    def order(self, column):
        return column.asc() if self.after is not None else column.desc()

    def text(self, *columns) -> list:
        if self.pattern is None:
            return []
        return [or_(*(c.ilike(self.pattern, escape="\\") for c in columns))]


def _requests_query(f: Filters):
    u = UsageRow.__table__
    where = f.ids(u.c.id, "usage") + f.text(
        u.c.key_name, u.c.model, u.c.endpoint, u.c.message, u.c.post_id
    )
    if f.level in ("warning", "error"):
        where.append(u.c.status >= (400 if f.level == "warning" else 500))
    if f.key_id == MASTER:
        where.append(u.c.key_id.is_(None))
    elif f.key_id is not None:
        where.append(u.c.key_id == f.key_id)
    if f.model is not None:
        where.append(u.c.model == f.model)
    if f.start is not None:
        where.append(u.c.created_at >= f.start)
    return select(u).where(*where).order_by(f.order(u.c.id)).limit(f.limit + 1)


def _events_query(f: Filters):
    e, p, k = PostEvent.__table__, Post.__table__, ApiKey.__table__
    where = f.ids(e.c.id, "events") + f.text(e.c.post_id, e.c.kind, e.c.data, p.c.topic)
    if f.level in ("warning", "error"):  # job events have no warnings
        where.append(
            or_(
                e.c.kind == "page_failed",
                and_(e.c.kind == "finished", e.c.data.like(FAILED_FINISH)),
            )
        )
    if f.key_id == MASTER:
        where += [p.c.id.is_not(None), p.c.owner_key_id.is_(None)]
    elif f.key_id is not None:
        where.append(p.c.owner_key_id == f.key_id)
    if f.model is not None:
        where.append(p.c.model == f.model)
    if f.start is not None:
        where.append(e.c.created_at >= f.start)
    columns = (e.c.id, e.c.post_id, e.c.kind, e.c.page, e.c.data, e.c.created_at)
    return (
        select(*columns, p.c.topic, p.c.model, p.c.owner_key_id, k.c.name.label("key_name"))
        .select_from(e.outerjoin(p, p.c.id == e.c.post_id).outerjoin(k, k.c.id == p.c.owner_key_id))
        .where(*where)
        .order_by(f.order(e.c.id))
        .limit(f.limit + 1)
    )


@router.get("/logs")
async def list_logs(
    request: Request,
    _: Admin,
    level: Annotated[Level | None, Query(description="this level and above")] = None,
    q: Annotated[str | None, Query(max_length=200)] = None,
    key_id: Annotated[
        str | None, Query(max_length=32, description="'master': the master key")
    ] = None,
    model: Annotated[str | None, Query(max_length=200)] = None,
    source: Literal["request", "job"] | None = None,
    since: Annotated[str | None, Query(description="unix seconds or ISO 8601")] = None,
    after_id: Annotated[str | None, Query(max_length=50, description="a `latest`")] = None,
    before_id: Annotated[str | None, Query(max_length=50, description="a `next_before`")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> dict:
    """Requests and job events, newest first; filter by level (and above), text, key,
    model, source and time; poll with `after_id`, page back with `before_id`."""
    if after_id is not None and before_id is not None:
        raise InvalidRequest("Send either 'after_id' or 'before_id', not both", param="after_id")
    return await read_logs(
        state_of(request),
        level=level,
        q=q,
        key_id=key_id,
        model=model,
        source=source,
        start=_since(since),
        after=Cursor.parse(after_id, "after_id") if after_id is not None else None,
        before=Cursor.parse(before_id, "before_id") if before_id is not None else None,
        limit=limit,
    )


async def read_logs(
    state: AppState,
    *,
    level: str | None = None,
    q: str | None = None,
    key_id: str | None = None,
    model: str | None = None,
    source: str | None = None,
    start: float | None = None,
    after: Cursor | None = None,
    before: Cursor | None = None,
    limit: int = 100,
) -> dict:
    """The answer of `GET /admin/api/logs` for filters already checked (the Logs page
    renders its first rows with it)."""
    u, e = UsageRow.__table__, PostEvent.__table__
    async with state.db.engine.connect() as conn:
        # the newest ids first: rows written while this page is read belong to the next poll
        latest = Cursor(
            int((await conn.execute(select(func.max(u.c.id)))).scalar() or 0),
            int((await conn.execute(select(func.max(e.c.id)))).scalar() or 0),
        )
        f = Filters(
            level=level,
            pattern=contains_pattern(q) if q else None,
            key_id=key_id,
            model=model,
            start=start,
            latest=latest,
            after=after,
            before=before,
            limit=limit,
        )
        requests = (
            (await conn.execute(_requests_query(f))).all() if source in (None, "request") else []
        )
        events = (await conn.execute(_events_query(f))).all() if source in (None, "job") else []
    # each list is in id order; a merge by time takes a prefix of both, so the cursors
    # below cover exactly the rows shown
    merged = list(
        heapq.merge(
            [_request_item(r) for r in requests],
            [_event_item(r) for r in events],
            key=lambda item: item["ts"],
            reverse=after is None,
        )
    )
    page, has_more = merged[:limit], len(merged) > limit
    shown_requests = [int(i["id"][2:]) for i in page if i["source"] == "request"]
    shown_events = [int(i["id"][2:]) for i in page if i["source"] == "job"]
    next_before = None
    if after is not None:
        if has_more:  # caught up only to the rows shown: the next poll goes on from there
            latest = Cursor(
                max(shown_requests, default=after.usage), max(shown_events, default=after.events)
            )
    elif has_more:
        top = before or Cursor(latest.usage + 1, latest.events + 1)
        next_before = str(
            Cursor(min(shown_requests, default=top.usage), min(shown_events, default=top.events))
        )
    page.sort(key=lambda item: item["ts"], reverse=True)
    return {
        "object": "list",
        "data": page,
        "latest": str(latest),
        "next_before": next_before,
        "has_more": has_more,
    }
