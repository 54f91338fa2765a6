"""Stored images: bytes content-addressed on a blob store, one row per image id.

The MIME type, size and dimensions come from the bytes (Pillow reads only the
header; the pixels are never decoded here). The same bytes are stored once
however many image ids point at them.
"""

from __future__ import annotations

import hashlib
import io
import secrets
from dataclasses import dataclass
from pathlib import Path

import anyio
from PIL import Image as PILImage
from PIL import UnidentifiedImageError
from sqlalchemy import insert
from sqlmodel import select

from storage.blobs import LocalBlobStore
from storage.db import Database
from storage.tables import Image

FORMATS = {
    "PNG": ("image/png", "png"),
    "JPEG": ("image/jpeg", "jpg"),
    "WEBP": ("image/webp", "webp"),
    "GIF": ("image/gif", "gif"),
}
EXT_ALIASES = {"jpeg": "jpg"}


class NotAnImage(ValueError):
    """The bytes are not an image format we store."""


@dataclass(frozen=True)
class ImageInfo:
    sha256: str
    mime: str
    ext: str
    width: int
    height: int
    size_bytes: int


def inspect_image(data: bytes) -> ImageInfo:
    """Format, dimensions and hash of image bytes. Blocking: call from a thread."""
    try:
        with PILImage.open(io.BytesIO(data)) as im:
            fmt = im.format
            width, height = im.size
    except (UnidentifiedImageError, OSError) as exc:
        raise NotAnImage("the data is not a readable image") from exc
    if fmt not in FORMATS:
        raise NotAnImage(f"unsupported image format {fmt}")
    mime, ext = FORMATS[fmt]
    return ImageInfo(hashlib.sha256(data).hexdigest(), mime, ext, width, height, len(data))


def blob_key(sha256: str, ext: str) -> str:
    return f"images/{sha256[:2]}/{sha256}.{ext}"


def new_image_id() -> str:
    return "img_" + secrets.token_urlsafe(16)


class ImageStore:
    """Stores image bytes and their rows; finds them again by id."""

    def __init__(self, db: Database, blobs: LocalBlobStore) -> None:
        self.db = db
        self.blobs = blobs

    def _write(self, data: bytes) -> ImageInfo:
        info = inspect_image(data)
        key = blob_key(info.sha256, info.ext)
        if not self.blobs.exists(key):
            self.blobs.put(key, data)
        return info

    async def write(
        self, data: bytes, *, owner_key_id: str | None = None, post_id: str | None = None
    ) -> Image:
        """Store the bytes (once per content) and return a new, not yet saved row.

        The caller adds the row to its own transaction (the flow saves it together
        with the page that uses it); `put` does both steps.
        """
        info = await anyio.to_thread.run_sync(self._write, data)
        return Image(
            id=new_image_id(),
            sha256=info.sha256,
            mime=info.mime,
            ext=info.ext,
            width=info.width,
            height=info.height,
            size_bytes=info.size_bytes,
            owner_key_id=owner_key_id,
            post_id=post_id,
        )

    async def put(
        self, data: bytes, *, owner_key_id: str | None = None, post_id: str | None = None
    ) -> Image:
        """Store bytes (once per content) and record a new image id for them."""
        row = await self.write(data, owner_key_id=owner_key_id, post_id=post_id)
        # a Core INSERT: the ORM's unit of work costs ~1 ms a row on this hot path
        async with self.db.writing(), self.db.engine.begin() as conn:
            await conn.execute(insert(Image.__table__), [row.model_dump()])
        return row

    async def get(self, image_id: str) -> Image | None:
        async with self.db.session() as session:
            return await session.get(Image, image_id)

    async def get_many(self, image_ids: list[str]) -> dict[str, Image]:
        if not image_ids:
            return {}
        async with self.db.session() as session:
            rows = await session.exec(select(Image).where(Image.id.in_(image_ids)))
            return {row.id: row for row in rows}

    def path(self, image: Image) -> Path:
        return self.blobs.path(blob_key(image.sha256, image.ext))

    async def read(self, image: Image) -> bytes:
        return await anyio.to_thread.run_sync(self.blobs.get, blob_key(image.sha256, image.ext))
