"""The posts API, scoped to the calling key (the master key sees all).

`POST /v1/posts` (a topic, or pages, outline only or the whole post), `GET /v1/posts`
(paged, `q` searches topics, `status` filters), `GET /v1/posts/{id}`,
`GET /v1/posts/{id}/events` (SSE, resumable with `Last-Event-ID`), `PATCH` (edit,
reorder, add, delete pages), `POST .../generate`, `POST .../pages/{n}/regenerate`,
`POST .../retry-failed`, `DELETE` (with its images), `GET .../download` (zip | pdf | long).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime
from typing import Annotated, Literal

import anyio
from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import delete, func, select, update

from gateway.auth import CurrentKey, Principal, bearer_token
from gateway.errors import AuthenticationFailed, Conflict, InvalidRequest, NotFound
from gateway.flow.editing import PageDraft, default_type, save_pages
from gateway.flow.export import build_long, build_pdf, build_zip
from gateway.flow.jobs import StoredEvent
from gateway.flow.outline import MAX_PAGES, MIN_PAGES
from gateway.flow.runner import load_post
from gateway.limits import check_image_quota, check_model, check_new_post
from gateway.models import ASPECT_RATIOS, resolve_model
from gateway.references import MAX_REFERENCES, resolve_image_url
from gateway.routes.common import (
    KEEPALIVE,
    AppState,
    own_image_loader,
    post_public,
    state_of,
    with_keepalive,
)
from gateway.urls import base_url, check_download_signature, image_url
from gateway.usage import note
from storage.tables import Image, Page, Post, PostEvent, PostJob

router = APIRouter()


@router.get("/v1/posts/{post_id}/download")
async def download_post(
    post_id: str,
    request: Request,
    expires: int | None = None,
    sig: str | None = None,
    format: Literal["zip", "pdf", "long"] = "zip",
) -> Response:
    """The post's page images: `zip` (the files), `pdf` (a page per image) or `long`
    (one tall stitched JPEG). A key, or the signed link from the chat answer."""
    state = state_of(request)
    loaded = await load_post(state.db, post_id)
    token = bearer_token(request)
    if token:
        principal = await state.keys.verify(token)
        if principal is None:
            raise AuthenticationFailed(
                "Incorrect API key provided, or the key was revoked or has expired."
            )
        allowed = loaded is not None and (
            principal.is_master or loaded[0].owner_key_id == principal.key_id
        )
    elif expires is not None and sig:
        allowed = loaded is not None and check_download_signature(
            state.settings, post_id, loaded[0].owner_key_id, expires, sig
        )
    else:
        raise AuthenticationFailed(
            "You didn't provide an API key. Send it as 'Authorization: Bearer YOUR_KEY'."
        )
    if not allowed or loaded is None:
        # the same answer whether the post is missing or someone else's
        raise NotFound(f"No post {post_id!r}", code="post_not_found")
    return await export_post(state, *loaded, format)


async def export_post(
    state: AppState, post: Post, pages: list[Page], format: Literal["zip", "pdf", "long"]
) -> Response:
    """The download answer for a post whose access was checked."""
    files = []
    for page in pages:
        if not page.image_id:
            continue
        row = await state.images.get(page.image_id)
        if row is not None:
            files.append(
                (f"page_{page.page_index + 1:02d}.{row.ext}", await state.images.read(row))
            )
    if not files:
        raise NotFound("The post has no generated pages yet", code="post_empty")
    if format == "pdf":
        data = await anyio.to_thread.run_sync(
            lambda: build_pdf([d for _, d in files], title=post.topic[:200])
        )
        media, name = "application/pdf", f"{post.id}.pdf"
    elif format == "long":
        data, media = await anyio.to_thread.run_sync(lambda: build_long([d for _, d in files]))
        name = f"{post.id}.{'png' if media == 'image/png' else 'jpg'}"
    else:
        data = await anyio.to_thread.run_sync(build_zip, files)
        media, name = "application/zip", f"{post.id}.zip"
    return Response(
        data,
        media_type=media,
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )


PostStatus = Literal["draft", "generating", "partial", "completed", "failed"]


def contains_pattern(text: str) -> str:
    """A LIKE pattern (escape character `\\`) matching `text` anywhere, `%` and `_` literal."""
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def _visible(principal: Principal):
    return [] if principal.is_master else [Post.owner_key_id == principal.key_id]


async def find_post(
    state: AppState, post_id: str, principal: Principal | None = None
) -> tuple[Post, list[Page]]:
    """The post and its pages; 404 `post_not_found` when there is none, or (with
    `principal`) when it is another key's. The operator passes no principal."""
    loaded = await load_post(state.db, post_id)
    if loaded is None or not (
        principal is None or principal.is_master or loaded[0].owner_key_id == principal.key_id
    ):
        # the same answer whether the post is missing or someone else's
        raise NotFound(f"No post {post_id!r}", code="post_not_found", param="post_id")
    return loaded


