"""Stored images: bytes content-addressed on a blob store, one row per image id.

The MIME type, size and dimensions come from the bytes (Pillow reads only the
header; the pixels are never decoded here). The same bytes are stored once
however many image ids point at them: one `blobs` row per content says whether
the local copy exists and where its upload to the bucket stands.

Local disk is the cache; with `INKGATE_STORAGE=s3|r2` the bucket is the durable
copy. A read that misses locally downloads the object once (however many requests
ask at the same time) and caches it again. Reads record access times in memory;
they reach the database in batches (`flush_access`), never one write per GET.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import logging
import os
import secrets
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
from PIL import Image as PILImage
from PIL import ImageOps, UnidentifiedImageError
from sqlalchemy import Connection, insert, update
from sqlmodel import select

from storage.blobs import LocalBlobStore
from storage.config import StorageConfig
from storage.db import Database
from storage.tables import Blob, Image

log = logging.getLogger("inkgate.storage")

THUMB_MAX_PX = 320
HOT_ITEM_MAX = 8 * 1024 * 1024  # larger files are streamed from disk, not held in memory

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


def thumb_key(sha256: str) -> str:
    return f"thumbs/{sha256[:2]}/{sha256}.webp"


def make_thumbnail(data: bytes) -> bytes:
    """A WebP of at most 320 px on its longer side. Blocking: call from a thread."""
    with PILImage.open(io.BytesIO(data)) as im:
        im.draft("RGB", (THUMB_MAX_PX, THUMB_MAX_PX))  # JPEG: decode at a reduced scale
        im = ImageOps.exif_transpose(im)
        im.thumbnail((THUMB_MAX_PX, THUMB_MAX_PX), PILImage.Resampling.LANCZOS)
        if im.mode not in ("RGB", "RGBA"):
            im = im.convert("RGBA" if "A" in im.getbands() or "transparency" in im.info else "RGB")
        out = io.BytesIO()
        im.save(out, "WEBP", quality=80, method=4)
        return out.getvalue()


@dataclass(frozen=True)
class ImageRef:
    """What serving an image needs, cached in memory (image rows never change)."""

    id: str
    sha256: str
    mime: str
    ext: str
    key: str


class HotBytes:
    """The bytes of recently served files, least recently used out past `max_bytes`."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.size = 0
        self._items: OrderedDict[str, bytes] = OrderedDict()

    def get(self, key: str) -> bytes | None:
        data = self._items.get(key)
        if data is not None:
            self._items.move_to_end(key)
        return data

    def put(self, key: str, data: bytes) -> None:
        if len(data) > min(self.max_bytes, HOT_ITEM_MAX) or key in self._items:
            return
        self._items[key] = data
        self.size += len(data)
        while self.size > self.max_bytes:
            _, old = self._items.popitem(last=False)
            self.size -= len(old)

    def drop(self, key: str) -> None:
        data = self._items.pop(key, None)
        if data is not None:
            self.size -= len(data)


class _Lru(OrderedDict):
    def __init__(self, max_items: int) -> None:
        super().__init__()
        self.max_items = max_items

    def put(self, key: Any, value: Any) -> None:
        self[key] = value
        self.move_to_end(key)
        while len(self) > self.max_items:
            self.popitem(last=False)


