"""`POST /v1/images/generations` and `POST /v1/images/edits`.

Model `redink` (a post model) answers with one item per page; the images of an edit
become the post's reference images. A plain image model answers with its images.
"""

from __future__ import annotations

import json
import time
from typing import Any

import anyio
import pybase64
from fastapi import APIRouter, Request
from pydantic import ValidationError
from starlette.datastructures import UploadFile

from gateway import result_cache
from gateway.auth import CurrentKey, Principal
from gateway.errors import GatewayError, InvalidRequest, UpstreamError
from gateway.flow.outline import clamp_pages, requested_page_count
from gateway.flow.runner import flow_event, load_post
from gateway.http_errors import validation_error_response
from gateway.limits import check_image_quota, check_model, check_new_post
from gateway.models import ResolvedModel, aspect_ratio_for_size, resolve_model
from gateway.references import MAX_REFERENCE_BYTES, MAX_REFERENCES, resolve_image_url
from gateway.result_cache import request_key
from gateway.routes.common import AppState, own_image_loader, state_of
from gateway.schemas import ImageEditRequest, ImageGenerationRequest
from gateway.urls import base_url, image_url
from gateway.usage import note
from providers.base import ImageData, ImageRequest
from storage.tables import Image

router = APIRouter()


async def _item(state, request: Request, row: Image, fmt: str, revised: str | None) -> dict:
    item: dict = {}
    if fmt == "b64_json":
        data = await state.images.read(row)
        item["b64_json"] = await anyio.to_thread.run_sync(lambda: pybase64.b64encode(data).decode())
    else:
        item["url"] = image_url(base_url(state.settings, request), row.id, row.ext)
    if revised is not None:
        item["revised_prompt"] = revised
    return item


def _model_for(
    state: AppState, request: Request, key: Principal, name: str | None
) -> ResolvedModel:
    config = state.config()
    model = resolve_model(config, name or next(iter(config.post_models), "redink"))
    note(request, model=model.name)
    check_model(key, model)
    if model.kind == "video":
        raise InvalidRequest(
            f"The model '{model.name}' makes videos: use /v1/videos", param="model"
        )
    return model


async def _image_model_answer(
    state: AppState, request: Request, key: Principal, model: ResolvedModel,
    body: ImageGenerationRequest | ImageEditRequest, references: tuple[ImageData, ...] = (),
    mask: ImageData | None = None,
) -> dict:  # fmt: skip
    assert model.image is not None
    explicit = body.size if body.size and body.size != "auto" else None
    image_request = ImageRequest(
        prompt=body.prompt,
        references=references,
        mask=mask,
        aspect_ratio=aspect_ratio_for_size(body.size, model.image.aspect_ratio),
        size=explicit,
        n=body.n or 1,
        model=model.image.model,
        quality=body.quality,
        style=getattr(body, "style", None),
    )
    ttl = model.image.result_cache_seconds
    cache_key = request_key(model.name, model.image.provider, image_request) if ttl else None
    rows = await result_cache.lookup(state.images, cache_key, ttl) if cache_key else None
    if rows is None:
        await check_image_quota(state.db, key, image_request.n)
        images = await state.runner.generate_image(model.image.provider, image_request)
        rows = [await state.images.put(img.data, owner_key_id=key.key_id) for img in images]
        note(request, images=len(rows))
        if cache_key:
            await result_cache.remember(state.images, cache_key, model.name, rows)
    fmt = body.response_format or "url"
    return {
        "created": int(time.time()),
        "data": [await _item(state, request, r, fmt, None) for r in rows],
    }


async def _post_answer(
    state: AppState, request: Request, key: Principal, model: ResolvedModel,
    body: ImageGenerationRequest | ImageEditRequest, references: tuple[ImageData, ...] = (),
) -> dict:  # fmt: skip
    assert model.post is not None and model.post_name is not None
    n = body.n
    page_count = clamp_pages(n) if n and n >= 2 else requested_page_count(body.prompt)
    await check_new_post(state.db, key, draws=model.kind == "post")
    run = await state.runner.start(
        topic=body.prompt,
        model=model.post_name,
        owner_key_id=key.key_id,
        page_count=page_count,
        aspect_ratio=aspect_ratio_for_size(body.size, model.post.aspect_ratio),
        references=references,
        outline_only=model.kind == "outline",
    )
    note(request, post_id=run.post_id)
    # the stored events: they arrive whichever process runs (or resumes) the job
    async for event in state.runner.follow(run.post_id, run.after_seq):
        if event.kind == "finished":
            if event.data.get("error"):
                error: GatewayError = flow_event(event).data["error"]
                raise error
            break
    loaded = await load_post(state.db, run.post_id)
    assert loaded is not None
    post, pages = loaded
    done = [p for p in pages if p.image_id]
    if model.kind == "post" and not done:
        reason = next((p.error for p in pages if p.error), "no page could be generated")
        raise UpstreamError(f"No page of the post could be generated: {reason}", retryable=False)
    rows = await state.images.get_many([p.image_id for p in done])
    fmt = body.response_format or "url"
    data = [
        await _item(state, request, rows[p.image_id], fmt, p.text)
        for p in done
        if p.image_id in rows
    ]
    return {"created": int(time.time()), "data": data, "post_id": post.id}