@router.get("/v1/posts")
async def list_posts(
    request: Request,
    key: CurrentKey,
    page: Annotated[int, Query(ge=1)] = 1,
    per_page: Annotated[int, Query(ge=1, le=100)] = 20,
    q: Annotated[str | None, Query(max_length=200)] = None,
    status: PostStatus | None = None,
) -> dict:
    """The caller's posts, newest first."""
    state = state_of(request)
    where = _visible(key)
    if q:
        where.append(Post.topic.ilike(contains_pattern(q), escape="\\"))
    if status:
        where.append(Post.status == status)
    async with state.db.session() as session:
        total = (
            await session.execute(select(func.count()).select_from(Post).where(*where))
        ).scalar_one()
        posts = (
            (
                await session.execute(
                    select(Post)
                    .where(*where)
                    .order_by(Post.created_at.desc(), Post.id)
                    .offset((page - 1) * per_page)
                    .limit(per_page)
                )
            )
            .scalars()
            .all()
        )
        ids = [p.id for p in posts]
        counts = (
            dict(
                (
                    await session.execute(
                        select(Page.post_id, func.count())
                        .where(Page.post_id.in_(ids))
                        .group_by(Page.post_id)
                    )
                ).all()
            )
            if ids
            else {}
        )
        covers = (
            (
                await session.execute(
                    select(Page.post_id, Image.id, Image.ext)
                    .join(Image, Image.id == Page.image_id)
                    .where(Page.post_id.in_(ids), Page.page_index == 0)
                )
            ).all()
            if ids
            else []
        )
    base = base_url(state.settings, request)
    cover = {post_id: image_url(base, image_id, ext) for post_id, image_id, ext in covers}
    return {
        "object": "list",
        "page": page,
        "per_page": per_page,
        "total": total,
        "data": [
            {
                "id": p.id,
                "object": "post",
                "model": p.model,
                "topic": p.topic,
                "status": p.status,
                "created": int(p.created_at.timestamp()),
                "page_count": counts.get(p.id, 0),
                "cover_url": cover.get(p.id),
            }
            for p in posts
        ],
    }


@router.get("/v1/posts/{post_id}")
async def get_post(post_id: str, request: Request, key: CurrentKey) -> dict:
    """A post: status, pages (index, type, text, status, image URL, error)."""
    state = state_of(request)
    post, pages = await find_post(state, post_id, key)
    return await post_public(request, state, post, pages)


@router.delete("/v1/posts/{post_id}")
async def delete_post(post_id: str, request: Request, key: CurrentKey) -> dict:
    """Delete a post with its pages and images (bytes shared with other images stay)."""
    state = state_of(request)
    post, _pages = await find_post(state, post_id, key)
    await remove_post(state, post)
    return {"id": post.id, "object": "post.deleted", "deleted": True}


