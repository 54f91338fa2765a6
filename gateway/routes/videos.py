"""The OpenAI video API, and video models in chat.

`POST /v1/videos` (JSON or multipart: `model`, `prompt`, `input_reference` — an uploaded
image, one of this gateway's image URLs or a data URL — `seconds`, `size`, and Kling's
`image_tail`, `negative_prompt`, `cfg_scale`, `mode`) starts a durable job
(gateway/flow/videos.py) and answers the video object at once; `GET /v1/videos` (cursor
pages), `GET /v1/videos/{id}`, `GET /v1/videos/{id}/content` (the MP4, byte ranges) and
`DELETE /v1/videos/{id}`. Videos belong to the key that made them (another key gets
404; the master key sees all); `/content` also takes the signed link chat answers give.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Literal

import anyio
from fastapi import APIRouter, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.datastructures import UploadFile

from gateway.auth import CurrentKey, Principal, bearer_token, require_key
from gateway.errors import (
    AuthenticationFailed,
    Conflict,
    GatewayError,
    InvalidRequest,
    NotFound,
)
from gateway.flow.render import Piece
from gateway.flow.video_inputs import check_video_request, stored_error
from gateway.flow.videos import VideoRunner
from gateway.http_errors import validation_error_response
from gateway.limits import check_model
from gateway.models import ResolvedModel, resolve_model
from gateway.references import (
    MAX_REFERENCE_BYTES,
    checked_image,
    collect_references,
    resolve_image_url,
)
from gateway.routes.common import AppState, own_image_loader, state_of
from gateway.urls import base_url, check_video_signature, signed_video_url
from gateway.usage import note
from providers.base import ImageData
from storage.video_tables import ACTIVE_STATUSES, COMPLETED, FAILED, Video

router = APIRouter()

FRAME_FIELDS = ("input_reference", "image_tail")
CHUNK_BYTES = 1024 * 1024
POLL_AFTER_MS = 2000  # `openai-poll-after-ms`: the SDK's poll helper waits this long
PROGRESS_STEP = 10  # chat progress lines at least this many points apart


class VideoCreateRequest(BaseModel):
    """The fields of `POST /v1/videos` besides the images (JSON or multipart)."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(max_length=32000)
    model: str | None = None
    seconds: int | str | None = None
    size: str | None = None
    negative_prompt: str | None = None
    cfg_scale: float | None = None
    mode: str | None = None
    user: str | None = None


class VideoNotReady(Conflict):
    """409 for the content of a video that is not completed; `x-should-retry: false` so
    SDKs (which retry 409) report it at once."""

    code = "video_not_ready"

    def headers(self) -> dict[str, str]:
        return {**super().headers(), "x-should-retry": "false"}


def runner_of(state: AppState) -> VideoRunner:
    assert state.videos is not None, "the video runner starts with the app"
    return state.videos


def video_public(row: Video) -> dict:
    """A video as OpenAI's API shows it."""
    error = None
    if row.status == FAILED:
        error = {"code": row.error_code or "upstream_error", "message": row.error_message or ""}
    return {
        "id": row.id,
        "object": "video",
        "model": row.model,
        "status": row.status,
        "progress": int(row.progress),
        "created_at": int(row.created_at),
        "completed_at": int(row.completed_at) if row.completed_at else None,
        "expires_at": int(row.expires_at) if row.expires_at else None,
        "seconds": row.seconds,
        "size": row.size,
        "prompt": row.prompt,
        "remixed_from_video_id": None,
        "error": error,
    }


def _video_model(
    state: AppState, request: Request, key: Principal, name: str | None
) -> ResolvedModel:
    config = state.config()
    if not name:
        name = next(iter(config.video_models), None)
        if name is None:
            raise InvalidRequest("No video model is configured on this gateway", param="model")
    model = resolve_model(config, name)
    note(request, model=model.name)
    check_model(key, model)
    if model.kind != "video":
        videos = ", ".join(config.video_models) or "none configured"
        raise InvalidRequest(
            f"The model '{model.name}' does not make videos (video models: {videos})",
            param="model",
            code="model_not_video",
        )
    return model


# --- reading the request ----------------------------------------------------------------


