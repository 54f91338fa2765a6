"""The result cache (per image model, off by default): an identical image request —
model, prompt, size, options and the hashes of its reference images — within the
model's `result_cache_seconds` reuses the stored images instead of calling upstream.
Purge with `DELETE /admin/api/cache/results`."""

from __future__ import annotations

import hashlib
import json
import time

from sqlalchemy import select

from providers.base import ImageRequest
from storage.images import ImageStore
from storage.tables import Image, ResultCacheEntry


def request_key(model: str, provider: str, request: ImageRequest) -> str:
    def digest(data: bytes) -> str:
        return hashlib.sha256(data).hexdigest()

    material = {
        "model": model,
        "provider": provider,
        "upstream_model": request.model,
        "prompt": request.prompt,
        "size": request.size,
        "aspect_ratio": request.aspect_ratio,
        "n": request.n,
        "quality": request.quality,
        "style": request.style,
        "references": [digest(r.data) for r in request.references],
        "mask": digest(request.mask.data) if request.mask else None,
    }
    return digest(json.dumps(material, sort_keys=True, ensure_ascii=False).encode())


async def lookup(images: ImageStore, key: str, ttl: float) -> list[Image] | None:
    """The images of a fresh entry whose images all still exist, in order."""
    async with images.db.session() as session:
        entry = (
            await session.execute(select(ResultCacheEntry).where(ResultCacheEntry.key == key))
        ).scalar_one_or_none()
    if entry is None or entry.created_at < time.time() - ttl:
        return None
    ids = json.loads(entry.image_ids)
    rows = await images.get_many(ids)
    if len(rows) != len(ids):
        return None
    return [rows[i] for i in ids]


async def remember(images: ImageStore, key: str, model: str, rows: list[Image]) -> None:
    table = ResultCacheEntry.__table__
    values = {
        "key": key,
        "model": model,
        "image_ids": json.dumps([r.id for r in rows]),
        "created_at": time.time(),
    }
    if images.db.is_sqlite:
        from sqlalchemy.dialects.sqlite import insert
    else:
        from sqlalchemy.dialects.postgresql import insert
    stmt = insert(table).values(values)
    stmt = stmt.on_conflict_do_update(
        index_elements=["key"],
        set_={"image_ids": values["image_ids"], "created_at": values["created_at"]},
    )
    async with images.db.writing(), images.db.engine.begin() as conn:
        await conn.execute(stmt)
