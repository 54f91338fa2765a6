"""What routes share: the app's services, the public form of a post, SSE keep-alive."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import httpx
from fastapi import Request
from sqlmodel import select

from gateway.auth import KeyService
from gateway.config import GatewayConfig
from gateway.flow.runner import FlowRunner
from gateway.flow.videos import VideoRunner
from gateway.settings import Settings
from gateway.urls import base_url, image_url, signed_download_url
from gateway.usage import UsageWriter
from providers.base import ImageData
from storage.blobs import LocalBlobStore
from storage.db import Database
from storage.images import ImageStore
from storage.service import Storage
from storage.tables import Image, Page, Post


@dataclass
class AppState:
    """The services of one app instance, made in its lifespan."""

    settings: Settings
    db: Database
    http: httpx.AsyncClient
    blobs: LocalBlobStore
    images: ImageStore
    storage: Storage
    keys: KeyService
    runner: FlowRunner
    config: Callable[[], GatewayConfig]
    usage: UsageWriter | None = None
    admin: Any = None  # admin.auth.AdminAuth (the dashboard's users and sessions)
    videos: VideoRunner | None = None  # video jobs (gateway/flow/videos.py)


def state_of(request: Request) -> AppState:
    return request.app.state.services


def own_image_loader(state: AppState):
    """Loads one of our own images by id (multi-turn references never go out to the web)."""

    async def load(image_id: str) -> ImageData | None:
        row = await state.images.get(image_id)
        if row is None:
            return None
        try:
            return ImageData(await state.images.read(row), row.mime)
        except FileNotFoundError:  # the row outlived its bytes: as good as gone
            return None

    return load


async def post_public(request: Request, state: AppState, post: Post, pages: list[Page]) -> dict:
    """A post as the API shows it: status, pages and absolute image URLs."""
    base = base_url(state.settings, request)
    async with state.db.session() as session:
        ids = [p.image_id for p in pages if p.image_id]
        rows = (await session.exec(select(Image).where(Image.id.in_(ids)))).all() if ids else []
    images = {row.id: row.ext for row in rows}
    return {
        "id": post.id,
        "object": "post",
        "model": post.model,
        "topic": post.topic,
        "status": post.status,
        "created": int(post.created_at.timestamp()),
        "updated": int(post.updated_at.timestamp()),
        "error": post.error,
        "download_url": signed_download_url(state.settings, base, post.id, post.owner_key_id),
        "copy": json.loads(post.copy_json) if post.copy_json else None,
        "pages": [
            {
                "index": page.page_index,
                "type": page.type,
                "text": page.text,
                "status": page.status,
                "image_url": image_url(base, page.image_id, images.get(page.image_id, "png"))
                if page.image_id
                else None,
                "error": page.error,
            }
            for page in pages
        ],
    }


KEEPALIVE = object()
_END = object()


async def with_keepalive(items: AsyncIterator[Any], seconds: float) -> AsyncIterator[Any]:
    """The items, with `KEEPALIVE` whenever `seconds` pass without one (an SSE comment
    then keeps proxies and clients from closing a quiet stream)."""
    queue: asyncio.Queue = asyncio.Queue()

    async def pump() -> None:
        try:
            async for item in items:
                queue.put_nowait(item)
            queue.put_nowait(_END)
        except Exception as exc:  # delivered to the consumer, which raises it
            queue.put_nowait(exc)

    task = asyncio.create_task(pump())
    try:
        while True:
            try:
                item = await asyncio.wait_for(queue.get(), seconds)
            except TimeoutError:
                yield KEEPALIVE
                continue
            if item is _END:
                return
            if isinstance(item, Exception):
                raise item
            yield item
    finally:
        task.cancel()
