"""Storage as the app runs it: the image store, the upload worker, the lifecycle
scheduler and the access-time flusher, started and stopped together."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path

from storage.blobs import LocalBlobStore
from storage.config import StorageConfig
from storage.db import Database
from storage.images import ImageStore
from storage.lifecycle import Lifecycle
from storage.uploads import UploadQueue

log = logging.getLogger("inkgate.storage")

ACCESS_FLUSH_SECONDS = 30.0


def make_remote(config: StorageConfig):
    """The bucket's blob store, or None for local storage."""
    if not config.remote:
        return None
    from storage.s3 import S3BlobStore

    return S3BlobStore(
        bucket=config.s3_bucket,
        access_key_id=config.s3_access_key_id,
        secret_access_key=config.s3_secret_access_key,
        endpoint_url=config.s3_endpoint_url,
        region=config.s3_region,
        prefix=config.s3_prefix,
        public_base_url=config.s3_public_base_url,
        r2_account_id=config.r2_account_id,
    )


class Storage:
    def __init__(
        self,
        db: Database,
        root: Path,
        config: StorageConfig,
        *,
        remote=None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.images = ImageStore(
            db, LocalBlobStore(root), remote if remote is not None else make_remote(config),
            config, clock,
        )  # fmt: skip
        self.uploads = UploadQueue(self.images)
        self.lifecycle = Lifecycle(self.images)
        self._tasks: list[asyncio.Task] = []

    async def start(self) -> None:
        """Background work: uploads (with a bucket), the sweep, access-time batches."""
        if self.images.remote_enabled:
            queued = await self.uploads.enqueue_unsent()
            if queued:
                log.info("%d stored images queued for upload to the bucket", queued)
            self._tasks.append(asyncio.create_task(self.uploads.run(), name="uploads"))
        self._tasks.append(asyncio.create_task(self._flush_loop(), name="access-times"))
        if self.config.cache_sweep_seconds > 0:
            self._tasks.append(asyncio.create_task(self._sweep_loop(), name="cache-sweep"))

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(ACCESS_FLUSH_SECONDS)
            try:
                await self.images.flush_access()
            except Exception:
                log.exception("writing access times failed")

    async def _sweep_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.cache_sweep_seconds)
            try:
                await self.lifecycle.sweep()
            except Exception:
                log.exception("cache sweep failed")

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        with suppress(Exception):
            await self.images.flush_access()