async def remove_post(state: AppState, post: Post) -> None:
    """Delete a post with its pages, events, jobs and images; 409 `post_busy` while a
    job runs."""
    if await state.runner.is_active(post.id):
        raise Conflict(
            "The post is still being generated; delete it when it has finished.",
            code="post_busy",
        )
    async with state.db.session() as session:
        image_ids = list(
            (await session.execute(select(Image.id).where(Image.post_id == post.id))).scalars()
        )
    if image_ids:
        await state.storage.lifecycle.delete_images(image_ids, "all")
    async with state.db.writing(), state.db.engine.begin() as conn:
        await conn.execute(delete(Page.__table__).where(Page.__table__.c.post_id == post.id))
        await conn.execute(
            delete(PostEvent.__table__).where(PostEvent.__table__.c.post_id == post.id)
        )
        await conn.execute(delete(PostJob.__table__).where(PostJob.__table__.c.post_id == post.id))
        await conn.execute(delete(Post.__table__).where(Post.__table__.c.id == post.id))


# -- creating and editing ------------------------------------------------------

PageType = Literal["cover", "content", "summary"]
MAX_PAGE_TEXT = 4000


class PageIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: PageType | None = None
    text: str = Field(min_length=1, max_length=MAX_PAGE_TEXT)


class CreatePost(BaseModel):
    model_config = ConfigDict(extra="forbid")

    topic: str = Field(min_length=1, max_length=4000)
    model: str = "redink"
    page_count: int | None = Field(default=None, ge=MIN_PAGES, le=MAX_PAGES)
    pages: list[str | PageIn] | None = Field(default=None, min_length=1, max_length=MAX_PAGES)
    reference_images: list[str] | None = Field(default=None, max_length=MAX_REFERENCES)
    mode: Literal["outline", "full"] = "full"
    aspect_ratio: str | None = None


class PatchPage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    index: int | None = Field(
        default=None, ge=0, description="An existing page; absent: a new page"
    )
    type: PageType | None = None
    text: str | None = Field(default=None, min_length=1, max_length=MAX_PAGE_TEXT)


class PatchPost(BaseModel):
    model_config = ConfigDict(extra="forbid")

    topic: str | None = Field(default=None, min_length=1, max_length=4000)
    pages: list[PatchPage] | None = Field(default=None, min_length=1, max_length=MAX_PAGES)


class RegeneratePage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: str | None = Field(default=None, min_length=1, max_length=MAX_PAGE_TEXT)


async def _post_answer(request: Request, state: AppState, post_id: str) -> dict:
    loaded = await load_post(state.db, post_id)
    assert loaded is not None
    return await post_public(request, state, *loaded)


async def ensure_idle(state: AppState, post_id: str) -> None:
    """409 `post_busy` while a job of the post runs."""
    if await state.runner.is_active(post_id):
        raise Conflict(
            "The post is being generated; try again when it has finished "
            f"(follow GET /v1/posts/{post_id}/events).",
            code="post_busy",
        )


async def _submit(state: AppState, post_id: str, *, outline_only: bool = False) -> None:
    if await state.runner.submit(post_id, outline_only=outline_only) is None:
        await ensure_idle(state, post_id)
        raise Conflict("The post is being generated", code="post_busy")