async def _upload(value: UploadFile, param: str) -> ImageData:
    data = await value.read(MAX_REFERENCE_BYTES + 1)
    if len(data) > MAX_REFERENCE_BYTES:
        raise InvalidRequest(f"'{param}' is larger than 20 MB", param=param)
    return await checked_image(data, param, f"'{param}'")


def _reference(value: Any, param: str) -> str | None:
    """The image URL of a JSON `input_reference` / `image_tail`: a URL string or
    `{"image_url": ...}` (OpenAI's image reference object)."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        if value.get("file_id"):
            raise InvalidRequest(
                f"'{param}.file_id' is not supported here: upload the image or send "
                "'image_url' (this gateway's image URL or a data URL)",
                param=f"{param}.file_id",
            )
        url = value.get("image_url")
        if isinstance(url, str) and url:
            return url
    raise InvalidRequest(
        f"'{param}' must be an image file, an image URL or {{\"image_url\": ...}}", param=param
    )


async def _read_create(request: Request) -> tuple[dict, dict[str, UploadFile | str]]:
    """The plain fields and the frames (uploaded files or URLs, by field) of a create."""
    content_type = request.headers.get("content-type", "")
    frames: dict[str, UploadFile | str] = {}
    fields: dict[str, Any] = {}
    if content_type.startswith(("multipart/form-data", "application/x-www-form-urlencoded")):
        form = await request.form(max_files=len(FRAME_FIELDS))
        for name, value in form.multi_items():
            base, _, rest = name.partition("[")
            if base in FRAME_FIELDS:
                if rest == "file_id]":
                    _reference({"file_id": value}, base)
                if isinstance(value, UploadFile) or rest in ("", "image_url]"):
                    frames[base] = value
                    continue
                raise InvalidRequest(f"Unrecognized request argument supplied: {name}", param=name)
            if isinstance(value, UploadFile):
                raise InvalidRequest(f"Unexpected file field '{name}'", param=name)
            fields[name] = value
        return fields, frames
    if content_type.startswith("application/json"):
        try:
            raw = json.loads(await request.body())
        except ValueError:
            raise InvalidRequest(
                "We could not parse the JSON body of your request: it is not valid JSON.",
                code="invalid_json",
            ) from None
        if not isinstance(raw, dict):
            raise InvalidRequest("The JSON body must be an object")
        for name in FRAME_FIELDS:
            url = _reference(raw.pop(name, None), name)
            if url:
                frames[name] = url
        return raw, frames
    raise InvalidRequest(
        "Send the video request as multipart/form-data or application/json",
        code="unsupported_media_type",
    )


async def _frame(state: AppState, value: UploadFile | str | None, param: str) -> ImageData | None:
    if value is None:
        return None
    if isinstance(value, UploadFile):
        return await _upload(value, param)
    # our own image URLs are read from the store, never over HTTP
    return await resolve_image_url(
        value, state.http, own_image_loader(state), param,
        allow_external=state.settings.fetch_external_images,
    )  # fmt: skip


# --- the routes -------------------------------------------------------------------------


@router.post("/v1/videos")
async def create_video(request: Request, key: CurrentKey):
    """Start a video job; the video object (`queued`) at once. Poll `GET /v1/videos/{id}`."""
    state = state_of(request)
    fields, frames = await _read_create(request)
    try:
        body = VideoCreateRequest.model_validate(fields)
    except ValidationError as exc:
        return validation_error_response(RequestValidationError(exc.errors()))
    model = _video_model(state, request, key, body.model)
    assert model.video is not None
    spec = await check_video_request(
        model.name,
        model.video,
        body.prompt,
        first_frame=await _frame(state, frames.get("input_reference"), "input_reference"),
        last_frame=await _frame(state, frames.get("image_tail"), "image_tail"),
        seconds=body.seconds,
        size=body.size,
        mode=body.mode,
        cfg_scale=body.cfg_scale,
        negative_prompt=body.negative_prompt,
    )
    row = await runner_of(state).create(spec, owner_key_id=key.key_id)
    return video_public(row)


@router.get("/v1/videos")
async def list_videos(
    request: Request,
    key: CurrentKey,
    limit: int = Query(default=20, ge=1, le=100),
    after: str | None = None,
    order: Literal["asc", "desc"] = "desc",
) -> dict:
    """The key's videos (the master key: all), newest first unless `order=asc`."""
    runner = runner_of(state_of(request))
    rows, more = await runner.list(
        key.key_id, every=key.is_master, limit=limit, after=after, order=order
    )
    data = [video_public(row) for row in rows]
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": more,
    }


