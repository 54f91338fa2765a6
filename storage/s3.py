"""S3-compatible blob store (AWS S3, Cloudflare R2, MinIO, moto).

One boto3 client is created per store and reused: boto3 clients are thread-safe
and keep a pooled HTTP connection set, and every method here is synchronous and
called from worker threads. Connection, endpoint, credential and bucket errors
surface as `StorageUnavailable`, whose message names the bucket and endpoint but
never the secret key.
"""

from __future__ import annotations

import os
import tempfile
import threading
from pathlib import Path
from typing import Any, NoReturn

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, ParamValidationError

from storage.blobs import BlobStore

CACHE_CONTROL = "public, max-age=31536000, immutable"
MAX_PRESIGN_SECONDS = 7 * 24 * 3600  # the SigV4 limit

CONTENT_TYPES = {
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".webp": "image/webp",
    ".gif": "image/gif",
    ".mp4": "video/mp4",
}

# Error codes that mean "the object is not there".
_MISSING_CODES = {"NoSuchKey", "404", "NotFound"}
# Error codes that mean the store as a whole cannot be used (bucket gone, credentials
# wrong, access denied, server trouble).
_UNAVAILABLE_CODES = {
    "NoSuchBucket",
    "AccessDenied",
    "403",
    "Forbidden",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "InvalidToken",
    "ExpiredToken",
    "AllAccessDisabled",
    "AccountProblem",
    "InternalError",
    "ServiceUnavailable",
    "SlowDown",
    "500",
    "502",
    "503",
    "504",
}


_session_lock = threading.Lock()
_session: boto3.session.Session | None = None


def _new_client(**kwargs: Any) -> Any:
    """Create an S3 client from one shared boto3 session (its loaded service models are
    reused). Creating clients from a session is not thread-safe, hence the lock."""
    global _session
    with _session_lock:
        if _session is None:
            _session = boto3.session.Session()
        return _session.client("s3", **kwargs)


class StorageUnavailable(Exception):
    """The object store cannot be reached or refuses us (network, credentials, bucket)."""


def content_type_for(key: str) -> str:
    return CONTENT_TYPES.get(os.path.splitext(key)[1].lower(), "application/octet-stream")


def _error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _http_status(exc: ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)


def _is_missing(exc: ClientError) -> bool:
    code = _error_code(exc)
    if code == "NoSuchBucket":
        return False
    return code in _MISSING_CODES or _http_status(exc) == 404


