"""`GET /images/{id}.{ext}`: stored bytes with their real type, cacheable forever."""

from __future__ import annotations

import anyio
from fastapi import APIRouter, Request, Response
from fastapi.responses import FileResponse

from gateway.errors import NotFound
from gateway.routes.common import state_of

router = APIRouter()

IMMUTABLE = "public, max-age=31536000, immutable"


@router.api_route("/images/{name}", methods=["GET", "HEAD"])
async def get_image(name: str, request: Request) -> Response:
    state = state_of(request)
    image_id, _, _ext = name.rpartition(".")
    row = (
        await state.images.get(image_id or name) if (image_id or name).startswith("img_") else None
    )
    if row is None:
        raise NotFound(f"No image {name!r}", code="image_not_found")
    etag = f'"{row.sha256}"'
    headers = {"ETag": etag, "Cache-Control": IMMUTABLE}
    inm = request.headers.get("if-none-match", "")
    if etag in [tag.strip().removeprefix("W/") for tag in inm.split(",")] or inm.strip() == "*":
        return Response(status_code=304, headers=headers)
    path = state.images.path(row)
    if not await anyio.to_thread.run_sync(path.is_file):
        raise NotFound(f"The bytes of image {row.id!r} are missing", code="image_not_found")
    return FileResponse(path, media_type=row.mime, headers=headers)
