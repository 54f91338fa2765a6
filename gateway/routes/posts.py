"""The posts API, scoped to the calling key (the master key sees all):
`GET /v1/posts` (paged, `q` searches topics, `status` filters), `GET /v1/posts/{id}`,
`DELETE /v1/posts/{id}` (with its images), `GET /v1/posts/{id}/download` (a ZIP)."""

from __future__ import annotations

import io
import zipfile
from datetime import UTC, datetime, timedelta
from typing import Annotated, Literal

import anyio
from fastapi import APIRouter, Query, Request, Response
from sqlalchemy import delete, func, select

from gateway.auth import CurrentKey, Principal, bearer_token
from gateway.errors import AuthenticationFailed, Conflict, NotFound
from gateway.flow.runner import load_post
from gateway.routes.common import AppState, post_public, state_of
from gateway.urls import base_url, check_download_signature, image_url
from storage.tables import Image, Page, Post

router = APIRouter()


def _zip(files: list[tuple[str, bytes]]) -> bytes:
    buffer = io.BytesIO()
    # images are already compressed: store them
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for name, data in files:
            archive.writestr(name, data)
    return buffer.getvalue()


@router.get("/v1/posts/{post_id}/download")
async def download_post(
    post_id: str, request: Request, expires: int | None = None, sig: str | None = None
) -> Response:
    state = state_of(request)
    loaded = await load_post(state.db, post_id)
    token = bearer_token(request)
    if token:
        principal = await state.keys.verify(token)
        if principal is None:
            raise AuthenticationFailed("Incorrect API key provided, or the key was revoked.")
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
    post, pages = loaded
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
    data = await anyio.to_thread.run_sync(_zip, files)
    return Response(
        data,
        media_type="application/zip",
        headers={"Content-Disposition": f'attachment; filename="{post.id}.zip"'},
    )


PostStatus = Literal["draft", "generating", "partial", "completed", "failed"]


def _visible(principal: Principal):
    return [] if principal.is_master else [Post.owner_key_id == principal.key_id]


async def _own_post(state: AppState, principal: Principal, post_id: str):
    loaded = await load_post(state.db, post_id)
    if loaded is None or not (principal.is_master or loaded[0].owner_key_id == principal.key_id):
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
        escaped = q.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        where.append(Post.topic.ilike(f"%{escaped}%", escape="\\"))
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
    post, pages = await _own_post(state, key, post_id)
    return await post_public(request, state, post, pages)


@router.delete("/v1/posts/{post_id}")
async def delete_post(post_id: str, request: Request, key: CurrentKey) -> dict:
    """Delete a post with its pages and images (bytes shared with other images stay)."""
    state = state_of(request)
    post, _pages = await _own_post(state, key, post_id)
    updated = post.updated_at if post.updated_at.tzinfo else post.updated_at.replace(tzinfo=UTC)
    recent = datetime.now(UTC) - updated < timedelta(seconds=2 * state.settings.deadline_seconds)
    if post.status == "generating" and recent:
        raise Conflict("The post is still being generated; delete it when it has finished.")
    async with state.db.session() as session:
        image_ids = list(
            (await session.execute(select(Image.id).where(Image.post_id == post.id))).scalars()
        )
    if image_ids:
        await state.storage.lifecycle.delete_images(image_ids, "all")
    async with state.db.writing(), state.db.engine.begin() as conn:
        await conn.execute(delete(Page.__table__).where(Page.__table__.c.post_id == post.id))
        await conn.execute(delete(Post.__table__).where(Post.__table__.c.id == post.id))
    return {"id": post.id, "object": "post.deleted", "deleted": True}