class S3BlobStore(BlobStore):
    """Blobs as objects in one bucket, under an optional key prefix."""

    def __init__(
        self,
        *,
        bucket: str,
        access_key_id: str,
        secret_access_key: str,
        endpoint_url: str | None = None,
        region: str | None = None,
        prefix: str = "",
        public_base_url: str | None = None,
        r2_account_id: str | None = None,
        connect_timeout: float = 5,
        read_timeout: float = 60,
        max_pool_connections: int = 32,
    ) -> None:
        if not bucket:
            raise ValueError("bucket is required")
        if r2_account_id and not endpoint_url:
            endpoint_url = f"https://{r2_account_id}.r2.cloudflarestorage.com"
            region = region or "auto"
        self.bucket = bucket
        self.region = region or "us-east-1"
        prefix = (prefix or "").strip("/")
        self.prefix = f"{prefix}/" if prefix else ""
        self.public_base_url = public_base_url.rstrip("/") if public_base_url else None
        # Kept only to scrub it from error messages; never shown.
        self._secret = secret_access_key

        config_kwargs: dict[str, Any] = {
            "signature_version": "s3v4",
            # boto3 >= 1.36 sends default CRC checksums that break R2 uploads.
            "request_checksum_calculation": "when_required",
            "response_checksum_validation": "when_required",
            "retries": {"max_attempts": 2, "mode": "standard"},
            "connect_timeout": connect_timeout,
            "read_timeout": read_timeout,
            "max_pool_connections": max_pool_connections,
        }
        if endpoint_url:
            config_kwargs["s3"] = {"addressing_style": "path"}
        # Created exactly once; boto3 clients are thread-safe and pool connections.
        self._client = _new_client(
            endpoint_url=endpoint_url or None,
            region_name=self.region,
            aws_access_key_id=access_key_id,
            aws_secret_access_key=secret_access_key,
            config=Config(**config_kwargs),
        )
        self.endpoint_url: str = self._client.meta.endpoint_url

    # -- helpers -----------------------------------------------------------------

    @property
    def client(self) -> Any:
        """The one boto3 S3 client of this store."""
        return self._client

    def object_key(self, key: str) -> str:
        return self.prefix + self.check_key(key)

    def describe(self) -> dict[str, Any]:
        """Settings safe to show to an operator (no credentials)."""
        return {
            "bucket": self.bucket,
            "endpoint": self.endpoint_url,
            "region": self.region,
            "prefix": self.prefix,
            "public_base_url": self.public_base_url,
        }

    def __repr__(self) -> str:
        return f"S3BlobStore(bucket={self.bucket!r}, endpoint={self.endpoint_url!r})"

    def _scrub(self, text: str) -> str:
        return text.replace(self._secret, "***") if self._secret else text

    def _unavailable(self, action: str, exc: BaseException) -> NoReturn:
        detail = self._scrub(f"{type(exc).__name__}: {exc}")
        raise StorageUnavailable(
            f"object storage unavailable ({action} in bucket {self.bucket!r} "
            f"at {self.endpoint_url}): {detail}"
        ) from None

    def _raise(self, action: str, exc: Exception) -> NoReturn:
        """Translate a botocore error; re-raise what is neither outage nor missing."""
        if isinstance(exc, ClientError):
            if _error_code(exc) in _UNAVAILABLE_CODES or _http_status(exc) >= 500:
                self._unavailable(action, exc)
            raise exc
        if isinstance(exc, BotoCoreError) and not isinstance(exc, ParamValidationError):
            self._unavailable(action, exc)
        raise exc

    def _put_args(self, key: str) -> dict[str, str]:
        return {
            "Bucket": self.bucket,
            "Key": self.prefix + key,
            "ContentType": content_type_for(key),
            "CacheControl": CACHE_CONTROL,
        }

    # -- BlobStore ---------------------------------------------------------------

    def _put(self, key: str, data: bytes) -> None:
        try:
            self._client.put_object(Body=data, **self._put_args(key))
        except (ClientError, BotoCoreError) as exc:
            self._raise("put", exc)

    def _get_object(self, key: str) -> Any:
        try:
            return self._client.get_object(Bucket=self.bucket, Key=self.prefix + key)
        except ClientError as exc:
            if _is_missing(exc):
                raise FileNotFoundError(f"no blob {key!r} in bucket {self.bucket!r}") from None
            self._raise("get", exc)
        except BotoCoreError as exc:
            self._raise("get", exc)

    def _get(self, key: str) -> bytes:
        body = self._get_object(key)["Body"]
        try:
            return body.read()
        except BotoCoreError as exc:
            self._raise("get", exc)
        finally:
            body.close()

    def _exists(self, key: str) -> bool:
        try:
            self._client.head_object(Bucket=self.bucket, Key=self.prefix + key)
        except ClientError as exc:
            if _is_missing(exc):
                return False
            self._raise("exists", exc)
        except BotoCoreError as exc:
            self._raise("exists", exc)
        return True

    def _delete(self, key: str) -> None:
        try:
            self._client.delete_object(Bucket=self.bucket, Key=self.prefix + key)
        except ClientError as exc:
            if _is_missing(exc):
                return
            self._raise("delete", exc)
        except BotoCoreError as exc:
            self._raise("delete", exc)

    # -- files, URLs, health -----------------------------------------------------

    def put_file(self, key: str, path: str | os.PathLike[str]) -> None:
        """Upload a local file, streamed from disk (one PUT, not read into memory)."""
        key = self.check_key(key)
        path = Path(path)
        try:
            with path.open("rb") as fh:
                self._client.put_object(
                    Body=fh, ContentLength=path.stat().st_size, **self._put_args(key)
                )
        except (ClientError, BotoCoreError) as exc:
            self._raise("put", exc)

    def get_to_file(self, key: str, path: str | os.PathLike[str]) -> None:
        """Stream an object into a local file (written atomically: temp file + rename)."""
        key = self.check_key(key)
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        resp = self._get_object(key)
        # StreamingBody's context manager yields the raw stream; close it explicitly.
        body = resp["Body"]
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as fh:
                for chunk in body.iter_chunks(chunk_size=1024 * 1024):
                    fh.write(chunk)
            os.replace(tmp, target)
        except BotoCoreError as exc:
            Path(tmp).unlink(missing_ok=True)
            self._raise("get", exc)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        finally:
            body.close()

    def presigned_url(self, key: str, expires_seconds: int) -> str:
        """A time-limited GET URL for the object (1 s to 7 days)."""
        key = self.check_key(key)
        if not 1 <= int(expires_seconds) <= MAX_PRESIGN_SECONDS:
            raise ValueError(
                f"expires_seconds must be between 1 and {MAX_PRESIGN_SECONDS}, got {expires_seconds}"
            )
        return self._client.generate_presigned_url(
            "get_object",
            Params={"Bucket": self.bucket, "Key": self.prefix + key},
            ExpiresIn=int(expires_seconds),
        )

    def public_url(self, key: str) -> str | None:
        """The object's URL under the public base URL (CDN / r2.dev), or None."""
        key = self.check_key(key)
        if not self.public_base_url:
            return None
        return f"{self.public_base_url}/{self.prefix}{key}"

    def ping(self) -> None:
        """Raise `StorageUnavailable` unless the bucket is reachable and ours."""
        try:
            self._client.head_bucket(Bucket=self.bucket)
        except ClientError as exc:
            self._unavailable("head bucket", exc)
        except BotoCoreError as exc:
            self._unavailable("head bucket", exc)