@router.post("/v1/images/generations")
async def generate_images(body: ImageGenerationRequest, request: Request, key: CurrentKey):
    state = state_of(request)
    model = _model_for(state, request, key, body.model)
    if model.kind == "image":
        return await _image_model_answer(state, request, key, model, body)
    return await _post_answer(state, request, key, model, body)


async def _upload(value: Any, param: str) -> ImageData:
    if not isinstance(value, UploadFile):
        raise InvalidRequest(f"'{param}' must be an image file", param=param)
    data = await value.read(MAX_REFERENCE_BYTES + 1)
    if len(data) > MAX_REFERENCE_BYTES:
        raise InvalidRequest(f"'{param}' is larger than 20 MB", param=param)
    try:
        return ImageData.from_bytes(data)
    except ValueError:
        raise InvalidRequest(
            f"'{param}' is not a PNG, JPEG, WebP or GIF image", param=param
        ) from None


async def _read_edit(
    request: Request, state: AppState
) -> tuple[dict, list[ImageData], ImageData | None]:
    """The fields, images and mask of an edit, from multipart or JSON."""
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        fields: dict[str, Any] = {}
        images: list[ImageData] = []
        mask = None
        async with request.form(max_files=MAX_REFERENCES + 1) as form:
            for name, value in form.multi_items():
                if name in ("image", "image[]"):
                    images.append(await _upload(value, name))
                elif name == "mask":
                    mask = await _upload(value, "mask")
                elif isinstance(value, UploadFile):
                    raise InvalidRequest(f"Unexpected file field '{name}'", param=name)
                else:
                    fields[name] = value
        return fields, images, mask
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
        loader = own_image_loader(state)
        external = state.settings.fetch_external_images
        entries = raw.pop("images", None)
        if not isinstance(entries, list) or not entries:
            raise InvalidRequest("'images' must be a list of {\"image_url\": ...}", param="images")
        images = []
        for i, entry in enumerate(entries):
            url = entry.get("image_url") if isinstance(entry, dict) else None
            if not isinstance(url, str) or not url:
                raise InvalidRequest(
                    "Each image needs an 'image_url' (file_id is not supported)",
                    param=f"images[{i}]",
                )
            param = f"images[{i}].image_url"
            images.append(
                await resolve_image_url(url, state.http, loader, param, allow_external=external)
            )
        mask = None
        if (mask_entry := raw.pop("mask", None)) is not None:
            url = mask_entry.get("image_url") if isinstance(mask_entry, dict) else None
            if not isinstance(url, str):
                raise InvalidRequest("'mask' must be {\"image_url\": ...}", param="mask")
            mask = await resolve_image_url(
                url, state.http, loader, "mask.image_url", allow_external=external
            )
        return raw, images, mask
    raise InvalidRequest(
        "Send the edit as multipart/form-data or application/json", code="unsupported_media_type"
    )


@router.post("/v1/images/edits")
async def edit_images(request: Request, key: CurrentKey):
    state = state_of(request)
    fields, images, mask = await _read_edit(request, state)
    try:
        body = ImageEditRequest.model_validate(fields)
    except ValidationError as exc:
        from fastapi.exceptions import RequestValidationError

        return validation_error_response(RequestValidationError(exc.errors()))
    if not images:
        raise InvalidRequest(
            "An edit needs at least one image ('image' or 'image[]')", param="image"
        )
    if len(images) > MAX_REFERENCES:
        raise InvalidRequest(f"At most {MAX_REFERENCES} images", param="image")
    model = _model_for(state, request, key, body.model)
    if model.kind == "image":
        return await _image_model_answer(state, request, key, model, body, tuple(images), mask)
    if mask is not None:
        raise InvalidRequest(f"Model '{model.name}' makes a post and takes no mask", param="mask")
    return await _post_answer(state, request, key, model, body, tuple(images))
