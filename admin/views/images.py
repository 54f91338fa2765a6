"""The images & cache page: storage numbers, the cache settings and actions, and a
thumbnail grid (sort, filter, pages, multi-select, bulk delete, preview).

The grid's first page is rendered here from the same queries as `GET /admin/api/images`;
every change goes through `/admin/api` (admin/api.py, admin/cache_api.py).
"""

from __future__ import annotations

import json
from typing import Annotated
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse

from admin.api import _image_public
from admin.auth import SignedIn
from admin.cache_api import cache_settings
from admin.i18n import add, language, translator
from admin.views import page_session, render, templates
from gateway.routes.common import state_of
from gateway.urls import base_url
from storage.lifecycle import SORTS, STATES

router = APIRouter(include_in_schema=False)
NAV = ("images", "/admin/images")

PER_PAGE = (24, 48, 96)
DEFAULT_PER_PAGE = 48
# the lifecycle's reasons for skipping an image (storage/lifecycle.py), translated
SKIP_REASONS = {
    "no stored bytes": "images.reason.no_bytes",
    "not in the bucket: the local copy is the only one": "images.reason.only_local",
    "no local copy": "images.reason.no_local",
    "not in the bucket": "images.reason.not_in_bucket",
    "no local copy: the bucket's copy is the only one": "images.reason.only_remote",
}
# what images.js says, in the page's language
JS_STRINGS = (
    "images.selected", "images.confirm_local", "images.confirm_remote", "images.confirm_all",
    "images.deleted", "images.skipped", "images.not_found", "images.settings_saved",
    "images.cleaned", "images.queued", "images.purged", "images.in_effect", "images.without",
    "images.source.dashboard", "images.source.environment", "images.source.config file",
    "images.source.default", "images.state.local", "images.state.pending",
    "images.state.uploading", "images.state.uploaded", "images.state.failed",
    "images.state.removed", "images.state.missing", "common.yes", "common.no",
)  # fmt: skip


def _int(value: str, default: int, low: int, high: int) -> int:
    try:
        return min(max(int(value), low), high)
    except ValueError:
        return default


def _script_json(value) -> str:
    """JSON for a `<script type="application/json">` block: no `</script>` can end it."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _number(value: float) -> str:
    """72.0 → "72", 0.5 → "0.5", 1e8 → "100000000"."""
    return format(value, ".15g") if isinstance(value, int | float) else str(value)


def _chips(image: dict) -> list[tuple[str, str]]:
    """(i18n key, chip class) of an image's storage state."""
    chips = []
    if image["local"]:
        chips.append(("images.state.local", ""))
    remote = image["remote_state"]
    kind = {"uploaded": "ok", "pending": "warn", "uploading": "warn", "failed": "bad"}
    if remote == "missing":
        chips.append(("images.state.missing", "bad"))
    elif remote != "none":
        chips.append((f"images.state.{remote}", kind.get(remote, "")))
    return chips