@router.post("/v1/posts")
async def create_post(body: CreatePost, request: Request, key: CurrentKey) -> dict:
    """Start a post: the outline (unless `pages` are given), then, with `mode: full`,
    every page. Returns at once; follow `GET /v1/posts/{id}/events` or poll the post."""
    state = state_of(request)
    model = resolve_model(state.config(), body.model)
    note(request, model=model.name)
    check_model(key, model)
    if model.kind in ("image", "video"):
        raise InvalidRequest(
            f"The model {body.model!r} is an {model.kind} model; posts need a post model such "
            "as 'redink'",
            param="model",
        )
    if body.aspect_ratio is not None and body.aspect_ratio not in ASPECT_RATIOS:
        raise InvalidRequest(
            f"aspect_ratio must be one of {', '.join(ASPECT_RATIOS)}", param="aspect_ratio"
        )
    pages = None
    if body.pages:
        count = len(body.pages)
        pages = [
            (default_type(i, count), p.strip())
            if isinstance(p, str)
            else (p.type or default_type(i, count), p.text.strip())
            for i, p in enumerate(body.pages)
        ]
        if any(not text for _, text in pages):
            raise InvalidRequest("Every page needs some text", param="pages")
    refs = []
    for i, url in enumerate(body.reference_images or ()):
        refs.append(
            await resolve_image_url(
                url,
                state.http,
                own_image_loader(state),
                f"reference_images[{i}]",
                allow_external=state.settings.fetch_external_images,
            )
        )
    outline_only = body.mode == "outline" or model.kind == "outline"
    await check_new_post(state.db, key, draws=not outline_only)
    run = await state.runner.start(
        topic=body.topic.strip(),
        model=model.post_name or body.model,
        owner_key_id=key.key_id,
        page_count=body.page_count,
        aspect_ratio=body.aspect_ratio,
        references=tuple(refs),
        outline_only=outline_only,
        pages=pages,
    )
    note(request, post_id=run.post_id)
    return await _post_answer(request, state, run.post_id)


@router.patch("/v1/posts/{post_id}")
async def patch_post(post_id: str, body: PatchPost, request: Request, key: CurrentKey) -> dict:
    """Edit, reorder, add and delete pages: `pages` is the new list in order; an item
    with `index` keeps that page (its image stays; changed text marks it `pending`, to
    be drawn by `generate`), an item without is a new page, pages left out are deleted."""
    state = state_of(request)
    post, current = await find_post(state, post_id, key)
    await ensure_idle(state, post_id)
    by_index = {p.page_index: p for p in current}
    new_pages: list[PageDraft] | None = None
    if body.pages is not None:
        new_pages = []
        seen: set[int] = set()
        count = len(body.pages)
        for i, item in enumerate(body.pages):
            param = f"pages[{i}]"
            if item.index is None:
                if not item.text or not item.text.strip():
                    raise InvalidRequest("A new page needs its text", param=param + ".text")
                new_pages.append(PageDraft(item.type or default_type(i, count), item.text.strip()))
                continue
            old = by_index.get(item.index)
            if old is None:
                raise InvalidRequest(f"The post has no page {item.index}", param=param + ".index")
            if item.index in seen:
                raise InvalidRequest(f"Page {item.index} is listed twice", param=param + ".index")
            seen.add(item.index)
            page = PageDraft.of(old)
            text = item.text.strip() if item.text else old.text
            if text != old.text:
                page = page.redraw(text)
            new_pages.append(replace(page, type=item.type or old.type))
    await save_pages(state.db, post_id, new_pages, topic=body.topic.strip() if body.topic else None)
    return await _post_answer(request, state, post.id)


@router.post("/v1/posts/{post_id}/generate")
async def generate_post(post_id: str, request: Request, key: CurrentKey) -> dict:
    """Draw every page that is not done (a draft, edited pages, failed pages)."""
    state = state_of(request)
    _post, pages = await find_post(state, post_id, key)
    await redraw(state, key, post_id, [p.page_index for p in pages if p.status != "done"])
    return await _post_answer(request, state, post_id)


@router.post("/v1/posts/{post_id}/pages/{index}/regenerate")
async def regenerate_page(
    post_id: str,
    index: int,
    request: Request,
    key: CurrentKey,
    body: RegeneratePage | None = None,
) -> dict:
    """Draw page `index` (0 = the cover) again, with new text if given; other pages
    keep the cover as their style reference."""
    state = state_of(request)
    _post, pages = await find_post(state, post_id, key)
    text = body.text.strip() if body and body.text else None
    await redraw_page(state, key, post_id, pages, index, text=text)
    return await _post_answer(request, state, post_id)


