"""The cache lifecycle and the operator's actions on stored images.

`sweep` runs inside the app every `INKGATE_CACHE_SWEEP_SECONDS` and from
`inkgate cache sweep`:

1. local TTL — a local copy not read for `INKGATE_CACHE_TTL_HOURS` is deleted;
2. size cap — past `INKGATE_CACHE_MAX_MB`, least recently read local copies go first;
3. retention — image records older than `INKGATE_RETENTION_DAYS` and not read for that
   long are deleted, with their bytes once no record uses them (the bucket's copy too
   with `INKGATE_RETENTION_DELETE_REMOTE`);
4. orphans — local files without a row (older than an hour: a write in progress has
   its file before its row) and rows whose bytes are gone everywhere.

Rules 1 and 2 only ever delete a local copy whose remote copy is `uploaded`: with
local storage, or before the upload, the local copy is the image.

The four settings can be overridden from the dashboard (`set_overrides`): the values are
a JSON object in `app_settings` (`cache_settings`), read at the start of every sweep (one
SELECT), so every replica uses them; they win over the environment and `inkgate.yaml`.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import anyio
from sqlalchemy import and_, delete, func, select, update
from sqlalchemy.exc import IntegrityError

from storage.config import RUNTIME_OPTIONS, StorageConfig, StorageConfigError
from storage.images import ImageStore, blob_key
from storage.tables import AppSetting, Blob, Image, ResultCacheEntry

log = logging.getLogger("inkgate.lifecycle")

ORPHAN_GRACE_SECONDS = 3600.0
SORTS = {"created": Image.created_at, "accessed": Blob.accessed_at, "size": Image.size_bytes}
STATES = ("local", "remote", "pending", "uploading", "uploaded", "failed", "none", "removed")
OVERRIDES_SETTING = "cache_settings"  # the app_settings row with the dashboard's values


@dataclass
class SweepReport:
    ttl_evicted: int = 0
    cap_evicted: int = 0
    retention_deleted_images: int = 0
    deleted_blobs: int = 0
    orphan_files: int = 0
    lost_images: int = 0
    freed_bytes: int = 0
    details: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


class Lifecycle:
    def __init__(self, images: ImageStore) -> None:
        self.images = images
        self.db = images.db
        self.config = images.config  # environment > inkgate.yaml > defaults, read at start
        self.effective = self.config  # with the dashboard's overrides, as of the last refresh
        self.t = Blob.__table__

    # -- the dashboard's overrides ----------------------------------------------

    async def overrides(self) -> dict:
        """The dashboard's values of the runtime options (one SELECT)."""
        async with self.db.session() as session:
            row = await session.get(AppSetting, OVERRIDES_SETTING)
        try:
            stored = json.loads(row.value) if row else {}
        except ValueError:
            stored = {}
        if not isinstance(stored, dict):
            return {}
        return {k: v for k, v in stored.items() if k in RUNTIME_OPTIONS and v is not None}

    async def refresh(self) -> StorageConfig:
        """Re-read the overrides (another replica may have changed them): the config
        in effect from now on."""
        overrides = await self.overrides()
        try:
            self.effective = self.config.with_overrides(overrides)
        except StorageConfigError as exc:  # written by hand: the API validates
            log.warning("cache settings from the dashboard ignored: %s", exc)
            self.effective = self.config
        return self.effective

    async def set_overrides(self, changes: dict) -> StorageConfig:
        """Merge `changes` into the stored overrides (`None` removes one: the environment,
        file or default applies again). Raises StorageConfigError on an invalid value."""
        for attempt in range(2):
            try:
                async with self.db.writing(), self.db.session() as session:
                    row = (
                        await session.execute(
                            select(AppSetting)
                            .where(AppSetting.name == OVERRIDES_SETTING)
                            .with_for_update()
                        )
                    ).scalar_one_or_none()
                    try:
                        current = json.loads(row.value) if row else {}
                    except ValueError:
                        current = {}
                    if not isinstance(current, dict):
                        current = {}
                    current = {k: v for k, v in current.items() if k in RUNTIME_OPTIONS}
                    for name, value in changes.items():
                        if name not in RUNTIME_OPTIONS:
                            raise StorageConfigError(f"{name} cannot be changed at runtime")
                        if value is None:
                            current.pop(name, None)
                        else:
                            current[name] = value
                    self.config.with_overrides(current)  # raises before anything is stored
                    if row is None:
                        row = AppSetting(name=OVERRIDES_SETTING, value="{}")
                    row.value, row.updated_at = json.dumps(current, sort_keys=True), time.time()
                    session.add(row)
                    await session.commit()
                break
            except IntegrityError:  # another replica stored the first override meanwhile
                if attempt:
                    raise
        return await self.refresh()

    # -- the sweep -----------------------------------------------------------

    async def sweep(self) -> SweepReport:
        report = SweepReport()
        config = await self.refresh()  # the dashboard's values, as any replica set them
        await self.images.flush_access()  # reads so far count
        now = self.images.clock()
        if config.cache_ttl_hours > 0:
            cutoff = now - config.cache_ttl_hours * 3600
            rows = await self._evictable(self.t.c.accessed_at < cutoff)
            for key, sha, ext, size in rows:
                if await self._evict(key, sha, ext):
                    report.ttl_evicted += 1
                    report.freed_bytes += size
        if config.cache_max_mb > 0:
            cap = int(config.cache_max_mb * 1024 * 1024)
            total = await self._local_bytes()
            if total > cap:
                for key, sha, ext, size in await self._evictable(None):
                    if total <= cap:
                        break
                    if await self._evict(key, sha, ext):
                        report.cap_evicted += 1
                        report.freed_bytes += size
                        total -= size
        if config.retention_days > 0:
            cutoff = now - config.retention_days * 86400
            report.retention_deleted_images = await self._expire_records(cutoff)
        report.deleted_blobs, freed = await self.delete_unreferenced_blobs(
            remote=config.retention_delete_remote, idle_before=now - ORPHAN_GRACE_SECONDS
        )
        report.freed_bytes += freed
        report.orphan_files, report.lost_images = await self._orphans(now)
        log.info("cache sweep: %s", report.as_dict())
        return report

    async def _evictable(self, condition) -> list[tuple[str, str, str, int]]:
        """Local copies that may go (uploaded), least recently read first."""
        t = self.t
        where = [t.c.local.is_(True), t.c.remote_state == "uploaded"]
        if condition is not None:
            where.append(condition)
        async with self.db.session() as session:
            rows = await session.execute(
                select(t.c.key, t.c.sha256, t.c.ext, t.c.size_bytes)
                .where(*where)
                .order_by(t.c.accessed_at)
            )
            return [tuple(r) for r in rows]

    async def _local_bytes(self) -> int:
        async with self.db.session() as session:
            total = await session.execute(
                select(func.coalesce(func.sum(self.t.c.size_bytes), 0)).where(
                    self.t.c.local.is_(True)
                )
            )
            return int(total.scalar_one())

    async def _evict(self, key: str, sha: str, ext: str) -> bool:
        """Drop one local copy — only while its remote copy is still `uploaded`."""
        t = self.t
        async with self.db.writing(), self.db.engine.begin() as conn:
            result = await conn.execute(
                update(t)
                .where(t.c.key == key, t.c.remote_state == "uploaded", t.c.local.is_(True))
                .values(local=False)
            )
        if result.rowcount != 1:
            return False
        await anyio.to_thread.run_sync(self.images.remove_local_files, sha, ext)
        return True

    async def _expire_records(self, cutoff: float) -> int:
        created_cutoff = datetime.fromtimestamp(cutoff, UTC)
        async with self.db.session() as session:
            ids = (
                (
                    await session.execute(
                        select(Image.id)
                        .join(Blob, and_(Blob.sha256 == Image.sha256, Blob.ext == Image.ext))
                        .where(Image.created_at < created_cutoff, Blob.accessed_at < cutoff)
                    )
                )
                .scalars()
                .all()
            )
        await self._delete_image_rows(list(ids))
        return len(ids)

    async def _delete_image_rows(self, ids: list[str]) -> None:
        if not ids:
            return
        async with self.db.writing(), self.db.engine.begin() as conn:
            for i in range(0, len(ids), 500):
                await conn.execute(
                    delete(Image.__table__).where(Image.__table__.c.id.in_(ids[i : i + 500]))
                )
            # answers that used them can no longer be replayed
            entries = (
                await conn.execute(select(ResultCacheEntry.key, ResultCacheEntry.image_ids))
            ).all()
            gone = set(ids)
            stale = [k for k, image_ids in entries if gone & set(json.loads(image_ids))]
            if stale:
                await conn.execute(
                    delete(ResultCacheEntry.__table__).where(ResultCacheEntry.key.in_(stale))
                )
        self.images.forget(ids)

    async def delete_unreferenced_blobs(
        self, *, remote: bool, idle_before: float | None = None, keys: list[str] | None = None
    ) -> tuple[int, int]:
        """Blobs no image row uses: local file, thumbnail, row — and the bucket's copy when
        `remote`. Returns (count, bytes).

        A write stores its blob row before the image row that uses it, so the sweep only
        takes blobs not touched since `idle_before`."""
        used = select(Image.id).where(Image.sha256 == Blob.sha256, Image.ext == Blob.ext)
        where = [~used.exists()]
        if idle_before is not None:
            where.append(Blob.accessed_at < idle_before)
        if keys is not None:
            where.append(Blob.key.in_(keys))
        async with self.db.session() as session:
            rows = (
                await session.execute(
                    select(
                        Blob.key,
                        Blob.sha256,
                        Blob.ext,
                        Blob.size_bytes,
                        Blob.local,
                        Blob.remote_state,
                    ).where(*where)
                )  # fmt: skip
            ).all()
        freed = 0
        for key, sha, ext, size, local, state in rows:
            await self._drop_blob(key, sha, ext, remote=remote and state != "removed")
            freed += size if local else 0
        return len(rows), freed

    async def _drop_blob(self, key: str, sha: str, ext: str, *, remote: bool) -> None:
        if remote and self.images.remote_enabled:
            await anyio.to_thread.run_sync(self.images.remote.delete, key)
        await anyio.to_thread.run_sync(self.images.remove_local_files, sha, ext)
        async with self.db.writing(), self.db.engine.begin() as conn:
            await conn.execute(delete(self.t).where(self.t.c.key == key))

    async def _orphans(self, now: float) -> tuple[int, int]:
        async with self.db.session() as session:
            rows = (
                await session.execute(
                    select(
                        self.t.c.key,
                        self.t.c.sha256,
                        self.t.c.ext,
                        self.t.c.local,
                        self.t.c.remote_state,
                    )
                )  # fmt: skip
            ).all()
        known = {r[0] for r in rows}
        known_thumbs = {f"thumbs/{r[1][:2]}/{r[1]}.webp" for r in rows}
        root = self.images.blobs.root

        def walk() -> tuple[int, set[str]]:
            removed = 0
            present: set[str] = set()
            for top in ("images", "thumbs"):
                for dirpath, _dirs, files in os.walk(root / top):
                    for name in files:
                        path = Path(dirpath) / name
                        key = path.relative_to(root).as_posix()
                        if key in known:
                            present.add(key)
                            continue
                        if key in known_thumbs:
                            continue
                        try:
                            old = path.stat().st_mtime < now - ORPHAN_GRACE_SECONDS
                        except FileNotFoundError:
                            continue
                        if old:
                            path.unlink(missing_ok=True)
                            removed += 1
            return removed, present

        removed, present = await anyio.to_thread.run_sync(walk)
        lost = 0
        for key, sha, ext, local, state in rows:
            if not local or key in present:
                continue
            if state == "uploaded":  # the bucket still has it: only the flag was stale
                async with self.db.writing(), self.db.engine.begin() as conn:
                    await conn.execute(
                        update(self.t).where(self.t.c.key == key).values(local=False)
                    )
                continue
            # the only copy is gone: its records cannot be served any more
            async with self.db.session() as session:
                ids = (
                    (
                        await session.execute(
                            select(Image.id).where(Image.sha256 == sha, Image.ext == ext)
                        )
                    )
                    .scalars()
                    .all()
                )
            log.warning("bytes of %s are gone (%d image records removed)", key, len(ids))
            await self._delete_image_rows(list(ids))
            await self._drop_blob(key, sha, ext, remote=False)
            lost += len(ids)
        return removed, lost

    # -- the operator's actions -----------------------------------------------

    async def stats(self) -> dict:
        t = self.t
        config = await self.refresh()

        def count_bytes(condition):
            return select(func.count(), func.coalesce(func.sum(t.c.size_bytes), 0)).where(condition)

        async with self.db.session() as session:
            out: dict = {}
            for name, condition in {
                "local": t.c.local.is_(True),
                "remote": t.c.remote_state == "uploaded",
                "pending": t.c.remote_state.in_(("pending", "uploading")),
                "failed": t.c.remote_state == "failed",
            }.items():
                count, size = (await session.execute(count_bytes(condition))).one()
                out[name] = {"count": int(count), "bytes": int(size)}
            out["images"] = int(
                (await session.execute(select(func.count()).select_from(Image))).scalar_one()
            )
            out["contents"] = int(
                (await session.execute(select(func.count()).select_from(Blob))).scalar_one()
            )
            out["result_cache_entries"] = int(
                (
                    await session.execute(select(func.count()).select_from(ResultCacheEntry))
                ).scalar_one()
            )
        out["storage"] = config.storage
        out["settings"] = {
            "cache_ttl_hours": config.cache_ttl_hours,
            "cache_max_mb": config.cache_max_mb,
            "retention_days": config.retention_days,
            "retention_delete_remote": config.retention_delete_remote,
            "image_urls": config.image_urls,
        }
        return out

    async def clear_local(self) -> tuple[int, int]:
        """Delete every local copy that is safely in the bucket. Rows stay."""
        count = freed = 0
        for key, sha, ext, size in await self._evictable(None):
            if await self._evict(key, sha, ext):
                count += 1
                freed += size
        return count, freed

    async def list_images(
        self, *, page: int, per_page: int, sort: str, order: str, state: str | None
    ) -> tuple[list[tuple[Image, Blob | None]], int]:
        where = []
        if state == "local":
            where.append(Blob.local.is_(True))
        elif state == "remote":
            where.append(Blob.remote_state == "uploaded")
        elif state:
            where.append(Blob.remote_state == state)
        column = SORTS[sort]
        ordering = column.desc() if order == "desc" else column.asc()
        join = and_(Blob.sha256 == Image.sha256, Blob.ext == Image.ext)
        async with self.db.session() as session:
            total = (
                await session.execute(
                    select(func.count()).select_from(Image).outerjoin(Blob, join).where(*where)
                )
            ).scalar_one()
            rows = (
                await session.execute(
                    select(Image, Blob)
                    .outerjoin(Blob, join)
                    .where(*where)
                    .order_by(ordering, Image.id)
                    .offset((page - 1) * per_page)
                    .limit(per_page)
                )
            ).all()
        return [(r[0], r[1]) for r in rows], int(total)

    async def delete_images(self, ids: list[str], scope: str) -> dict:
        """scope `local`: drop local copies that are in the bucket; `remote`: drop the
        bucket's copies of images that are on local disk; `all`: delete the images."""
        async with self.db.session() as session:
            rows = (
                await session.execute(
                    select(Image.id, Image.sha256, Image.ext).where(Image.id.in_(ids))
                )
            ).all()
        found = {r[0]: (r[1], r[2]) for r in rows}
        result: dict = {
            "deleted": [],
            "skipped": [],
            "not_found": [i for i in ids if i not in found],
        }
        if scope == "all":
            await self._delete_image_rows(list(found))
            result["deleted"] = list(found)
            keys = sorted({blob_key(sha, ext) for sha, ext in found.values()})
            await self.delete_unreferenced_blobs(remote=True, keys=keys)
            return result
        for image_id, (sha, ext) in found.items():
            key = blob_key(sha, ext)
            blob = await self.images.blob(key)
            if blob is None:
                result["skipped"].append({"id": image_id, "reason": "no stored bytes"})
            elif scope == "local":
                if blob.local and blob.remote_state == "uploaded":
                    await self._evict(key, sha, ext)
                    result["deleted"].append(image_id)
                else:
                    reason = "not in the bucket: the local copy is the only one"
                    result["skipped"].append(
                        {"id": image_id, "reason": reason if blob.local else "no local copy"}
                    )
            else:  # remote
                if not self.images.remote_enabled or blob.remote_state in ("none", "removed"):
                    result["skipped"].append({"id": image_id, "reason": "not in the bucket"})
                elif not blob.local:
                    reason = "no local copy: the bucket's copy is the only one"
                    result["skipped"].append({"id": image_id, "reason": reason})
                else:
                    await anyio.to_thread.run_sync(self.images.remote.delete, key)
                    async with self.db.writing(), self.db.engine.begin() as conn:
                        await conn.execute(
                            update(self.t).where(self.t.c.key == key)
                            .values(remote_state="removed", claimed_by=None)
                        )  # fmt: skip
                    result["deleted"].append(image_id)
        return result

    async def purge_results(self, model: str | None = None) -> int:
        table = ResultCacheEntry.__table__
        stmt = delete(table)
        if model:
            stmt = stmt.where(table.c.model == model)
        async with self.db.writing(), self.db.engine.begin() as conn:
            return (await conn.execute(stmt)).rowcount