class GroupCommit:
    """Writes submitted while a commit runs wait and go in the next one, together.

    `commit(items)` writes a batch in one transaction. When a batch of several fails,
    its items are committed one by one, so one bad row fails only its own caller.
    A caller that stops waiting (cancelled) does not stop its write.
    """

    def __init__(self, commit: Callable[[list[Any]], Awaitable[None]]) -> None:
        self._commit = commit
        self._pending: list[tuple[Any, asyncio.Future]] = []
        self._task: asyncio.Task | None = None

    async def submit(self, item: Any) -> None:
        future = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._drain())
            self._task.add_done_callback(self._writer_done)
        await future

    def _writer_done(self, task: asyncio.Task) -> None:
        if task.cancelled():  # e.g. at shutdown, perhaps before it ever ran
            for _, future in self._pending:
                future.cancel()
            self._pending = []

    async def _drain(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, []
            try:
                await self._commit([item for item, _ in batch])
            except asyncio.CancelledError:
                for _, future in batch:
                    future.cancel()
                raise
            except Exception as exc:
                if len(batch) == 1:
                    _settle(batch[0][1], exc)
                    continue
                for item, future in batch:
                    try:
                        await self._commit([item])
                    except Exception as one:
                        _settle(future, one)
                    else:
                        _settle(future, None)
            else:
                for _, future in batch:
                    _settle(future, None)


def _settle(future: asyncio.Future, error: BaseException | None) -> None:
    if future.done():  # its caller was cancelled
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)


