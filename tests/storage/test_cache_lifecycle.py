"""The bucket upload queue, read-through, thumbnails and every lifecycle rule, against a
real S3 server (moto over HTTP) and a controllable clock, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import io
import os
import time
from pathlib import Path

import pytest
from PIL import Image as PILImage
from sqlalchemy import select

from storage.config import StorageConfig
from storage.db import Database
from storage.images import blob_key, thumb_key
from storage.s3 import S3BlobStore, StorageUnavailable
from storage.service import Storage
from storage.tables import Blob, Image
from storage.uploads import UploadQueue
from tests.s3_server import DUMMY_KEY

HOUR = 3600.0


def png(seed: int, size: tuple[int, int] = (640, 480)) -> bytes:
    im = PILImage.new("RGB", size, ((seed * 47) % 256, (seed * 91) % 256, (seed * 13) % 256))
    im.putpixel((seed % size[0], 0), (1, 2, 3))
    out = io.BytesIO()
    im.save(out, "PNG")
    return out.getvalue()


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
async def db(database_url: str):
    database = Database(database_url)
    await database.migrate()
    yield database
    await database.dispose()


@pytest.fixture
def clock() -> Clock:
    return Clock()


def make_storage(db, tmp_path, clock, s3_bucket=None, **options) -> Storage:
    remote = None
    if s3_bucket is not None:
        server, bucket = s3_bucket
        remote = S3BlobStore(
            bucket=bucket,
            access_key_id=DUMMY_KEY,
            secret_access_key=DUMMY_KEY,
            endpoint_url=server.endpoint_url,
            prefix="ink",
        )
        options.setdefault("storage", "s3")
    config = StorageConfig(**options)
    return Storage(db, tmp_path / "blobs", config, remote=remote, clock=clock)


async def blob_of(storage: Storage, image) -> Blob:
    blob = await storage.images.blob(blob_key(image.sha256, image.ext))
    assert blob is not None
    return blob


def bucket_keys(s3_bucket) -> set[str]:
    server, bucket = s3_bucket
    listing = server.client().list_objects_v2(Bucket=bucket)
    return {o["Key"] for o in listing.get("Contents", [])}


# -- uploads --------------------------------------------------------------------


async def test_a_stored_image_is_uploaded_by_the_queue(db, tmp_path, clock, s3_bucket) -> None:
    storage = make_storage(db, tmp_path, clock, s3_bucket)
    data = png(1)
    image = await storage.images.put(data)
    assert (await blob_of(storage, image)).remote_state == "pending"
    assert storage.images.uploads_wanted.is_set()

    assert await storage.uploads.process_due() == 1
    blob = await blob_of(storage, image)
    assert blob.remote_state == "uploaded" and blob.attempts == 1 and blob.last_error is None
    server, bucket = s3_bucket
    body = server.client().get_object(Bucket=bucket, Key="ink/" + blob.key)["Body"].read()
    assert body == data
    assert await storage.uploads.process_due() == 0  # nothing twice


async def test_an_outage_keeps_serving_locally_and_uploads_when_back(
    db, tmp_path, clock, s3_bucket
) -> None:
    server, bucket = s3_bucket
    storage = make_storage(db, tmp_path, clock, s3_bucket, cache_ttl_hours=1)
    server.stop()
    try:
        image = await storage.images.put(png(2))
        assert await storage.uploads.process_due() == 0
        blob = await blob_of(storage, image)
        assert blob.remote_state == "pending" and blob.attempts == 1
        assert "unavailable" in blob.last_error and blob.next_attempt_at > clock.now
        # served from local disk meanwhile, and never evicted, however old
        clock.advance(100 * HOUR)
        report = await storage.lifecycle.sweep()
        assert report.ttl_evicted == 0
        assert await storage.images.local_path(blob.key) is not None
        # an outage never gives up, whatever INKGATE_UPLOAD_MAX_ATTEMPTS says
        for _ in range(12):
            await storage.uploads.process_due()
            clock.advance(HOUR)
        assert (await blob_of(storage, image)).remote_state == "pending"
    finally:
        server.start()
        server.create_bucket(bucket)
    assert await storage.uploads.process_due() == 1
    assert (await blob_of(storage, image)).remote_state == "uploaded"
    assert "ink/" + blob.key in bucket_keys(s3_bucket)


async def test_uploads_survive_a_restart_and_a_dead_workers_claim_expires(
    db, tmp_path, clock, s3_bucket
) -> None:
    first = make_storage(db, tmp_path, clock, s3_bucket)
    image = await first.images.put(png(3))
    key = blob_key(image.sha256, image.ext)
    assert await first.uploads._claim(key, clock.now)  # and then the process died

    restarted = make_storage(db, tmp_path, clock, s3_bucket)
    assert await restarted.uploads.process_due() == 0  # the claim still holds
    clock.advance(301)
    assert await restarted.uploads.process_due() == 1
    assert (await blob_of(restarted, image)).remote_state == "uploaded"


async def test_two_processes_never_upload_the_same_image_twice(
    db, tmp_path, clock, s3_bucket
) -> None:
    storages = [make_storage(db, tmp_path, clock, s3_bucket) for _ in range(2)]
    for i in range(6):
        await storages[0].images.put(png(10 + i))
    uploads: list[str] = []
    for storage in storages:
        remote = storage.images.remote
        original = remote.put_file

        def counting(key, path, original=original):
            uploads.append(key)
            time.sleep(0.02)
            return original(key, path)

        remote.put_file = counting
    done = await asyncio.gather(*(s.uploads.process_due() for s in storages))
    assert sum(done) == 6
    assert sorted(uploads) == sorted(set(uploads)) and len(uploads) == 6


async def test_errors_other_than_an_outage_end_in_failed_and_can_be_retried(
    db, tmp_path, clock, s3_bucket
) -> None:
    storage = make_storage(db, tmp_path, clock, s3_bucket, upload_max_attempts=3)
    image = await storage.images.put(png(4))
    real = storage.images.remote.put_file

    def denied(key, path):
        raise PermissionError("AccessDenied")

    storage.images.remote.put_file = denied
    for _ in range(3):
        await storage.uploads.process_due()
        clock.advance(2 * HOUR)
    blob = await blob_of(storage, image)
    assert blob.remote_state == "failed" and blob.attempts == 3
    assert "AccessDenied" in blob.last_error
    assert (await storage.lifecycle.stats())["failed"]["count"] == 1

    storage.images.remote.put_file = real
    assert await storage.uploads.retry_failed() == 1
    assert await storage.uploads.process_due() == 1
    assert (await blob_of(storage, image)).remote_state == "uploaded"


async def test_images_stored_before_the_bucket_was_configured_are_queued(
    db, tmp_path, clock, s3_bucket
) -> None:
    local_only = make_storage(db, tmp_path, clock)
    image = await local_only.images.put(png(5))
    assert (await blob_of(local_only, image)).remote_state == "none"

    with_bucket = make_storage(db, tmp_path, clock, s3_bucket)
    await with_bucket.start()
    try:
        for _ in range(100):
            if (await blob_of(with_bucket, image)).remote_state == "uploaded":
                break
            await asyncio.sleep(0.05)
        assert (await blob_of(with_bucket, image)).remote_state == "uploaded"
    finally:
        await with_bucket.stop()


async def test_the_worker_running_in_the_app_uploads_without_being_asked(
    db, tmp_path, clock, s3_bucket
) -> None:
    storage = make_storage(db, tmp_path, clock, s3_bucket)
    await storage.start()
    try:
        image = await storage.images.put(png(6))
        for _ in range(100):
            if (await blob_of(storage, image)).remote_state == "uploaded":
                break
            await asyncio.sleep(0.05)
        assert (await blob_of(storage, image)).remote_state == "uploaded"
    finally:
        await storage.stop()


# -- read-through and thumbnails ----------------------------------------------


async def test_a_local_miss_reads_through_once_however_many_ask(
    db, tmp_path, clock, s3_bucket
) -> None:
    storage = make_storage(db, tmp_path, clock, s3_bucket)
    data = png(7)
    image = await storage.images.put(data)
    await storage.uploads.process_due()
    assert (await storage.lifecycle.clear_local()) == (1, len(data))
    key = blob_key(image.sha256, image.ext)
    assert not storage.images.blobs.path(key).exists()

    downloads: list[str] = []
    original = storage.images.remote.get_to_file

    def counting(k, path):
        downloads.append(k)
        time.sleep(0.1)
        return original(k, path)

    storage.images.remote.get_to_file = counting
    paths = await asyncio.gather(*(storage.images.local_path(key) for _ in range(25)))
    assert downloads == [key]
    assert len({str(p) for p in paths}) == 1 and paths[0].read_bytes() == data
    blob = await blob_of(storage, image)
    assert blob.local and blob.remote_state == "uploaded"


async def test_a_read_through_failure_reaches_every_waiter(db, tmp_path, clock, s3_bucket) -> None:
    server, bucket = s3_bucket
    storage = make_storage(db, tmp_path, clock, s3_bucket)
    image = await storage.images.put(png(8))
    await storage.uploads.process_due()
    await storage.lifecycle.clear_local()
    server.stop()
    try:
        key = blob_key(image.sha256, image.ext)
        results = await asyncio.gather(
            *(storage.images.local_path(key) for _ in range(5)), return_exceptions=True
        )
        assert all(isinstance(r, StorageUnavailable) for r in results)
    finally:
        server.start()
        server.create_bucket(bucket)


async def test_thumbnails_are_small_webp_made_once_and_removed_with_the_image(
    db, tmp_path, clock
) -> None:
    storage = make_storage(db, tmp_path, clock)
    image = await storage.images.put(png(9, (1080, 1440)))
    path = await storage.images.thumbnail_path(image)
    with PILImage.open(path) as thumb:
        assert thumb.format == "WEBP" and max(thumb.size) == 320
        assert thumb.size == (240, 320)
    mtime = path.stat().st_mtime_ns
    assert (await storage.images.thumbnail_path(image)).stat().st_mtime_ns == mtime

    result = await storage.lifecycle.delete_images([image.id], "all")
    assert result["deleted"] == [image.id]
    assert not path.exists()
    assert not storage.images.blobs.path(blob_key(image.sha256, image.ext)).exists()


# -- lifecycle rules ------------------------------------------------------------


async def uploaded(storage: Storage, seed: int, size=(640, 480)):
    image = await storage.images.put(png(seed, size))
    await storage.uploads.process_due()
    return image


async def test_local_ttl_slides_on_access_and_only_evicts_uploaded_copies(
    db, tmp_path, clock, s3_bucket
) -> None:
    storage = make_storage(db, tmp_path, clock, s3_bucket, cache_ttl_hours=72)
    read, idle = await uploaded(storage, 20), await uploaded(storage, 21)
    storage.images.remote.put_file = lambda k, p: (_ for _ in ()).throw(PermissionError("no"))
    not_uploaded = await storage.images.put(png(22))
    await storage.uploads.process_due()

    clock.advance(48 * HOUR)
    await storage.images.read(read)  # sliding: read 48 h in
    clock.advance(30 * HOUR)  # 78 h after writing, 30 h after the read
    report = await storage.lifecycle.sweep()
    assert report.ttl_evicted == 1
    assert not (await blob_of(storage, idle)).local
    assert (await blob_of(storage, read)).local
    assert (await blob_of(storage, not_uploaded)).local  # its only copy: never evicted
    assert storage.images.path(not_uploaded).exists()
    assert not storage.images.path(idle).exists()
    # evicted, still served: read through from the bucket
    assert await storage.images.read(idle) == png(21)


async def test_local_storage_never_evicts(db, tmp_path, clock) -> None:
    storage = make_storage(db, tmp_path, clock, cache_ttl_hours=1, cache_max_mb=0.001)
    image = await storage.images.put(png(23))
    clock.advance(1000 * HOUR)
    report = await storage.lifecycle.sweep()
    assert report.ttl_evicted == report.cap_evicted == 0
    assert storage.images.path(image).exists()


async def test_size_cap_evicts_least_recently_used_first(db, tmp_path, clock, s3_bucket) -> None:
    storage = make_storage(db, tmp_path, clock, s3_bucket, cache_ttl_hours=0)
    images = []
    for seed in range(3):
        images.append(await uploaded(storage, 30 + seed, (900, 900)))
        clock.advance(60)
    sizes = [i.size_bytes for i in images]
    await storage.images.read(images[0])  # the oldest is now the most recently used
    clock.advance(60)
    # room for two of the three
    storage.lifecycle.config = storage.images.config = StorageConfig(
        storage="s3", cache_ttl_hours=0, cache_max_mb=(sum(sizes) - 1) / 1024 / 1024
    )
    report = await storage.lifecycle.sweep()
    assert report.cap_evicted == 1
    assert [(await blob_of(storage, i)).local for i in images] == [True, False, True]


async def test_access_times_are_written_in_batches(db, tmp_path, clock) -> None:
    storage = make_storage(db, tmp_path, clock)
    image = await storage.images.put(png(40))
    before = (await blob_of(storage, image)).accessed_at
    clock.advance(HOUR)
    for _ in range(50):
        await storage.images.read(image)
    assert (await blob_of(storage, image)).accessed_at == before  # nothing written per read
    assert await storage.images.flush_access() == 1  # one key, one statement
    assert (await blob_of(storage, image)).accessed_at == clock.now
    assert await storage.images.flush_access() == 0


async def test_retention_deletes_old_unread_records_and_optionally_the_bucket_copy(
    db, tmp_path, clock, s3_bucket
) -> None:
    storage = make_storage(db, tmp_path, clock, s3_bucket, retention_days=30)
    old = await uploaded(storage, 50)
    async with db.writing(), db.engine.begin() as conn:  # made 40 days ago
        from datetime import UTC, datetime, timedelta

        await conn.execute(
            Image.__table__.update()
            .where(Image.__table__.c.id == old.id)
            .values(created_at=datetime.now(UTC) - timedelta(days=40))
        )
    fresh = await uploaded(storage, 51)
    clock.advance(31 * 86400)
    await storage.images.read(fresh)  # fresh was read recently: kept
    clock.advance(2 * HOUR)  # past the orphan grace period
    report = await storage.lifecycle.sweep()
    assert report.retention_deleted_images == 1 and report.deleted_blobs == 1
    assert await storage.images.get(old.id) is None
    assert await storage.images.get(fresh.id) is not None
    assert not storage.images.path(old).exists()
    assert "ink/" + blob_key(old.sha256, old.ext) in bucket_keys(s3_bucket)  # kept by default

    deleting = make_storage(
        db, tmp_path, clock, s3_bucket, retention_days=30, retention_delete_remote=True
    )
    gone = await uploaded(deleting, 52)
    await deleting.lifecycle._delete_image_rows([gone.id])
    clock.advance(2 * HOUR)
    await deleting.lifecycle.sweep()
    assert "ink/" + blob_key(gone.sha256, gone.ext) not in bucket_keys(s3_bucket)


async def test_orphan_sweep_removes_stray_files_and_records_without_bytes(
    db, tmp_path, clock, s3_bucket
) -> None:
    storage = make_storage(db, tmp_path, clock, s3_bucket)
    root: Path = storage.images.blobs.root
    stray_old = root / "images" / "zz" / ("z" * 64 + ".png")
    stray_new = root / "images" / "zy" / ("y" * 64 + ".png")
    for stray in (stray_old, stray_new):
        stray.parent.mkdir(parents=True, exist_ok=True)
        stray.write_bytes(b"x")
    os.utime(stray_old, (clock.now - 2 * HOUR, clock.now - 2 * HOUR))
    os.utime(stray_new, (clock.now, clock.now))

    in_bucket = await uploaded(storage, 60)
    storage.images.remote.put_file = lambda k, p: (_ for _ in ()).throw(PermissionError("no"))
    only_local = await storage.images.put(png(61))
    storage.images.path(in_bucket).unlink()
    storage.images.path(only_local).unlink()

    report = await storage.lifecycle.sweep()
    assert report.orphan_files == 1
    assert not stray_old.exists() and stray_new.exists()  # a write in progress is left alone
    assert not (await blob_of(storage, in_bucket)).local  # flag corrected; still servable
    assert report.lost_images == 1
    assert await storage.images.get(only_local.id) is None
    assert await storage.images.get(in_bucket.id) is not None


async def test_delete_scopes(db, tmp_path, clock, s3_bucket) -> None:
    storage = make_storage(db, tmp_path, clock, s3_bucket)
    a = await uploaded(storage, 70)
    result = await storage.lifecycle.delete_images([a.id], "local")
    assert result["deleted"] == [a.id]
    assert not storage.images.path(a).exists()
    # the bucket copy is now the only one: deleting it is refused
    result = await storage.lifecycle.delete_images([a.id], "remote")
    assert result["skipped"][0]["id"] == a.id and "only one" in result["skipped"][0]["reason"]

    b = await uploaded(storage, 71)
    result = await storage.lifecycle.delete_images([b.id], "remote")
    assert result["deleted"] == [b.id]
    assert (await blob_of(storage, b)).remote_state == "removed"
    assert "ink/" + blob_key(b.sha256, b.ext) not in bucket_keys(s3_bucket)
    # the local copy is now the only one: clearing local copies keeps it
    assert await storage.lifecycle.clear_local() == (0, 0)
    assert storage.images.path(b).exists()

    result = await storage.lifecycle.delete_images([a.id, b.id, "img_nope"], "all")
    assert sorted(result["deleted"]) == sorted([a.id, b.id])
    assert result["not_found"] == ["img_nope"]
    async with db.session() as session:
        assert (await session.execute(select(Blob))).all() == []
    assert bucket_keys(s3_bucket) == set()


async def test_shared_bytes_stay_while_another_image_uses_them(db, tmp_path, clock) -> None:
    storage = make_storage(db, tmp_path, clock)
    data = png(80)
    first, second = await storage.images.put(data), await storage.images.put(data)
    await storage.lifecycle.delete_images([first.id], "all")
    assert await storage.images.read(second) == data
    assert storage.images.blobs.path(thumb_key(second.sha256)).parent.parent.name == "thumbs"


async def test_the_migration_backfills_blobs_for_images_stored_before(database_url) -> None:
    from alembic import command

    from storage.db import alembic_config

    database = Database(database_url)
    try:
        cfg = alembic_config(database.sync_url)
        await asyncio.to_thread(command.upgrade, cfg, "0002")
        async with database.writing(), database.engine.begin() as conn:
            from datetime import UTC, datetime

            await conn.execute(
                Image.__table__.insert(),
                [
                    {"id": f"img_{i}", "sha256": "a" * 64, "mime": "image/png", "ext": "png",
                     "width": 1, "height": 1, "size_bytes": 10, "created_at": datetime.now(UTC)}
                    for i in range(2)
                ],
            )  # fmt: skip
        await database.migrate()
        async with database.session() as session:
            blobs = (await session.execute(select(Blob))).scalars().all()
        assert [(b.key, b.local, b.remote_state) for b in blobs] == [
            (blob_key("a" * 64, "png"), True, "none")
        ]
    finally:
        await database.dispose()


def test_upload_queue_has_no_state_outside_the_database(db, tmp_path, clock) -> None:
    storage = make_storage(db, tmp_path, clock)
    queue = UploadQueue(storage.images)
    assert set(vars(queue)) == {"images", "db", "holder", "_table"}
