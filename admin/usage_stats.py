"""Usage over a range of time: totals, latency percentiles and per-key and per-model
breakdowns, for the Usage page and `GET /admin/api/usage/summary`.

Totals and breakdowns are one aggregate query each over the filtered `usage` rows. The
latency median and p95 are nearest-rank values over the newest `LATENCY_ROWS` rows of
the range, each a single-row query (`ORDER BY latency_ms OFFSET k LIMIT 1`): a long
range costs a bounded sort, never a transfer of every latency to Python.
"""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select

from admin.keys import _since, usage_filters
from gateway.errors import InvalidRequest
from gateway.limits import utc_midnight
from gateway.routes.common import AppState
from storage.tables import ApiKey, UsageRow

# the Usage page's ranges; `since` takes these names too
RANGES = ("1h", "today", "7d", "30d", "all")
DEFAULT_RANGE = "7d"
LATENCY_ROWS = 100_000
BREAKDOWN_ROWS = 50
MASTER = "master"


def range_start(name: str, now: float | None = None) -> float | None:
    """Unix seconds where a named range starts (None: all time); `today` is from 00:00
    UTC, as on the overview."""
    now = time.time() if now is None else now
    if name == "1h":
        return now - 3600
    if name == "today":
        return utc_midnight(now).timestamp()
    if name in ("7d", "30d"):
        return (datetime.fromtimestamp(now, UTC) - timedelta(days=int(name[:-1]))).timestamp()
    if name == "all":
        return None
    raise ValueError(name)


def resolve_since(value: str | None, now: float | None = None) -> float | None:
    """`since` as the API takes it: a range name, unix seconds or ISO 8601."""
    if value is None or value == "":
        return None
    if value in RANGES:
        return range_start(value, now)
    try:
        return _since(value)
    except InvalidRequest:
        raise InvalidRequest(
            "'since' must be one of " + ", ".join(RANGES) + ", unix seconds or ISO 8601",
            param="since",
        ) from None


def _nearest_rank(percent: float, count: int) -> int:
    """The 0-based offset of the nearest-rank percentile among `count` sorted values."""
    return max(math.ceil(percent / 100 * count) - 1, 0)


async def usage_summary(
    state: AppState,
    *,
    key_id: str | None = None,
    model: str | None = None,
    status: str | None = None,
    start: float | None = None,
) -> dict:
    """Requests, failures (5xx), client errors (4xx), images and pages of the matching
    rows; latency median and p95 (ms); the top keys and models by requests."""
    where = usage_filters(key_id=key_id, model=model, status=status, start=start)
    u, k = UsageRow.__table__, ApiKey.__table__
    requests = func.count().label("requests")
    images = func.coalesce(func.sum(u.c.images), 0).label("images")
    errors = func.count().filter(u.c.status >= 400).label("errors")
    async with state.db.engine.connect() as conn:
        total, failures, client_errors, images_total, pages_total = (
            await conn.execute(
                select(
                    func.count(),
                    func.count().filter(u.c.status >= 500),
                    func.count().filter(u.c.status >= 400, u.c.status < 500),
                    func.coalesce(func.sum(u.c.images), 0),
                    func.coalesce(func.sum(u.c.pages), 0),
                ).where(*where)
            )
        ).one()
        sampled = min(int(total), LATENCY_ROWS)
        newest = (
            select(u.c.latency_ms)
            .where(*where)
            .order_by(u.c.id.desc())
            .limit(LATENCY_ROWS)
            .subquery()
        )
        latency: dict[str, float | None] = {"median": None, "p95": None}
        for name, percent in (("median", 50), ("p95", 95)):
            if sampled:
                query = (
                    select(newest.c.latency_ms)
                    .order_by(newest.c.latency_ms)
                    .offset(_nearest_rank(percent, sampled))
                    .limit(1)
                )
                latency[name] = float((await conn.execute(query)).scalar_one())
        by_key = (
            await conn.execute(
                select(
                    u.c.key_id,
                    func.max(k.c.name).label("name"),
                    func.max(u.c.key_name).label("recorded_name"),
                    requests,
                    images,
                    errors,
                )
                .select_from(u.outerjoin(k, k.c.id == u.c.key_id))
                .where(*where)
                .group_by(u.c.key_id)
                .order_by(requests.desc(), u.c.key_id)
                .limit(BREAKDOWN_ROWS)
            )
        ).all()
        by_model = (
            await conn.execute(
                select(u.c.model, requests, images, errors)
                .where(*where)
                .group_by(u.c.model)
                .order_by(requests.desc(), u.c.model)
                .limit(BREAKDOWN_ROWS)
            )
        ).all()
    return {
        "object": "usage.summary",
        "since": datetime.fromtimestamp(start, UTC).isoformat() if start is not None else None,
        "requests": int(total),
        "failures": int(failures),
        "client_errors": int(client_errors),
        "images": int(images_total),
        "pages": int(pages_total),
        "latency_ms": {**latency, "rows": sampled},
        "by_key": [
            {
                "key_id": row.key_id,
                # the key's name now; a deleted key's, as recorded
                "key_name": (row.name or row.recorded_name) if row.key_id else MASTER,
                "requests": int(row.requests),
                "images": int(row.images),
                "errors": int(row.errors),
            }
            for row in by_key
        ],
        "by_model": [
            {
                "model": row.model,
                "requests": int(row.requests),
                "images": int(row.images),
                "errors": int(row.errors),
            }
            for row in by_model
        ],
    }
