"""`GET /admin/api/usage/summary`: the numbers at the top of the dashboard's Usage page."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request

from admin.api import Admin
from admin.usage_stats import resolve_since, usage_summary
from gateway.routes.common import state_of

router = APIRouter(prefix="/admin/api", tags=["admin"])


@router.get("/usage/summary")
async def summarize_usage(
    request: Request,
    _: Admin,
    key_id: Annotated[
        str | None, Query(max_length=32, description="'master': the master key")
    ] = None,
    model: Annotated[str | None, Query(max_length=200)] = None,
    status: Literal["2xx", "3xx", "4xx", "5xx"] | None = None,
    since: Annotated[
        str | None,
        Query(description="1h, today (UTC), 7d, 30d, all; or unix seconds or ISO 8601"),
    ] = None,
) -> dict:
    """Requests, failures (5xx), client errors (4xx), images, pages, latency median and
    p95 (nearest rank, over the newest 100,000 rows), and the top 50 keys and models."""
    return await usage_summary(
        state_of(request), key_id=key_id, model=model, status=status, start=resolve_since(since)
    )
