"""The Logs page: requests and post job events from the database, newest first, with
filters (a GET form, so an address can be shared) and auto-refresh.

The first rows are rendered here by `admin.logs_api.read_logs`, the query behind
`GET /admin/api/logs`; `logs.js` then polls that route with `after_id=<latest>` and
pages back with `before_id=<next_before>`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse

from admin.auth import SignedIn
from admin.i18n import add, language, translator
from admin.logs_api import MASTER, read_logs
from admin.views import page_session, render
from admin.views.images import _script_json
from gateway.routes.common import AppState, state_of

router = APIRouter(include_in_schema=False)
NAV = ("logs", "/admin/logs")

LEVELS = ("info", "warning", "error")
SOURCES = ("request", "job")
PAGE_ROWS = 100
# what logs.js says, in the page's language
JS_STRINGS = (
    "logs.level.info", "logs.level.warning", "logs.level.error", "logs.source.request",
    "logs.source.job", "logs.cover", "logs.page", "logs.checked", "logs.paused",
    "logs.hidden",
)  # fmt: skip


def utc_clock(iso: str | None) -> str:
    """`2026-11-21 14:03:05 UTC`: the text a page shows until its JS shows local time."""
    if not iso:
        return ""
    value = datetime.fromisoformat(iso)
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


async def key_choices(state: AppState) -> list[tuple[str, str, bool]]:
    """(value, name, revoked) for a key filter: the master key, then every key by name."""
    rows = sorted(await state.keys.list(), key=lambda k: (k.revoked_at is not None, k.name))
    return [(MASTER, MASTER, False)] + [(k.id, k.name, k.revoked_at is not None) for k in rows]


def model_choices(state: AppState, chosen: str | None) -> list[str]:
    models = list(state.config().model_ids())
    if chosen and chosen not in models:
        models.append(chosen)  # a model since removed from the config still filters
    return models


@router.get("/admin/logs", response_class=HTMLResponse)
async def logs_page(
    request: Request,
    signed_in: Annotated[SignedIn, Depends(page_session)],
    level: str = "",
    source: str = "",
    key_id: str = "",
    model: str = "",
    q: str = "",
) -> HTMLResponse:
    # a page, not an API: an odd value in the address means "all"
    state = state_of(request)
    filters = {
        "level": level if level in LEVELS else None,
        "source": source if source in SOURCES else None,
        "key_id": key_id[:32] or None,
        "model": model[:200] or None,
        "q": q.strip()[:200] or None,
    }
    answer = await read_logs(state, **filters, limit=PAGE_ROWS)
    rows = [{**item, "time_text": utc_clock(item["time"])} for item in answer["data"]]
    t = translator(language(request))
    return render(
        request,
        "logs.html",
        signed_in=signed_in,
        active="logs",
        rows=rows,
        filters=filters,
        filtered=any(filters.values()),
        levels=LEVELS,
        sources=SOURCES,
        keys=await key_choices(state),
        models=model_choices(state, filters["model"]),
        next_before=answer["next_before"],
        page_data=_script_json(
            {
                "filters": {k: v for k, v in filters.items() if v is not None},
                "latest": answer["latest"],
                "next_before": answer["next_before"],
                "limit": PAGE_ROWS,
                "strings": {key: t(key) for key in JS_STRINGS},
            }
        ),
    )


add(
    {
        "en": {
            "logs.title": "Logs",
            "logs.level": "Level",
            "logs.min_level": "Level (and above)",
            "logs.level.info": "info",
            "logs.level.warning": "warning",
            "logs.level.error": "error",
            "logs.source": "Source",
            "logs.source.request": "request",
            "logs.source.job": "job",
            "logs.key": "Key",
            "logs.master": "master key",
            "logs.revoked": "revoked",
            "logs.search": "Search",
            "logs.search_hint": "Text in the message, endpoint, key, model, post or topic",
            "logs.apply": "Apply",
            "logs.reset": "Clear filters",
            "logs.auto_refresh": "Auto-refresh",
            "logs.checked": "Checked at {time}",
            "logs.paused": "Paused",
            "logs.hidden": "Paused while the tab is hidden",
            "logs.where": "Endpoint / post",
            "logs.latency": "Latency (ms)",
            "logs.message": "Message",
            "logs.cover": "cover",
            "logs.page": "page {n}",
            "logs.older": "Older entries",
            "logs.empty": "No requests or job events yet. They appear here as clients call /v1.",
            "logs.empty_filter": "Nothing matches these filters.",
        },
        "zh": {
            "logs.title": "日志",
            "logs.level": "级别",
            "logs.min_level": "级别（及以上）",
            "logs.level.info": "信息",
            "logs.level.warning": "警告",
            "logs.level.error": "错误",
            "logs.source": "来源",
            "logs.source.request": "请求",
            "logs.source.job": "任务",
            "logs.key": "密钥",
            "logs.master": "主密钥",
            "logs.revoked": "已吊销",
            "logs.search": "搜索",
            "logs.search_hint": "在消息、接口、密钥、模型、图文或主题中查找",
            "logs.apply": "应用",
            "logs.reset": "清除筛选",
            "logs.auto_refresh": "自动刷新",
            "logs.checked": "更新于 {time}",
            "logs.paused": "已暂停",
            "logs.hidden": "页面在后台，已暂停",
            "logs.where": "接口 / 图文",
            "logs.latency": "耗时（毫秒）",
            "logs.message": "消息",
            "logs.cover": "封面",
            "logs.page": "第 {n} 页",
            "logs.older": "更早的记录",
            "logs.empty": "还没有请求或任务事件。客户端调用 /v1 后会显示在这里。",
            "logs.empty_filter": "没有符合筛选条件的记录。",
        },
    }
)