async def find_video(state: AppState, video_id: str, key: Principal | None) -> Video:
    """The video; 404 `video_not_found` when there is none or it is another key's (the
    same answer either way). `key` None: access was checked otherwise (a signed link)."""
    row = await runner_of(state).get(video_id) if video_id.startswith("video_") else None
    if row is None or not (key is None or key.is_master or row.owner_key_id == key.key_id):
        raise NotFound(f"No video {video_id!r}", code="video_not_found", param="video_id")
    return row


@router.get("/v1/videos/{video_id}")
async def get_video(video_id: str, request: Request, key: CurrentKey, response: Response) -> dict:
    row = await find_video(state_of(request), video_id, key)
    note(request, model=row.model)
    if row.status in ACTIVE_STATUSES:
        response.headers["openai-poll-after-ms"] = str(POLL_AFTER_MS)
    return video_public(row)


@router.delete("/v1/videos/{video_id}")
async def delete_video(video_id: str, request: Request, key: CurrentKey) -> dict:
    """Delete the video and its stored MP4 (a job still running stops; its upstream task
    is not cancelled)."""
    state = state_of(request)
    row = await find_video(state, video_id, key)
    note(request, model=row.model)
    await runner_of(state).delete(row)
    return {"id": row.id, "object": "video.deleted", "deleted": True}


@router.get("/v1/videos/{video_id}/content")
@router.head("/v1/videos/{video_id}/content", include_in_schema=False)
async def video_content(
    video_id: str,
    request: Request,
    variant: str = "video",
    expires: int | None = None,
    sig: str | None = None,
) -> Response:
    """The MP4 (`Content-Type: video/mp4`, byte ranges, `ETag`). A key, or the signed
    link (`expires`, `sig`) of a chat answer."""
    state = state_of(request)
    if bearer_token(request):
        row = await find_video(state, video_id, await require_key(request))
    elif expires is not None and sig:
        row = await find_video(state, video_id, None)
        if not check_video_signature(state.settings, row.id, row.owner_key_id, expires, sig):
            raise NotFound(f"No video {video_id!r}", code="video_not_found", param="video_id")
    else:
        raise AuthenticationFailed(
            "You didn't provide an API key. Send it as 'Authorization: Bearer YOUR_KEY'."
        )
    note(request, model=row.model)
    if variant in ("thumbnail", "spritesheet"):
        raise NotFound(
            f"Video {row.id} has no {variant}: this gateway stores the video only",
            code="variant_not_available",
            param="variant",
        )
    if variant != "video":
        raise InvalidRequest(
            f"Invalid value for 'variant': {variant!r}; expected 'video'", param="variant"
        )
    if row.status != COMPLETED or not row.file_key:
        if row.status == FAILED:
            raise VideoNotReady(
                f"Video {row.id} failed ({row.error_code}): it has no content",
                code="video_failed",
            )
        raise VideoNotReady(
            f"Video {row.id} is {row.status} ({row.progress}%): its content is available once "
            "it is completed"
        )
    path = await runner_of(state).files.path(row.file_key)
    if path is None:
        raise NotFound(f"The file of video {row.id} is missing", code="video_not_found")
    return await _send_file(request, row, path)


class RangeNotSatisfiable(GatewayError):
    status = 416
    type = "invalid_request_error"
    code = "range_not_satisfiable"

    def __init__(self, message: str, size: int) -> None:
        super().__init__(message, param="Range")
        self.size = size

    def headers(self) -> dict[str, str]:
        return {"Content-Range": f"bytes */{self.size}"}


def byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """(start, end inclusive) of a single `bytes=` range; None to send the whole file (no
    header, one we do not parse, or several ranges: RFC 9110 lets a server ignore
    those). `RangeNotSatisfiable` when it starts past the end."""
    if not header:
        return None
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first, dash, last = spec.strip().partition("-")
    if not dash:
        return None
    try:
        if first == "":  # the last N bytes
            count = int(last)
            if count <= 0:
                raise RangeNotSatisfiable("The range asks for no bytes", size)
            return max(0, size - count), size - 1
        start = int(first)
        end = int(last) if last else size - 1
    except ValueError:
        return None
    if start < 0 or end < start:
        return None
    if start >= size:
        raise RangeNotSatisfiable(f"The range starts past the end of the {size} bytes", size)
    return start, min(end, size - 1)


async def _chunks(path: Path, start: int, length: int) -> AsyncIterator[bytes]:
    async with await anyio.open_file(path, "rb") as fh:
        await fh.seek(start)
        remaining = length
        while remaining > 0:
            chunk = await fh.read(min(CHUNK_BYTES, remaining))
            if not chunk:
                return
            remaining -= len(chunk)
            yield chunk


async def _send_file(request: Request, row: Video, path: Path) -> Response:
    size = (await anyio.to_thread.run_sync(path.stat)).st_size
    etag = f'"{row.sha256 or row.id}"'
    headers = {
        "ETag": etag,
        "Accept-Ranges": "bytes",
        "Cache-Control": "private, max-age=86400",
        "Content-Disposition": f'inline; filename="{row.id}.mp4"',
    }
    inm = request.headers.get("if-none-match")
    if inm and (
        inm.strip() == "*" or etag in [t.strip().removeprefix("W/") for t in inm.split(",")]
    ):
        return Response(status_code=304, headers=headers)
    if_range = request.headers.get("if-range")
    wanted = None if if_range and if_range.strip() != etag else request.headers.get("range")
    span = byte_range(wanted, size)
    status = 200
    start, length = 0, size
    if span is not None:
        start, end = span
        length = end - start + 1
        status = 206
        headers["Content-Range"] = f"bytes {start}-{end}/{size}"
    headers["Content-Length"] = str(length)
    if request.method == "HEAD":
        return Response(status_code=status, media_type="video/mp4", headers=headers)
    return StreamingResponse(
        _chunks(path, start, length), status_code=status, media_type="video/mp4", headers=headers
    )


# --- chat -------------------------------------------------------------------------------


async def chat_video_answer(
    request: Request, state: AppState, key: Principal, model: ResolvedModel, prompt: str,
    messages: list[dict],
) -> AsyncIterator[Piece]:  # fmt: skip
    """A chat turn with a video model: the last user turn's text (and its first image as
    the first frame) becomes a video job, checked and started before the answer begins.
    The pieces are progress lines (streams only) and, once completed, a signed link to
    the MP4 that works without a header; a failed job raises its error."""
    assert model.video is not None
    refs = await collect_references(
        messages, state.http, own_image_loader(state),
        allow_external=state.settings.fetch_external_images,
    )  # fmt: skip
    spec = await check_video_request(
        model.name, model.video, prompt, first_frame=refs[0] if refs else None
    )
    runner = runner_of(state)
    row = await runner.create(spec, owner_key_id=key.key_id)
    base = base_url(state.settings, request)
    return _follow_video(runner, base, state, row)


async def _follow_video(
    runner: VideoRunner, base: str, state: AppState, row: Video
) -> AsyncIterator[Piece]:
    yield Piece(f"🎬 `{row.id}` ({row.seconds} s) …\n\n", progress=True)
    shown = (row.status, 0)
    async for current in runner.follow(row.id):
        if current.status == FAILED:
            raise stored_error(current)
        if current.status == COMPLETED:
            url = signed_video_url(state.settings, base, current.id, current.owner_key_id)
            yield Piece(f"🎬 [{current.id}.mp4]({url})\n")
            return
        if current.status != shown[0] or current.progress - shown[1] >= PROGRESS_STEP:
            shown = (current.status, current.progress)
            yield Piece(f"⏳ {current.status} {current.progress}%\n\n", progress=True)
    raise NotFound(f"Video {row.id} was deleted before it was completed", code="video_not_found")
