"""`/admin/api/posts`: the JSON behind the dashboard's Posts page. The operator sees
and acts on every key's posts, through the same functions as `/v1/posts`
(gateway/routes/posts.py) and the flow (gateway/flow/)."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import func, or_, select

from admin.api import Admin
from gateway.errors import InvalidRequest
from gateway.flow.editing import PageDraft, save_pages
from gateway.routes.common import AppState, post_public, state_of
from gateway.routes.posts import (
    MAX_PAGE_TEXT,
    PostStatus,
    contains_pattern,
    ensure_idle,
    export_post,
    find_post,
    redraw,
    redraw_failed,
    redraw_page,
    remove_post,
    require_page,
)
from gateway.urls import base_url
from storage.tables import ApiKey, Page, Post

router = APIRouter(prefix="/admin/api", tags=["admin"])

MASTER = "master"  # the name shown for posts made with the master key


def _thumb(base: str, image_id: str | None) -> str | None:
    return f"{base}/images/{image_id}/thumb" if image_id else None


async def _key_names(state: AppState, key_ids: set[str]) -> dict[str, str]:
    if not key_ids:
        return {}
    async with state.db.engine.connect() as conn:
        rows = await conn.execute(select(ApiKey.id, ApiKey.name).where(ApiKey.id.in_(key_ids)))
        return dict(rows.all())


@router.get("/posts")
async def list_posts(
    request: Request,
    _: Admin,
    q: Annotated[str | None, Query(max_length=200, description="in topic or copy")] = None,
    status: PostStatus | None = None,
    key_id: Annotated[
        str | None, Query(max_length=32, description="'master': the master key")
    ] = None,
    page: Annotated[int, Query(ge=1)] = 1,
    per_page: Annotated[int, Query(ge=1, le=200)] = 50,
) -> dict:
    """Every key's posts, newest first, with page counts, cover thumbnail and owner."""
    state = state_of(request)
    where = []
    if q:
        pattern = contains_pattern(q)
        where.append(
            or_(
                Post.topic.ilike(pattern, escape="\\"),
                Post.copy_json.ilike(pattern, escape="\\"),
            )
        )
    if status:
        where.append(Post.status == status)
    if key_id == MASTER:
        where.append(Post.owner_key_id.is_(None))
    elif key_id is not None:
        where.append(Post.owner_key_id == key_id)
    async with state.db.engine.connect() as conn:
        total = (await conn.execute(select(func.count()).select_from(Post).where(*where))).scalar()
        posts = (
            await conn.execute(
                select(
                    Post.id,
                    Post.topic,
                    Post.model,
                    Post.status,
                    Post.owner_key_id,
                    Post.created_at,
                    Post.updated_at,
                )
                .where(*where)
                .order_by(Post.created_at.desc(), Post.id)
                .offset((page - 1) * per_page)
                .limit(per_page)
            )
        ).all()
        ids = [p.id for p in posts]
        counts = {}
        covers = {}
        if ids:
            counts = {
                row.post_id: row
                for row in await conn.execute(
                    select(
                        Page.post_id,
                        func.count().label("total"),
                        func.count().filter(Page.status == "done").label("done"),
                        func.count().filter(Page.status == "failed").label("failed"),
                    )
                    .where(Page.post_id.in_(ids))
                    .group_by(Page.post_id)
                )
            }
            covers = dict(
                (
                    await conn.execute(
                        select(Page.post_id, Page.image_id).where(
                            Page.post_id.in_(ids), Page.page_index == 0
                        )
                    )
                ).all()
            )
    names = await _key_names(state, {p.owner_key_id for p in posts if p.owner_key_id})
    base = base_url(state.settings, request)
    data = []
    for p in posts:
        c = counts.get(p.id)
        total_pages, done, failed = (c.total, c.done, c.failed) if c else (0, 0, 0)
        data.append(
            {
                "id": p.id,
                "object": "post",
                "topic": p.topic,
                "model": p.model,
                "status": p.status,
                "page_counts": {
                    "total": total_pages,
                    "done": done,
                    "failed": failed,
                    "pending": total_pages - done - failed,
                },
                "cover_thumb_url": _thumb(base, covers.get(p.id)),
                "owner_key_id": p.owner_key_id,
                "owner_key_name": names.get(p.owner_key_id) if p.owner_key_id else MASTER,
                "created": int(p.created_at.timestamp()),
                "updated": int(p.updated_at.timestamp()),
            }
        )
    return {"object": "list", "page": page, "per_page": per_page, "total": total, "data": data}