@router.get("/admin/images", response_class=HTMLResponse)
async def images_page(
    request: Request,
    signed_in: Annotated[SignedIn, Depends(page_session)],
    page: str = "1",
    per_page: str = str(DEFAULT_PER_PAGE),
    sort: str = "created",
    order: str = "desc",
    state: str = "",
) -> HTMLResponse:
    # a page, not an API: an odd value in the address falls back to the default
    services = state_of(request)
    lifecycle = services.storage.lifecycle
    per_page_n = _int(per_page, DEFAULT_PER_PAGE, 1, 200)
    page_n = _int(page, 1, 1, 1_000_000)
    sort = sort if sort in SORTS else "created"
    order = order if order in ("asc", "desc") else "desc"
    state = state if state in STATES else ""

    async def load(n: int):
        return await lifecycle.list_images(
            page=n, per_page=per_page_n, sort=sort, order=order, state=state or None
        )

    rows, total = await load(page_n)
    pages = max(1, -(-total // per_page_n))
    if page_n > pages:
        page_n = pages
        rows, total = await load(page_n)
    base = base_url(services.settings, request)
    when, size = templates.filters["when"], templates.filters["bytes"]
    images = []
    for image, blob in rows:
        item = _image_public(base, services, image, blob)
        item["created_text"] = when(item["created_at"])
        item["accessed_text"] = when(item["accessed_at"])
        item["size_text"] = size(item["size_bytes"])
        item["chips"] = _chips(item)
        images.append(item)

    def page_url(n: int) -> str:
        query = {"page": n, "per_page": per_page_n, "sort": sort, "order": order}
        if state:
            query["state"] = state
        return "/admin/images?" + urlencode(query)

    settings = await cache_settings(services)
    t = translator(language(request))
    return render(
        request,
        "images.html",
        signed_in=signed_in,
        active="images",
        stats=await lifecycle.stats(),
        cache=settings,
        number=_number,
        images=images,
        total=total,
        page=page_n,
        pages=pages,
        per_page=per_page_n,
        per_page_choices=sorted({*PER_PAGE, per_page_n}),
        sort=sort,
        order=order,
        state=state,
        sorts=list(SORTS),
        states=STATES,
        previous_url=page_url(page_n - 1) if page_n > 1 else None,
        next_url=page_url(page_n + 1) if page_n < pages else None,
        page_data=_script_json(
            {
                "images": {i["id"]: {k: v for k, v in i.items() if k != "chips"} for i in images},
                "reasons": {reason: t(key) for reason, key in SKIP_REASONS.items()},
                "strings": {key: t(key) for key in JS_STRINGS},
            }
        ),
    )


add(
    {
        "en": {
            "images.title": "Images & cache",
            "images.storage": "Storage",
            "images.local": "On local disk",
            "images.remote": "In the bucket",
            "images.pending": "Uploads pending",
            "images.failed": "Uploads failed",
            "images.count": "images: {count}",
            "images.files": "files: {count}",
            "images.backend": "Storage: {name}",
            "images.settings": "Cache settings",
            "images.settings_hint": "Values saved here win over the environment and inkgate.yaml, on every replica, from the next sweep on. Leave a field blank to use the value shown under it. 0 turns a limit off.",
            "images.ttl": "Local copy TTL (hours)",
            "images.ttl_hint": "Local copies not read for this long are deleted once they are in the bucket.",
            "images.max_mb": "Local cache size cap (MB)",
            "images.max_mb_hint": "Past it, the least recently read uploaded copies go first.",
            "images.retention": "Retention (days)",
            "images.retention_hint": "Images not read for this long are deleted.",
            "images.retention_remote": "Retention deletes the bucket copy too",
            "images.inherit": "Not set here",
            "images.in_effect": "In effect: {value}",
            "images.without": "Without a value here: {value} ({source})",
            "images.source.dashboard": "dashboard",
            "images.source.environment": "environment",
            "images.source.config file": "config file",
            "images.source.default": "default",
            "images.settings_saved": "Cache settings saved.",
            "images.actions": "Cache actions",
            "images.cleanup": "Clean up now",
            "images.upload_pending": "Upload pending",
            "images.retry_failed": "Retry failed uploads",
            "images.purge_results": "Purge result cache",
            "images.confirm_purge": "Forget every remembered answer? Identical requests will call the upstream again.",
            "images.no_bucket": "No bucket is configured (INKGATE_STORAGE=local): every image lives on local disk, so there is nothing to upload, and the local copy is never deleted by the TTL or the size cap.",
            "images.sweep_every": "The sweep runs every {seconds} s.",
            "images.sweep_off": "The sweep runs only on demand (INKGATE_CACHE_SWEEP_SECONDS=0).",
            "images.result_cache": "Result cache",
            "images.result_cache_hint": "Set per image model (result_cache_seconds, on the Providers & models page or in inkgate.yaml).",
            "images.result_cache_off": "off",
            "images.result_cache_model": "{model}: {seconds} s, {entries} remembered",
            "images.result_cache_none": "No image models are configured.",
            "images.cleaned": "Cleaned up: {ttl} local copies past the TTL, {cap} over the size cap, {retention} images past retention, {blobs} unused contents, {orphans} orphan files, {lost} lost images; {freed} freed.",
            "images.queued": "{count} uploads queued.",
            "images.purged": "{count} remembered answers forgotten.",
            "images.grid": "Images",
            "images.sort": "Sort by",
            "images.sort.created": "Created",
            "images.sort.accessed": "Last read",
            "images.sort.size": "Size",
            "images.order.desc": "Newest / largest first",
            "images.order.asc": "Oldest / smallest first",
            "images.filter_state": "State",
            "images.per_page": "Per page",
            "images.apply": "Apply",
            "images.select_all": "Select all on this page",
            "images.selected": "{count} selected",
            "images.select": "Select {id}",
            "images.delete_local": "Delete local copy",
            "images.delete_remote": "Delete bucket copy",
            "images.delete_all": "Delete everywhere",
            "images.confirm_local": "Delete the local copies of {count} images? Copies that are not in the bucket are kept.",
            "images.confirm_remote": "Delete the bucket copies of {count} images? Images with no local copy are kept.",
            "images.confirm_all": "Delete {count} images everywhere? This cannot be undone.",
            "images.deleted": "{count} done.",
            "images.skipped": "{count} skipped:",
            "images.not_found": "{count} no longer exist.",
            "images.empty": "No images stored yet. Images appear here once a post or an image request has made some.",
            "images.empty_filter": "No images match this filter.",
            "images.preview": "Image",
            "images.size": "Size",
            "images.dimensions": "Dimensions",
            "images.type": "Type",
            "images.accessed": "Last read",
            "images.state": "State",
            "images.post": "Post",
            "images.open": "Open the full image",
            "images.last_error": "Last upload error",
            "images.state.local": "local copy",
            "images.state.remote": "in the bucket",
            "images.state.pending": "upload pending",
            "images.state.uploading": "uploading",
            "images.state.uploaded": "uploaded",
            "images.state.failed": "upload failed",
            "images.state.none": "local only",
            "images.state.removed": "bucket copy deleted",
            "images.state.missing": "bytes missing",
            "images.reason.no_bytes": "no stored bytes",
            "images.reason.only_local": "not in the bucket: the local copy is the only one",
            "images.reason.no_local": "no local copy",
            "images.reason.not_in_bucket": "not in the bucket",
            "images.reason.only_remote": "no local copy: the bucket's copy is the only one",
        },
        "zh": {
            "images.title": "图片与缓存",
            "images.storage": "存储",
            "images.local": "本地磁盘",
            "images.remote": "存储桶",
            "images.pending": "待上传",
            "images.failed": "上传失败",
            "images.count": "共 {count} 张图片",
            "images.files": "{count} 个文件",
            "images.backend": "存储方式：{name}",
            "images.settings": "缓存设置",
            "images.settings_hint": "在这里保存的值优先于环境变量和 inkgate.yaml，对所有副本生效，从下一次清理开始。留空则使用下方显示的值。填 0 表示不限制。",
            "images.ttl": "本地副本保留时长（小时）",
            "images.ttl_hint": "已上传到存储桶、且这么久没被读取的本地副本会被删除。",
            "images.max_mb": "本地缓存容量上限（MB）",
            "images.max_mb_hint": "超出后，最久未读取的已上传副本先被删除。",
            "images.retention": "图片保留天数",
            "images.retention_hint": "这么久没被读取的图片会被删除。",
            "images.retention_remote": "到期删除时也删除存储桶中的副本",
            "images.inherit": "未在此设置",
            "images.in_effect": "当前生效：{value}",
            "images.without": "不在此设置时：{value}（{source}）",
            "images.source.dashboard": "控制台",
            "images.source.environment": "环境变量",
            "images.source.config file": "配置文件",
            "images.source.default": "默认值",
            "images.settings_saved": "缓存设置已保存。",
            "images.actions": "缓存操作",
            "images.cleanup": "立即清理",
            "images.upload_pending": "上传待传图片",
            "images.retry_failed": "重试失败的上传",
            "images.purge_results": "清空结果缓存",
            "images.confirm_purge": "确定清空所有缓存的结果？之后相同的请求会重新调用上游。",
            "images.no_bucket": "未配置存储桶（INKGATE_STORAGE=local）：所有图片都保存在本地磁盘，无需上传，保留时长和容量上限也不会删除本地副本。",
            "images.sweep_every": "每 {seconds} 秒自动清理一次。",
            "images.sweep_off": "只在手动触发时清理（INKGATE_CACHE_SWEEP_SECONDS=0）。",
            "images.result_cache": "结果缓存",
            "images.result_cache_hint": "按图片模型设置（result_cache_seconds，在“服务商与模型”页面或 inkgate.yaml 中）。",
            "images.result_cache_off": "关闭",
            "images.result_cache_model": "{model}：{seconds} 秒，已缓存 {entries} 条",
            "images.result_cache_none": "尚未配置图片模型。",
            "images.cleaned": "清理完成：超过保留时长的本地副本 {ttl} 个，超出容量上限的 {cap} 个，到期删除的图片 {retention} 张，无用内容 {blobs} 个，孤立文件 {orphans} 个，丢失的图片 {lost} 张；释放 {freed}。",
            "images.queued": "已加入上传队列 {count} 个。",
            "images.purged": "已清除 {count} 条缓存结果。",
            "images.grid": "图片",
            "images.sort": "排序",
            "images.sort.created": "创建时间",
            "images.sort.accessed": "最近读取",
            "images.sort.size": "大小",
            "images.order.desc": "最新 / 最大在前",
            "images.order.asc": "最早 / 最小在前",
            "images.filter_state": "状态",
            "images.per_page": "每页",
            "images.apply": "应用",
            "images.select_all": "全选本页",
            "images.selected": "已选 {count} 张",
            "images.select": "选择 {id}",
            "images.delete_local": "删除本地副本",
            "images.delete_remote": "删除存储桶副本",
            "images.delete_all": "彻底删除",
            "images.confirm_local": "确定删除这 {count} 张图片的本地副本？不在存储桶中的副本会保留。",
            "images.confirm_remote": "确定删除这 {count} 张图片在存储桶中的副本？没有本地副本的图片会保留。",
            "images.confirm_all": "确定彻底删除这 {count} 张图片？此操作无法撤销。",
            "images.deleted": "已完成 {count} 张。",
            "images.skipped": "跳过 {count} 张：",
            "images.not_found": "{count} 张已不存在。",
            "images.empty": "还没有图片。生成图文或调用图片接口后，图片会显示在这里。",
            "images.empty_filter": "没有符合筛选条件的图片。",
            "images.preview": "图片",
            "images.size": "大小",
            "images.dimensions": "尺寸",
            "images.type": "格式",
            "images.accessed": "最近读取",
            "images.state": "状态",
            "images.post": "所属图文",
            "images.open": "查看原图",
            "images.last_error": "最近一次上传错误",
            "images.state.local": "本地副本",
            "images.state.remote": "在存储桶中",
            "images.state.pending": "等待上传",
            "images.state.uploading": "上传中",
            "images.state.uploaded": "已上传",
            "images.state.failed": "上传失败",
            "images.state.none": "仅本地",
            "images.state.removed": "存储桶副本已删除",
            "images.state.missing": "文件丢失",
            "images.reason.no_bytes": "没有已存储的文件",
            "images.reason.only_local": "不在存储桶中：本地副本是唯一的一份",
            "images.reason.no_local": "没有本地副本",
            "images.reason.not_in_bucket": "不在存储桶中",
            "images.reason.only_remote": "没有本地副本：存储桶中的是唯一的一份",
        },
    }
)
