"""Blob stores: put / get / delete / exists by key.

Public methods validate the key (relative, no `..`) and delegate to private
methods. Local disk is the one implementation so far; S3/R2 comes next with the
same interface. Every method is synchronous and is called from a worker thread.
"""

from __future__ import annotations

import errno
import mmap
import os
import tempfile
import threading
from pathlib import Path, PurePosixPath

# Direct writes go through a page-aligned buffer of at least this size, kept for reuse.
DIRECT_ALIGN = 4096
DIRECT_BUFFER_MIN = 4 * 1024 * 1024
DIRECT_BUFFERS = 4
# Files outside this range are written through the page cache (thumbnails, small
# images; a file too large to keep a buffer for).
DIRECT_MIN_BYTES = 256 * 1024
DIRECT_MAX_BYTES = 32 * 1024 * 1024


class BlobStore:
    """Bytes by key. Keys look like `images/ab/abcdef....png`."""

    @staticmethod
    def check_key(key: str) -> str:
        path = PurePosixPath(key)
        if not key or path.is_absolute() or ".." in path.parts or "\\" in key or "\x00" in key:
            raise ValueError(f"invalid blob key {key!r}")
        return key

    def put(self, key: str, data: bytes) -> None:
        self._put(self.check_key(key), data)

    def get(self, key: str) -> bytes:
        return self._get(self.check_key(key))

    def exists(self, key: str) -> bool:
        return self._exists(self.check_key(key))

    def delete(self, key: str) -> None:
        self._delete(self.check_key(key))

    def _put(self, key: str, data: bytes) -> None:
        raise NotImplementedError

    def _get(self, key: str) -> bytes:
        raise NotImplementedError

    def _exists(self, key: str) -> bool:
        raise NotImplementedError

    def _delete(self, key: str) -> None:
        raise NotImplementedError


class _AlignedBuffers:
    """A few page-aligned buffers for `O_DIRECT` writes, reused: memory already touched
    costs nothing to copy into again, where a fresh mapping faults in every page. A
    writer waits for a free buffer (a write holds one for a few milliseconds)."""

    def __init__(self, count: int) -> None:
        self._free: list[mmap.mmap | None] = [None] * count
        self._available = threading.Semaphore(count)
        self._lock = threading.Lock()

    def take(self, size: int) -> mmap.mmap:
        self._available.acquire()
        with self._lock:
            buf = self._free.pop()
        if buf is None or len(buf) < size:
            if buf is not None:
                buf.close()
            mb = 1024 * 1024
            buf = mmap.mmap(-1, -(-max(size, DIRECT_BUFFER_MIN) // mb) * mb)
        return buf

    def give(self, buf: mmap.mmap) -> None:
        with self._lock:
            self._free.append(buf)
        self._available.release()


_buffers = _AlignedBuffers(DIRECT_BUFFERS)
# what a file system that does not do O_DIRECT (or not with this alignment) answers
_REFUSED = (errno.EINVAL, errno.EOPNOTSUPP)


class LocalBlobStore(BlobStore):
    """Files under a root directory, written atomically (temp file + rename).

    Files of `DIRECT_MIN_BYTES` or more are written with `O_DIRECT` where the file
    system takes it: the bytes go from one reused aligned buffer to the disk, instead
    of being copied into newly allocated page-cache pages. On a VM whose free memory
    goes back to the host (virtio-balloon free page reporting), every such page faults
    on first touch: a 2.3 MB image cost ~7 ms of CPU to write through the cache and
    ~0.5 ms direct (`bench/passthrough.py`). Newly stored images are served from the
    gateway's memory (`ImageStore`), so they are not read back from disk at once.
    A file system that refuses `O_DIRECT` (tmpfs on older kernels, some network file
    systems) is written through the page cache from then on.
    """

    def __init__(self, root: Path, direct: bool = True) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.direct = direct and bool(getattr(os, "O_DIRECT", 0))

    def path(self, key: str) -> Path:
        return self.root / self.check_key(key)

    def _put(self, key: str, data: bytes) -> None:
        target = self.root / key
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
        try:
            direct = self.direct and DIRECT_MIN_BYTES <= len(data) <= DIRECT_MAX_BYTES
            if not (direct and self._put_direct(tmp, data)):
                with os.fdopen(fd, "wb") as fh:
                    fd = -1
                    fh.write(data)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        finally:
            if fd >= 0:
                os.close(fd)

    def _put_direct(self, tmp: str, data: bytes) -> bool:
        """Write `data` to the (empty) file `tmp` with `O_DIRECT`; False when the file
        system refuses it (and then no more direct writes are tried)."""
        size = len(data)
        padded = -(-size // DIRECT_ALIGN) * DIRECT_ALIGN
        buf = _buffers.take(padded)
        try:
            buf[:size] = data
            buf[size:padded] = bytes(padded - size)  # the last block, zero-filled
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_DIRECT)
            except OSError as exc:
                if exc.errno not in _REFUSED:
                    raise
                self.direct = False
                return False
            try:
                with memoryview(buf) as view:
                    done = 0
                    while done < padded:
                        done += os.write(fd, view[done:padded])
                os.ftruncate(fd, size)  # drop the padding
            except OSError as exc:
                if exc.errno not in _REFUSED:
                    raise
                self.direct = False
                os.ftruncate(fd, 0)
                return False
            finally:
                os.close(fd)
            return True
        finally:
            _buffers.give(buf)

    def _get(self, key: str) -> bytes:
        return (self.root / key).read_bytes()

    def _exists(self, key: str) -> bool:
        return (self.root / key).is_file()

    def _delete(self, key: str) -> None:
        (self.root / key).unlink(missing_ok=True)

    def ping(self) -> None:
        """Raise when the root is not a writable directory."""
        if not self.root.is_dir() or not os.access(self.root, os.W_OK):
            raise OSError(f"{self.root} is not a writable directory")
