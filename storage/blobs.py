"""Blob stores: put / get / delete / exists by key.

Public methods validate the key (relative, no `..`) and delegate to private
methods. Local disk is the one implementation so far; S3/R2 comes next with the
same interface. Every method is synchronous and is called from a worker thread.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path, PurePosixPath


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


class LocalBlobStore(BlobStore):
    """Files under a root directory, written atomically (temp file + rename)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, key: str) -> Path:
        return self.root / self.check_key(key)

    def _put(self, key: str, data: bytes) -> None:
        target = self.root / key
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

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
