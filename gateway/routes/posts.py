"""`GET /v1/posts/{id}/download`: a ZIP of the post's pages."""

from __future__ import annotations

import io
import zipfile

import anyio
from fastapi import APIRouter, Request, Response

from gateway.auth import bearer_token
from gateway.errors import AuthenticationFailed, NotFound
from gateway.flow.runner import load_post
from gateway.routes.common import state_of
from gateway.urls import check_download_signature

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
