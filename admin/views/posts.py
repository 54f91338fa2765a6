"""The posts pages: a list (search, status and key filters, pages) and a post (its
outline, copy and pages; edit and redraw a page, retry failed pages, download, delete).

Both read through admin/posts_api.py's functions, so a page shows what
`/admin/api/posts` answers; every change goes through that API from posts.js, which
also polls a post while it is being generated.
"""

from __future__ import annotations

import json
from typing import Annotated, get_args
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse

from admin import posts_api
from admin.auth import SignedIn
from admin.i18n import add, language, translator
from admin.views import page_session, render
from gateway.auth import Principal
from gateway.errors import NotFound
from gateway.routes.common import state_of
from gateway.routes.posts import PostStatus

router = APIRouter(include_in_schema=False)
NAV = ("posts", "/admin/posts")

STATUSES = get_args(PostStatus)
PAGE_STATUSES = ("pending", "generating", "done", "failed")
PAGE_TYPES = ("cover", "content", "summary")
FORMATS = ("zip", "pdf", "long")
PER_PAGE = (20, 50, 100)
DEFAULT_PER_PAGE = 20
# the chip colour of each status (admin.css: .chip.ok / .warn / .bad / .run)
STATUS_CHIP = {
    "draft": "",
    "generating": "run",
    "partial": "warn",
    "completed": "ok",
    "failed": "bad",
    "pending": "",
    "done": "ok",
}
# what posts.js says, in the page's language
JS_STRINGS = (
    "posts.page_n", "posts.edit_title", "posts.saved", "posts.redrawing", "posts.retrying",
    "posts.confirm_delete", "posts.deleted", "posts.finished", "posts.gone", "posts.no_image",
    "posts.counts", "posts.counts_failed", "posts.counts_pending", "posts.running",
    *(f"posts.status.{s}" for s in STATUSES),
    *(f"posts.page_status.{s}" for s in PAGE_STATUSES),
    *(f"posts.type.{t}" for t in PAGE_TYPES),
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


def _operator(signed_in: SignedIn) -> Principal:
    """The principal `require_admin` gives a dashboard session (used for quotas and logs)."""
    return Principal(key_id=None, name=f"admin:{signed_in.username}")


@router.get("/admin/posts", response_class=HTMLResponse)
async def posts_page(
    request: Request,
    signed_in: Annotated[SignedIn, Depends(page_session)],
    q: str = "",
    status: str = "",
    key_id: str = "",
    page: str = "1",
    per_page: str = str(DEFAULT_PER_PAGE),
) -> HTMLResponse:
    # a page, not an API: an odd value in the address falls back to the default
    q = q.strip()[:200]
    status = status if status in STATUSES else ""
    key_id = key_id.strip()[:32]
    per_page_n = _int(per_page, DEFAULT_PER_PAGE, 1, 200)
    page_n = _int(page, 1, 1, 1_000_000)
    operator = _operator(signed_in)

    async def load(n: int) -> dict:
        return await posts_api.list_posts(
            request,
            operator,
            q=q or None,
            status=status or None,
            key_id=key_id or None,
            page=n,
            per_page=per_page_n,
        )

    listing = await load(page_n)
    pages = max(1, -(-listing["total"] // per_page_n))
    if page_n > pages:
        page_n = pages
        listing = await load(page_n)

    keys = [
        (row.id, row.name, row.revoked_at is not None)
        for row in await state_of(request).keys.list()
    ]
    if key_id and key_id != posts_api.MASTER and key_id not in {k[0] for k in keys}:
        keys.append((key_id, key_id, False))  # a deleted key's id from a link: keep it shown

    def page_url(n: int) -> str:
        query: dict = {"page": n, "per_page": per_page_n}
        query |= {k: v for k, v in (("q", q), ("status", status), ("key_id", key_id)) if v}
        return "/admin/posts?" + urlencode(query)

    return render(
        request,
        "posts.html",
        signed_in=signed_in,
        active="posts",
        posts=listing["data"],
        total=listing["total"],
        page=page_n,
        pages=pages,
        per_page=per_page_n,
        per_page_choices=sorted({*PER_PAGE, per_page_n}),
        q=q,
        status=status,
        key_id=key_id,
        statuses=STATUSES,
        keys=keys,
        master=posts_api.MASTER,
        chip=STATUS_CHIP,
        filtered=bool(q or status or key_id),
        previous_url=page_url(page_n - 1) if page_n > 1 else None,
        next_url=page_url(page_n + 1) if page_n < pages else None,
    )


@router.get("/admin/posts/{post_id}", response_class=HTMLResponse)
async def post_page(
    request: Request, signed_in: Annotated[SignedIn, Depends(page_session)], post_id: str
) -> HTMLResponse:
    try:
        post = await posts_api.get_post(request, _operator(signed_in), post_id)
    except NotFound:
        return render(
            request,
            "post.html",
            signed_in=signed_in,
            active="posts",
            post=None,
            post_id=post_id,
            status_code=404,
        )
    t = translator(language(request))
    return render(
        request,
        "post.html",
        signed_in=signed_in,
        active="posts",
        post=post,
        post_id=post["id"],
        chip=STATUS_CHIP,
        formats=FORMATS,
        has_images=any(p["image_id"] for p in post["pages"]),
        master=posts_api.MASTER,
        page_data=_script_json(
            {
                "post": post,
                "chips": STATUS_CHIP,
                "strings": {key: t(key) for key in JS_STRINGS},
            }
        ),
    )


add(
    {
        "en": {
            "posts.title": "Posts",
            "posts.search": "Topic or copy",
            "posts.filter_status": "Status",
            "posts.filter_key": "Key",
            "posts.per_page": "Per page",
            "posts.apply": "Apply",
            "posts.clear": "Clear",
            "posts.total": "Total: {count}",
            "posts.master_key": "master key",
            "posts.revoked": "revoked",
            "posts.cover": "Cover",
            "posts.topic": "Topic",
            "posts.pages": "Pages",
            "posts.owner": "Key",
            "posts.updated": "Updated",
            "posts.counts": "{done}/{total} done",
            "posts.counts_failed": "{count} failed",
            "posts.counts_pending": "{count} pending",
            "posts.empty": "No posts yet. Posts appear here once a client asks a post model (such as redink) for one, in chat or on /v1/posts.",
            "posts.empty_filter": "No posts match this search.",
            "posts.no_cover": "No cover yet",
            "posts.status.draft": "draft",
            "posts.status.generating": "generating",
            "posts.status.partial": "partly done",
            "posts.status.completed": "completed",
            "posts.status.failed": "failed",
            "posts.page_status.pending": "waiting",
            "posts.page_status.generating": "drawing",
            "posts.page_status.done": "done",
            "posts.page_status.failed": "failed",
            "posts.type.cover": "cover",
            "posts.type.content": "content",
            "posts.type.summary": "summary",
            "posts.back": "← All posts",
            "posts.not_found": "Post not found",
            "posts.not_found_text": "There is no post {id}. It may have been deleted.",
            "posts.model": "Model",
            "posts.aspect_ratio": "Aspect ratio",
            "posts.aspect_default": "model default",
            "posts.id": "ID",
            "posts.error": "Error",
            "posts.running": "Being generated: this page updates by itself. Changes can be made once it has finished.",
            "posts.download": "Download",
            "posts.download.zip": "ZIP",
            "posts.download.pdf": "PDF",
            "posts.download.long": "Long image",
            "posts.retry_failed": "Retry failed pages",
            "posts.delete": "Delete post",
            "posts.confirm_delete": "Delete this post with all its images? This cannot be undone.",
            "posts.deleted": "Post deleted.",
            "posts.copy": "Copy",
            "posts.copy_titles": "Titles",
            "posts.copy_body": "Body",
            "posts.copy_tags": "Tags",
            "posts.outline": "Outline",
            "posts.page_n": "Page {n}",
            "posts.redraw": "Redraw",
            "posts.edit_title": "Edit page {n}",
            "posts.edit_hint": "Saving changed text marks the page to be drawn again; its old image stays until then.",
            "posts.save_text": "Save text",
            "posts.save_redraw": "Save and redraw",
            "posts.saved": "Page saved.",
            "posts.redrawing": "Drawing page {n} again…",
            "posts.retrying": "Drawing the failed pages again…",
            "posts.finished": "Finished: {status}.",
            "posts.gone": "This post no longer exists.",
            "posts.no_image": "No image yet",
            "posts.preview": "Page image",
            "posts.open_full": "Open the full image",
        },
        "zh": {
            "posts.title": "图文",
            "posts.search": "主题或文案",
            "posts.filter_status": "状态",
            "posts.filter_key": "密钥",
            "posts.per_page": "每页",
            "posts.apply": "应用",
            "posts.clear": "清除",
            "posts.total": "共 {count} 篇",
            "posts.master_key": "主密钥",
            "posts.revoked": "已吊销",
            "posts.cover": "封面",
            "posts.topic": "主题",
            "posts.pages": "页面",
            "posts.owner": "密钥",
            "posts.updated": "更新时间",
            "posts.counts": "已完成 {done}/{total}",
            "posts.counts_failed": "失败 {count}",
            "posts.counts_pending": "待生成 {count}",
            "posts.empty": "还没有图文。客户端通过对话或 /v1/posts 向图文模型（如 redink）请求后，图文会出现在这里。",
            "posts.empty_filter": "没有符合条件的图文。",
            "posts.no_cover": "暂无封面",
            "posts.status.draft": "草稿",
            "posts.status.generating": "生成中",
            "posts.status.partial": "部分完成",
            "posts.status.completed": "已完成",
            "posts.status.failed": "失败",
            "posts.page_status.pending": "等待中",
            "posts.page_status.generating": "绘制中",
            "posts.page_status.done": "已完成",
            "posts.page_status.failed": "失败",
            "posts.type.cover": "封面",
            "posts.type.content": "内容",
            "posts.type.summary": "总结",
            "posts.back": "← 全部图文",
            "posts.not_found": "找不到这篇图文",
            "posts.not_found_text": "图文 {id} 不存在，可能已被删除。",
            "posts.model": "模型",
            "posts.aspect_ratio": "画面比例",
            "posts.aspect_default": "模型默认",
            "posts.id": "ID",
            "posts.error": "错误",
            "posts.running": "正在生成：本页会自动更新。生成结束后才能修改。",
            "posts.download": "下载",
            "posts.download.zip": "ZIP",
            "posts.download.pdf": "PDF",
            "posts.download.long": "长图",
            "posts.retry_failed": "重试失败的页面",
            "posts.delete": "删除图文",
            "posts.confirm_delete": "确定删除这篇图文及其所有图片？此操作无法撤销。",
            "posts.deleted": "图文已删除。",
            "posts.copy": "文案",
            "posts.copy_titles": "标题",
            "posts.copy_body": "正文",
            "posts.copy_tags": "标签",
            "posts.outline": "大纲",
            "posts.page_n": "第 {n} 页",
            "posts.redraw": "重新绘制",
            "posts.edit_title": "编辑第 {n} 页",
            "posts.edit_hint": "文字改动保存后，该页会标记为待重新绘制；重新绘制前保留原图。",
            "posts.save_text": "仅保存文字",
            "posts.save_redraw": "保存并重新绘制",
            "posts.saved": "已保存。",
            "posts.redrawing": "正在重新绘制第 {n} 页…",
            "posts.retrying": "正在重新绘制失败的页面…",
            "posts.finished": "生成结束：{status}。",
            "posts.gone": "这篇图文已不存在。",
            "posts.no_image": "暂无图片",
            "posts.preview": "页面图片",
            "posts.open_full": "查看原图",
        },
    }
)
