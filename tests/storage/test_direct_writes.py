"""LocalBlobStore's O_DIRECT writes (and their fallback), on the real file system."""

from __future__ import annotations

import errno
import io
import os
import threading

import pytest
from PIL import Image

from storage import blobs
from storage.blobs import DIRECT_MIN_BYTES, LocalBlobStore
from storage.config import StorageConfig
from storage.db import Database
from storage.images import ImageStore, blob_key

pytestmark = pytest.mark.skipif(not hasattr(os, "O_DIRECT"), reason="no O_DIRECT here")


def payload(n: int, seed: int = 0) -> bytes:
    return (bytes((i * 7 + seed) % 251 for i in range(4096)) * (n // 4096 + 1))[:n]


def direct_supported(directory) -> bool:
    probe = os.path.join(directory, ".probe")
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_DIRECT, 0o600)
    except OSError:
        return False
    os.close(fd)
    os.unlink(probe)
    return True


def opened_with(monkeypatch) -> list[int]:
    """The flags of every os.open the store makes."""
    flags: list[int] = []
    real = os.open

    def spy(path, mode, *args, **kwargs):
        flags.append(mode)
        return real(path, mode, *args, **kwargs)

    monkeypatch.setattr(blobs.os, "open", spy)
    return flags


SIZES = [0, 1, 4095, 4096, 4097, DIRECT_MIN_BYTES - 1, DIRECT_MIN_BYTES, 2_300_001, 9_000_000]


def test_every_size_arrives_whole(tmp_path):
    store = LocalBlobStore(tmp_path)
    for size in SIZES:
        key = f"images/aa/{size}.png"
        store.put(key, payload(size, size))
        assert store.get(key) == payload(size, size)
        assert os.path.getsize(store.path(key)) == size  # no padding left behind
    assert not list(tmp_path.rglob(".tmp-*"))


def test_large_files_bypass_the_page_cache_where_the_file_system_allows(tmp_path, monkeypatch):
    if not direct_supported(tmp_path):
        pytest.skip(f"{tmp_path} does not take O_DIRECT")
    store = LocalBlobStore(tmp_path)
    flags = opened_with(monkeypatch)
    store.put("images/aa/small.png", payload(DIRECT_MIN_BYTES - 1))
    assert not any(f & os.O_DIRECT for f in flags)
    store.put("images/aa/large.png", payload(3_000_000))
    assert any(f & os.O_DIRECT for f in flags) and store.direct
    assert store.get("images/aa/large.png") == payload(3_000_000)


def test_direct_false_writes_through_the_cache(tmp_path, monkeypatch):
    store = LocalBlobStore(tmp_path, direct=False)
    flags = opened_with(monkeypatch)
    store.put("images/aa/large.png", payload(1_000_000))
    assert not any(f & os.O_DIRECT for f in flags)
    assert store.get("images/aa/large.png") == payload(1_000_000)


@pytest.mark.parametrize("where", ["open", "write"])
def test_a_file_system_that_refuses_o_direct_is_written_through_the_cache(
    tmp_path, monkeypatch, where
):
    store = LocalBlobStore(tmp_path)
    real_open, real_write = os.open, os.write
    direct_fds: set[int] = set()
    refused = []

    def fake_open(path, mode, *args, **kwargs):
        if mode & os.O_DIRECT and where == "open":
            refused.append(path)
            raise OSError(errno.EINVAL, "Invalid argument")
        fd = real_open(path, mode, *args, **kwargs)
        if mode & os.O_DIRECT:
            direct_fds.add(fd)
        return fd

    def fake_write(fd, data):
        if fd in direct_fds:
            refused.append(fd)
            real_write(fd, bytes(data[:4096]))  # a partial write first, then the refusal
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_write(fd, data)

    monkeypatch.setattr(blobs.os, "open", fake_open)
    monkeypatch.setattr(blobs.os, "write", fake_write)
    store.put("images/aa/one.png", payload(1_000_000, 1))
    assert store.get("images/aa/one.png") == payload(1_000_000, 1)
    assert len(refused) == 1 and not store.direct
    store.put("images/aa/two.png", payload(1_000_000, 2))  # not tried again
    assert len(refused) == 1 and store.get("images/aa/two.png") == payload(1_000_000, 2)
    assert not list(tmp_path.rglob(".tmp-*"))


def test_other_errors_are_raised_and_leave_no_temp_file(tmp_path, monkeypatch):
    store = LocalBlobStore(tmp_path)
    real_write = os.write

    def full(fd, data):
        if len(data) >= DIRECT_MIN_BYTES:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(blobs.os, "write", full)
    with pytest.raises(OSError) as caught:
        store.put("images/aa/x.png", payload(1_000_000))
    assert caught.value.errno == errno.ENOSPC
    assert not store.exists("images/aa/x.png") and not list(tmp_path.rglob(".tmp-*"))
    assert len(blobs._buffers._free) == blobs.DIRECT_BUFFERS  # the buffer came back


def test_concurrent_writers_share_the_buffers_without_mixing_bytes(tmp_path):
    store = LocalBlobStore(tmp_path)
    errors: list[BaseException] = []

    def writer(n: int) -> None:
        try:
            for j in range(4):
                size = 300_000 + 170_000 * ((n + j) % 11)
                store.put(f"images/{n:02d}/{j}.png", payload(size, n * 10 + j))
        except BaseException as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for n in range(12):
        for j in range(4):
            size = 300_000 + 170_000 * ((n + j) % 11)
            assert store.get(f"images/{n:02d}/{j}.png") == payload(size, n * 10 + j)
    assert len(blobs._buffers._free) == blobs.DIRECT_BUFFERS


def _png(size: int) -> bytes:
    """A PNG of at least `size` bytes (noise does not compress)."""
    side = int((size / 3) ** 0.5) + 1
    buf = io.BytesIO()
    Image.frombytes("RGB", (side, side), os.urandom(side * side * 3)).save(buf, "PNG")
    return buf.getvalue()


async def test_a_new_image_is_served_from_memory(database_url, tmp_path):
    db = Database(database_url)
    await db.migrate()
    try:
        store = ImageStore(db, LocalBlobStore(tmp_path))
        data = _png(600_000)
        row = await store.put(data)
        key = blob_key(row.sha256, row.ext)
        assert store.hot.get(key) is data  # the bytes just written, not a copy read back
        ref = store.cached_ref(row.id)
        assert ref is not None and ref.key == key and ref.mime == "image/png"
        assert await store.read(row) == data  # and the file holds the same
        assert store.path(row).read_bytes() == data

        off = ImageStore(db, LocalBlobStore(tmp_path), config=StorageConfig(serve_cache_mb=0))
        other = await off.put(_png(300_000))
        assert off.hot.get(blob_key(other.sha256, other.ext)) is None  # no serve cache
    finally:
        await db.dispose()