@router.post("/v1/posts/{post_id}/retry-failed")
async def retry_failed(post_id: str, request: Request, key: CurrentKey) -> dict:
    state = state_of(request)
    _post, pages = await find_post(state, post_id, key)
    await redraw_failed(state, key, post_id, pages)
    return await _post_answer(request, state, post_id)


def require_page(pages: list[Page], index: int) -> Page:
    """Page `index` of the pages; 404 `page_not_found` when the post has none."""
    for page in pages:
        if page.page_index == index:
            return page
    raise NotFound(f"The post has no page {index}", code="page_not_found", param="index")


async def redraw(
    state: AppState, key: Principal, post_id: str, indexes: list[int], *, text: str | None = None
) -> None:
    """Mark `indexes` pending (with new `text`, if given) and start a job that draws
    every page not done: 409 `post_busy` while a job runs; `key`'s image quota applies."""
    await ensure_idle(state, post_id)
    await check_image_quota(state.db, key)
    await _set_pending(state, post_id, indexes, text=text)
    await _submit(state, post_id)


async def redraw_page(
    state: AppState,
    key: Principal,
    post_id: str,
    pages: list[Page],
    index: int,
    *,
    text: str | None = None,
) -> None:
    """Draw page `index` again (404 `page_not_found` when there is none)."""
    require_page(pages, index)
    await redraw(state, key, post_id, [index], text=text)


async def redraw_failed(state: AppState, key: Principal, post_id: str, pages: list[Page]) -> None:
    """Draw the failed pages again; 400 `no_failed_pages` when there are none."""
    failed = [p.page_index for p in pages if p.status == "failed"]
    if not failed:
        raise InvalidRequest("The post has no failed pages", code="no_failed_pages")
    await redraw(state, key, post_id, failed)


async def _set_pending(
    state: AppState, post_id: str, indexes: list[int], *, text: str | None = None
) -> None:
    if not indexes:
        return
    table = Page.__table__
    values: dict = {"status": "pending", "error": None, "updated_at": datetime.now(UTC)}
    if text is not None:
        values["text"] = text
    async with state.db.writing(), state.db.engine.begin() as conn:
        await conn.execute(
            update(table)
            .where(table.c.post_id == post_id, table.c.page_index.in_(indexes))
            .values(values)
        )


# -- progress ------------------------------------------------------------------


def _event_data(event: StoredEvent, post_id: str, base: str) -> dict:
    data = {"post_id": post_id, **event.data}
    if event.page is not None:
        data["page"] = event.page
    if event.kind == "page_done":
        data["url"] = image_url(base, event.data["image_id"], event.data.get("ext", "png"))
    return data


@router.get("/v1/posts/{post_id}/events")
async def post_events(
    post_id: str,
    request: Request,
    key: CurrentKey,
    last_event_id: Annotated[str | None, Header()] = None,
    after: Annotated[int | None, Query(ge=0)] = None,
) -> StreamingResponse:
    """Server-sent events of the post: `outline`, `page_started`, `page_done` (url),
    `page_failed` (reason, retryable), `copy`, `finished`. Every event the post had is
    sent first (after `Last-Event-ID` or `?after=`), then live ones while a job runs;
    the stream ends when no job is running."""
    state = state_of(request)
    await find_post(state, post_id, key)
    start = after or 0
    if last_event_id:
        try:
            start = max(start, int(last_event_id))
        except ValueError:
            raise InvalidRequest("Last-Event-ID must be an event id (an integer)") from None
    base = base_url(state.settings, request)

    async def stream() -> AsyncIterator[str]:
        yield "retry: 3000\n\n"
        events = state.runner.follow(post_id, start)
        async for item in with_keepalive(events, state.settings.keepalive_seconds):
            if item is KEEPALIVE:
                yield ": keep-alive\n\n"
                continue
            data = json.dumps(_event_data(item, post_id, base), ensure_ascii=False)
            yield f"id: {item.seq}\nevent: {item.kind}\ndata: {data}\n\n"

    return StreamingResponse(
        stream(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
