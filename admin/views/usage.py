"""The Usage page: a row per `/v1` request, with the totals, latency and per-key and
per-model breakdowns of the filtered range on top.

The numbers come from `admin.usage_stats.usage_summary` (also `GET
/admin/api/usage/summary`) and the rows from `admin.keys.read_usage` (`GET
/admin/api/usage`), with the same filters.
"""

from __future__ import annotations

from typing import Annotated
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse

from admin.auth import SignedIn
from admin.i18n import add
from admin.keys import read_usage, usage_filters
from admin.usage_stats import DEFAULT_RANGE, RANGES, range_start, usage_summary
from admin.views import page_session, render
from admin.views.logs import key_choices, model_choices, utc_clock
from gateway.routes.common import state_of

router = APIRouter(include_in_schema=False)
NAV = ("usage", "/admin/usage")

STATUSES = ("2xx", "4xx", "5xx")
PER_PAGE = 50


def _page_number(value: str) -> int:
    try:
        return min(max(int(value), 1), 1_000_000)
    except ValueError:
        return 1


def _status_class(status: int) -> str:
    return "bad" if status >= 500 else "warn" if status >= 400 else "ok"


@router.get("/admin/usage", response_class=HTMLResponse)
async def usage_page(
    request: Request,
    signed_in: Annotated[SignedIn, Depends(page_session)],
    key_id: str = "",
    model: str = "",
    status: str = "",
    since: str = DEFAULT_RANGE,
    page: str = "1",
) -> HTMLResponse:
    # a page, not an API: an odd value in the address falls back to the default
    state = state_of(request)
    filters = {
        "key_id": key_id[:32] or None,
        "model": model[:200] or None,
        "status": status if status in STATUSES else None,
    }
    since = since if since in RANGES else DEFAULT_RANGE
    start = range_start(since)  # once, so the numbers and the rows cover the same range
    summary = await usage_summary(state, **filters, start=start)
    where = usage_filters(**filters, start=start)
    page_n = _page_number(page)
    answer = await read_usage(state, where, page=page_n, per_page=PER_PAGE)
    pages = max(1, -(-answer["total"] // PER_PAGE))
    if page_n > pages:
        page_n = pages
        answer = await read_usage(state, where, page=page_n, per_page=PER_PAGE)
    rows = [
        {
            **row,
            "time_text": utc_clock(row["created_at"]),
            "status_class": _status_class(row["status"]),
        }
        for row in answer["data"]
    ]
    chosen = {k: v for k, v in filters.items() if v is not None} | {"since": since}

    def url(**changes) -> str:
        query = {k: v for k, v in (chosen | changes).items() if v is not None}
        return "/admin/usage?" + urlencode(query)

    return render(
        request,
        "usage.html",
        signed_in=signed_in,
        active="usage",
        filters=filters,
        since=since,
        ranges=RANGES,
        statuses=STATUSES,
        keys=await key_choices(state),
        models=model_choices(state, filters["model"]),
        summary=summary,
        rows=rows,
        total=answer["total"],
        page=page_n,
        pages=pages,
        url=url,
        previous_url=url(page=page_n - 1) if page_n > 1 else None,
        next_url=url(page=page_n + 1) if page_n < pages else None,
        filtered=any(filters.values()),
    )


add(
    {
        "en": {
            "usage.title": "Usage",
            "usage.key": "Key",
            "usage.master": "master key",
            "usage.revoked": "revoked",
            "usage.status": "Status",
            "usage.since": "Range",
            "usage.range.1h": "Last hour",
            "usage.range.today": "Today (UTC)",
            "usage.range.7d": "Last 7 days",
            "usage.range.30d": "Last 30 days",
            "usage.range.all": "All kept rows",
            "usage.apply": "Apply",
            "usage.reset": "Clear filters",
            "usage.requests": "Requests",
            "usage.failures": "Failures (5xx)",
            "usage.client_errors": "Client errors (4xx)",
            "usage.images": "Images",
            "usage.pages": "Pages",
            "usage.median": "Median latency",
            "usage.p95": "p95 latency",
            "usage.latency_rows": "Latency over the newest {rows} requests of the range.",
            "usage.by_key": "By key",
            "usage.by_model": "By model",
            "usage.errors": "Errors (4xx + 5xx)",
            "usage.no_model": "no model",
            "usage.rows": "Requests",
            "usage.count": "{count} requests",
            "usage.request": "Request",
            "usage.latency": "Latency (ms)",
            "usage.post": "Post",
            "usage.empty": "No requests in this range yet. Each /v1 call adds a row here.",
            "usage.empty_filter": "No requests match these filters.",
            "usage.logs_hint": "Why a request failed: see the Logs page.",
        },
        "zh": {
            "usage.title": "用量",
            "usage.key": "密钥",
            "usage.master": "主密钥",
            "usage.revoked": "已吊销",
            "usage.status": "状态码",
            "usage.since": "时间范围",
            "usage.range.1h": "最近 1 小时",
            "usage.range.today": "今日（UTC）",
            "usage.range.7d": "最近 7 天",
            "usage.range.30d": "最近 30 天",
            "usage.range.all": "全部保留的记录",
            "usage.apply": "应用",
            "usage.reset": "清除筛选",
            "usage.requests": "请求数",
            "usage.failures": "失败（5xx）",
            "usage.client_errors": "客户端错误（4xx）",
            "usage.images": "图片数",
            "usage.pages": "页数",
            "usage.median": "耗时中位数",
            "usage.p95": "p95 耗时",
            "usage.latency_rows": "耗时按该范围内最新的 {rows} 次请求计算。",
            "usage.by_key": "按密钥",
            "usage.by_model": "按模型",
            "usage.errors": "错误（4xx + 5xx）",
            "usage.no_model": "无模型",
            "usage.rows": "请求记录",
            "usage.count": "共 {count} 次请求",
            "usage.request": "请求",
            "usage.latency": "耗时（毫秒）",
            "usage.post": "图文",
            "usage.empty": "该时间范围内还没有请求。每次调用 /v1 都会在这里新增一行。",
            "usage.empty_filter": "没有符合筛选条件的请求。",
            "usage.logs_hint": "请求失败的原因请查看“日志”页面。",
        },
    }
)
