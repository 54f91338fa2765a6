"""`POST /v1/images/generations`: a post's pages (model `redink`) or a plain image model."""

from __future__ import annotations

import time

import anyio
import pybase64
from fastapi import APIRouter, Request

from gateway.auth import CurrentKey
from gateway.errors import GatewayError, UpstreamError
from gateway.flow.outline import clamp_pages, requested_page_count
from gateway.flow.runner import load_post
from gateway.models import aspect_ratio_for_size, resolve_model
from gateway.routes.common import state_of
from gateway.schemas import ImageGenerationRequest
from gateway.urls import base_url, image_url
from providers.base import ImageRequest
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


@router.post("/v1/images/generations")
async def generate_images(body: ImageGenerationRequest, request: Request, key: CurrentKey):
    state = state_of(request)
    config = state.config()
    model = resolve_model(config, body.model or next(iter(config.post_models), "redink"))
    fmt = body.response_format or "url"
    created = int(time.time())

    if model.kind == "image":
        assert model.image is not None
        explicit = body.size if body.size and body.size != "auto" else None
        images = await state.runner.generate_image(
            model.image.provider,
            ImageRequest(
                prompt=body.prompt,
                aspect_ratio=aspect_ratio_for_size(body.size, model.image.aspect_ratio),
                size=explicit,
                n=body.n or 1,
                model=model.image.model,
            ),
        )
        rows = [await state.images.put(img.data, owner_key_id=key.key_id) for img in images]
        data = [await _item(state, request, row, fmt, None) for row in rows]
        return {"created": created, "data": data}

    assert model.post is not None and model.post_name is not None
    page_count = (
        clamp_pages(body.n) if body.n and body.n >= 2 else requested_page_count(body.prompt)
    )
    run = await state.runner.start(
        topic=body.prompt,
        model=model.post_name,
        owner_key_id=key.key_id,
        page_count=page_count,
        aspect_ratio=aspect_ratio_for_size(body.size, model.post.aspect_ratio),
        outline_only=model.kind == "outline",
    )
    while True:
        event = await run.events.get()
        if event.kind == "error":
            error: GatewayError = event.data["error"]
            raise error
        if event.kind == "finished":
            break
    loaded = await load_post(state.db, run.post_id)
    assert loaded is not None
    post, pages = loaded
    done = [p for p in pages if p.image_id]
    if model.kind == "post" and not done:
        reason = next((p.error for p in pages if p.error), "no page could be generated")
        raise UpstreamError(f"No page of the post could be generated: {reason}", retryable=False)
    rows = await state.images.get_many([p.image_id for p in done])
    data = [
        await _item(state, request, rows[p.image_id], fmt, p.text)
        for p in done
        if p.image_id in rows
    ]
    return {"created": created, "data": data, "post_id": post.id}