async def _detail(request: Request, state: AppState, post: Post, pages: list[Page]) -> dict:
    """`/v1`'s form of the post, plus what the operator needs: owner, outline, counts,
    thumbnails, whether a job runs."""
    public = await post_public(request, state, post, pages)
    base = base_url(state.settings, request)
    for item, page in zip(public["pages"], pages, strict=True):
        item["image_id"] = page.image_id
        item["thumb_url"] = _thumb(base, page.image_id)
        item["attempts"] = page.attempts
    names = await _key_names(state, {post.owner_key_id} if post.owner_key_id else set())
    done = sum(1 for p in pages if p.status == "done")
    failed = sum(1 for p in pages if p.status == "failed")
    return {
        **public,
        "owner_key_id": post.owner_key_id,
        "owner_key_name": names.get(post.owner_key_id) if post.owner_key_id else MASTER,
        "aspect_ratio": post.aspect_ratio,
        "outline": post.outline,
        "running": await state.runner.is_active(post.id),
        "page_counts": {
            "total": len(pages),
            "done": done,
            "failed": failed,
            "pending": len(pages) - done - failed,
        },
        "admin_download_url": f"{base}/admin/api/posts/{post.id}/download",
    }


async def _answer(request: Request, state: AppState, post_id: str) -> dict:
    return await _detail(request, state, *await find_post(state, post_id))


@router.get("/posts/{post_id}")
async def get_post(request: Request, _: Admin, post_id: str) -> dict:
    """A post: pages (text, status, image and thumbnail URLs, failure reason), outline,
    copy, owner, and whether a job is running."""
    return await _answer(request, state_of(request), post_id)


class EditPage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: str | None = Field(default=None, min_length=1, max_length=MAX_PAGE_TEXT)
    redraw: bool = Field(default=False, description="Draw the page again now.")


@router.patch("/posts/{post_id}/pages/{index}")
async def edit_page(
    request: Request, admin: Admin, post_id: str, index: int, body: EditPage
) -> dict:
    """Change a page's text. A changed page is `pending` (its old image stays until it is
    drawn again); with `redraw` a job draws it now (the cover stays the reference)."""
    state = state_of(request)
    _post, pages = await find_post(state, post_id)
    page = require_page(pages, index)
    text = body.text.strip() if body.text else None
    if body.text is not None and not text:
        raise InvalidRequest("A page needs some text", param="text")
    await ensure_idle(state, post_id)
    if text is not None and text != page.text:
        drafts = [
            PageDraft.of(p).redraw(text) if p.page_index == index else PageDraft.of(p)
            for p in pages
        ]
        await save_pages(state.db, post_id, drafts)
    if body.redraw:
        await redraw(state, admin, post_id, [index])
    return await _answer(request, state, post_id)


@router.post("/posts/{post_id}/pages/{index}/regenerate")
async def regenerate_page(request: Request, admin: Admin, post_id: str, index: int) -> dict:
    """Draw page `index` (0 = the cover) again with its current text."""
    state = state_of(request)
    _post, pages = await find_post(state, post_id)
    await redraw_page(state, admin, post_id, pages, index)
    return await _answer(request, state, post_id)


@router.post("/posts/{post_id}/retry-failed")
async def retry_failed(request: Request, admin: Admin, post_id: str) -> dict:
    """Draw the failed pages again (400 `no_failed_pages` when there are none)."""
    state = state_of(request)
    _post, pages = await find_post(state, post_id)
    await redraw_failed(state, admin, post_id, pages)
    return await _answer(request, state, post_id)


@router.get("/posts/{post_id}/download")
async def download_post(
    request: Request, _: Admin, post_id: str, format: Literal["zip", "pdf", "long"] = "zip"
) -> Response:
    """The page images: `zip`, `pdf` (a page per image) or `long` (one tall image)."""
    state = state_of(request)
    return await export_post(state, *await find_post(state, post_id), format)


@router.delete("/posts/{post_id}")
async def delete_post(request: Request, _: Admin, post_id: str) -> dict:
    """Delete a post with its pages, events and images (409 `post_busy` while it runs)."""
    state = state_of(request)
    post, _pages = await find_post(state, post_id)
    await remove_post(state, post)
    return {"id": post.id, "object": "post.deleted", "deleted": True}