class ImageStore:
    """Stores image bytes and their rows; finds them again by id; keeps the bucket in step."""

    # serving metadata is cached this long: another process's deletion shows after it
    REF_TTL = 60.0

    def __init__(
        self,
        db: Database,
        blobs: LocalBlobStore,
        remote: Any = None,
        config: StorageConfig | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.db = db
        self.blobs = blobs  # the local cache
        self.remote = remote  # storage.s3.S3BlobStore or None
        self.config = config or StorageConfig()
        self.clock = clock
        self.uploads_wanted = asyncio.Event()  # set when there is something new to upload
        self._accessed: set[str] = set()
        self._refs: _Lru = _Lru(20_000)
        self._fetching: dict[str, asyncio.Future] = {}
        self.hot = HotBytes(int(self.config.serve_cache_mb * 1024 * 1024))
        self._group: GroupCommit = GroupCommit(self._commit)
        self._upsert: Any = None

    @property
    def remote_enabled(self) -> bool:
        return self.remote is not None

    # -- writing -----------------------------------------------------------

    def _write(self, data: bytes) -> ImageInfo:
        info = inspect_image(data)
        key = blob_key(info.sha256, info.ext)
        if not self.blobs.exists(key):
            self.blobs.put(key, data)
        return info

    def _blob_values(self, info: ImageInfo) -> dict[str, Any]:
        now = self.clock()
        return {
            "key": blob_key(info.sha256, info.ext),
            "sha256": info.sha256,
            "ext": info.ext,
            "mime": info.mime,
            "size_bytes": info.size_bytes,
            "local": True,
            "remote_state": "pending" if self.remote_enabled else "none",
            "attempts": 0,
            "next_attempt_at": 0.0,
            "claimed_until": 0.0,
            "accessed_at": now,
            "created_at": now,
        }

    def _blob_upsert(self):
        """INSERT a content's blob row, or mark its local copy present again (executed
        with one parameter set per blob). Built once: building it took ~0.3 ms."""
        if self._upsert is None:
            self._upsert = self._build_blob_upsert()
        return self._upsert

    def _build_blob_upsert(self):
        if self.db.is_sqlite:
            from sqlalchemy.dialects.sqlite import insert as dialect_insert
        else:
            from sqlalchemy.dialects.postgresql import insert as dialect_insert
        stmt = dialect_insert(Blob.__table__)
        return stmt.on_conflict_do_update(
            index_elements=["key"],
            set_={"local": True, "accessed_at": stmt.excluded.accessed_at},
        )

    async def _save(self, info: ImageInfo, row: Image | None) -> None:
        """The blob row (and the image row, if any) in the next group commit."""
        await self._group.submit((self._blob_values(info), row.model_dump() if row else None))

    async def _commit(self, items: list[tuple[dict, dict | None]]) -> None:
        """One transaction for the rows of every put waiting at this moment.

        Under load this turns 32 transactions (each several hops to the database
        thread, queued behind SQLite's single writer) into one or two.
        """
        blobs = {values["key"]: values for values, _ in items}  # a content once per batch
        images = [row for _, row in items if row is not None]
        upsert = self._blob_upsert()

        def write(conn: Connection) -> None:
            conn.execute(upsert, list(blobs.values()))
            if images:
                conn.execute(insert(Image.__table__), images)

        await self.db.write_in_thread(write)

    def _row(self, info: ImageInfo, owner_key_id: str | None, post_id: str | None) -> Image:
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

    async def write(
        self, data: bytes, *, owner_key_id: str | None = None, post_id: str | None = None
    ) -> Image:
        """Store the bytes (once per content) and return a new, not yet saved row.

        The caller adds the row to its own transaction (the flow saves it together
        with the page that uses it); `put` does both steps.
        """
        info = await anyio.to_thread.run_sync(self._write, data)
        await self._save(info, None)
        self._new_blob()
        self.hot.put(blob_key(info.sha256, info.ext), data)
        return self._row(info, owner_key_id, post_id)

    async def put(
        self, data: bytes, *, owner_key_id: str | None = None, post_id: str | None = None
    ) -> Image:
        """Store bytes (once per content) and record a new image id for them."""
        info = await anyio.to_thread.run_sync(self._write, data)
        row = self._row(info, owner_key_id, post_id)
        # Core statements (the ORM's unit of work costs ~1 ms a row on this hot path),
        # committed together with the rows of concurrent puts
        await self._save(info, row)
        self._new_blob()
        # a new image is usually fetched soon (a chat client shows it): serve it from
        # memory, with no database lookup and no disk read (see LocalBlobStore)
        key = blob_key(info.sha256, info.ext)
        self.hot.put(key, data)
        ref = ImageRef(row.id, info.sha256, info.mime, info.ext, key)
        self._refs.put(row.id, (ref, time.monotonic() + self.REF_TTL))
        return row

    def _new_blob(self) -> None:
        if self.remote_enabled:
            self.uploads_wanted.set()

    # -- finding -----------------------------------------------------------

    async def get(self, image_id: str) -> Image | None:
        async with self.db.session() as session:
            return await session.get(Image, image_id)

    async def get_many(self, image_ids: list[str]) -> dict[str, Image]:
        if not image_ids:
            return {}
        async with self.db.session() as session:
            rows = await session.exec(select(Image).where(Image.id.in_(image_ids)))
            return {row.id: row for row in rows}

    async def ref(self, image_id: str) -> ImageRef | None:
        """Serving metadata of an image id, from memory when recently seen."""
        now = time.monotonic()
        hit = self._refs.get(image_id)
        if hit is not None and hit[1] > now:
            return hit[0]
        row = await self.get(image_id)
        if row is None:
            return None
        ref = ImageRef(row.id, row.sha256, row.mime, row.ext, blob_key(row.sha256, row.ext))
        self._refs.put(image_id, (ref, now + self.REF_TTL))
        return ref

    def cached_ref(self, image_id: str) -> ImageRef | None:
        """`ref` from memory only (None when not cached or stale)."""
        hit = self._refs.get(image_id)
        if hit is not None and hit[1] > time.monotonic():
            return hit[0]
        return None

    def forget(self, image_ids: list[str]) -> None:
        for image_id in image_ids:
            self._refs.pop(image_id, None)

    async def blob(self, key: str) -> Blob | None:
        async with self.db.session() as session:
            return await session.get(Blob, key)

    def path(self, image: Image | ImageRef) -> Path:
        return self.blobs.path(blob_key(image.sha256, image.ext))

    # -- reading -----------------------------------------------------------

    def touch(self, key: str) -> None:
        """Remember a read; `flush_access` writes the batch."""
        self._accessed.add(key)

    async def flush_access(self) -> int:
        """Write the access times gathered since the last flush (one statement a batch)."""
        if not self._accessed:
            return 0
        keys, self._accessed = sorted(self._accessed), set()
        now = self.clock()
        table = Blob.__table__
        async with self.db.writing(), self.db.engine.begin() as conn:
            for i in range(0, len(keys), 500):
                await conn.execute(
                    update(table).where(table.c.key.in_(keys[i : i + 500])).values(accessed_at=now)
                )
        return len(keys)

    async def local_path(self, key: str) -> Path | None:
        """The local file of a blob, downloading it from the bucket on a miss (once, however
        many ask at the same time). None when the bytes are nowhere."""
        path = self.blobs.path(key)
        if await anyio.to_thread.run_sync(path.is_file):
            self.touch(key)
            return path
        if not self.remote_enabled:
            return None
        return await self._single_flight(f"get:{key}", lambda: self._read_through(key))

    async def _single_flight(self, name: str, make: Callable[[], Awaitable[Any]]) -> Any:
        pending = self._fetching.get(name)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        self._fetching[name] = future
        try:
            result = await make()
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: waiters re-raise it
            raise
        else:
            future.set_result(result)
            return result
        finally:
            del self._fetching[name]

    async def _read_through(self, key: str) -> Path | None:
        blob = await self.blob(key)
        if blob is None or blob.remote_state != "uploaded":
            return None
        path = self.blobs.path(key)
        try:
            await anyio.to_thread.run_sync(self._download, key, path)
        except FileNotFoundError:
            log.warning("blob %s is marked uploaded but is missing from the bucket", key)
            return None
        async with self.db.writing(), self.db.engine.begin() as conn:
            await conn.execute(
                update(Blob.__table__)
                .where(Blob.__table__.c.key == key)
                .values(local=True, accessed_at=self.clock())
            )
        return path

    def _download(self, key: str, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".tmp-{secrets.token_hex(6)}-{path.name}")
        try:
            self.remote.get_to_file(key, tmp)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)

    async def read_key(self, key: str) -> bytes:
        path = await self.local_path(key)
        if path is None:
            raise FileNotFoundError(key)
        return await anyio.to_thread.run_sync(path.read_bytes)

    async def read(self, image: Image | ImageRef) -> bytes:
        return await self.read_key(blob_key(image.sha256, image.ext))

    async def thumbnail_path(self, image: Image | ImageRef) -> Path | None:
        """The image's thumbnail file, made (once) on first request."""
        path = self.blobs.path(thumb_key(image.sha256))
        if await anyio.to_thread.run_sync(path.is_file):
            return path
        return await self._single_flight(f"thumb:{image.sha256}", lambda: self._make_thumb(image))

    async def _make_thumb(self, image: Image | ImageRef) -> Path | None:
        source = await self.local_path(blob_key(image.sha256, image.ext))
        if source is None:
            return None

        def make() -> Path:
            thumb = make_thumbnail(source.read_bytes())
            self.blobs.put(thumb_key(image.sha256), thumb)
            return self.blobs.path(thumb_key(image.sha256))

        return await anyio.to_thread.run_sync(make)

    # -- removing (callers hold the decision; see storage.lifecycle) --------

    def remove_local_files(self, sha256: str, ext: str) -> None:
        """Delete a content's local copy and its thumbnail. Blocking."""
        self.hot.drop(blob_key(sha256, ext))
        self.hot.drop(thumb_key(sha256))
        self.blobs.delete(blob_key(sha256, ext))
        self.blobs.delete(thumb_key(sha256))

    # -- URLs --------------------------------------------------------------

    def direct_url(self, blob: Blob | None) -> str | None:
        """The bucket URL clients may use instead of the gateway's, per INKGATE_IMAGE_URLS:
        only once the object is uploaded."""
        if blob is None or not self.remote_enabled or blob.remote_state != "uploaded":
            return None
        if self.config.image_urls == "public":
            return self.remote.public_url(blob.key)
        if self.config.image_urls == "presigned":
            return self.remote.presigned_url(blob.key, self.config.presign_seconds)
        return None
