"""Settings: `INKGATE_*` environment variables and the data directory.

`Settings.from_env()` is the only place that reads the environment; everything
else receives a `Settings` instance (tests build their own).
"""

from __future__ import annotations

import functools
import ipaddress
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

# Every setting with its environment variable, default and meaning. The README
# documents each one; tests/gateway/test_settings.py fails when it does not.
SETTINGS_DOC: dict[str, str] = {
    "INKGATE_DATA_DIR": "Data directory (database, images, config, secret). Default `./data`.",
    "DATABASE_URL": "Database URL; also `INKGATE_DATABASE_URL`. Default SQLite in the data dir.",
    "INKGATE_MASTER_KEY": "Master API key, accepted on every `/v1` route besides stored keys.",
    "INKGATE_HOST": "Address `inkgate serve` binds. Default `127.0.0.1`.",
    "INKGATE_PORT": "Port `inkgate serve` binds. Default `8000`.",
    "INKGATE_WORKERS": "Worker processes of `inkgate serve` (`--workers`), on one port. Default 1.",
    "INKGATE_PUBLIC_BASE_URL": "Absolute base of returned URLs, e.g. `https://img.example.com`.",
    "INKGATE_TRUSTED_PROXIES": "Comma-separated IPs/CIDRs whose `X-Forwarded-*` are trusted.",
    "INKGATE_CONFIG": "Path of the provider/model config. Default `<data dir>/inkgate.yaml`.",
    "INKGATE_MAX_BODY_BYTES": "Largest accepted request body. Default 26214400 (25 MiB).",
    "INKGATE_UPSTREAM_TIMEOUT": "Seconds one upstream call (one attempt) may take. Default 120.",
    "INKGATE_DEADLINE_SECONDS": "Overall time for an outline, a page or an image call, retries included. Default 280.",
    "INKGATE_IMAGE_CONCURRENCY": "Default pages generated at once per post. Default 4.",
    "INKGATE_PAGE_RETRIES": "Attempts per page on transient upstream errors. Default 3.",
    "INKGATE_KEEPALIVE_SECONDS": "Silence before a `: keep-alive` SSE comment. Default 8.",
    "INKGATE_SECRET_KEY": "Secret that signs download links and encrypts provider secrets saved on the dashboard. Default: generated once in the data dir.",
    "INKGATE_LOG_LEVEL": "Log level. Default `INFO`.",
    "INKGATE_CONFIG_RELOAD_SECONDS": "How often config files are checked for changes. Default 1.",
    "INKGATE_FETCH_EXTERNAL_IMAGES": "`true`: image URLs from other sites in requests are fetched (SSRF-checked: public addresses only). Default `false`: only data URLs and InkGate's own image URLs are read.",
    "INKGATE_ADMIN_SESSION_HOURS": "A dashboard session ends after this many hours without use. Default 12.",
    "INKGATE_JOB_LEASE_SECONDS": "A running post job is taken over by another process (or after a restart) when its process has not renewed it for this long. Default 30.",
    "INKGATE_USAGE_RETENTION_DAYS": "Usage rows (the dashboard's request log) older than this are deleted, hourly. Default 90; 0 = forever.",
    # storage (each also settable in inkgate.yaml's `storage:` section; the environment wins)
    "INKGATE_STORAGE": "Where images are kept: `local` (default), `s3` or `r2` (local disk stays the cache).",
    "INKGATE_S3_BUCKET": "Bucket name (s3 / r2).",
    "INKGATE_S3_ACCESS_KEY_ID": "Access key id (s3 / r2).",
    "INKGATE_S3_SECRET_ACCESS_KEY": "Secret access key (s3 / r2). Never logged or shown.",
    "INKGATE_S3_ENDPOINT_URL": "S3 endpoint for MinIO, AWS regions or tests. Default: AWS, or R2's from the account id.",
    "INKGATE_S3_REGION": "Region. Default `us-east-1` (`auto` for r2).",
    "INKGATE_R2_ACCOUNT_ID": "Cloudflare account id: the endpoint becomes `https://<account>.r2.cloudflarestorage.com`.",
    "INKGATE_S3_PREFIX": "Key prefix inside the bucket, e.g. `inkgate/`.",
    "INKGATE_S3_PUBLIC_BASE_URL": "The bucket's public domain, e.g. `https://img.example.com` (for `INKGATE_IMAGE_URLS=public`).",
    "INKGATE_IMAGE_URLS": "`gateway` (default): URLs through InkGate; `public`: the bucket's public domain once uploaded; `presigned`: presigned bucket URLs once uploaded.",
    "INKGATE_PRESIGN_SECONDS": "Expiry of presigned URLs, at most 604800 (7 days). Default 3600.",
    "INKGATE_CACHE_TTL_HOURS": "Local copies not read for this long are evicted once uploaded (sliding). Default 72; 0 = never.",
    "INKGATE_CACHE_MAX_MB": "Local cache size cap; least recently used uploaded copies go first. Default 0 = no cap.",
    "INKGATE_RETENTION_DAYS": "Image records (and their bytes) not read for this long are deleted. Default 365; 0 = forever.",
    "INKGATE_RETENTION_DELETE_REMOTE": "`true`: retention deletes the bucket object too. Default `false`.",
    "INKGATE_CACHE_SWEEP_SECONDS": "How often the lifecycle sweep runs inside the app. Default 600; 0 = only on demand.",
    "INKGATE_SERVE_CACHE_MB": "Memory for the bytes of recently served images (files up to 8 MB). Default 128; 0 = off.",
    "INKGATE_X_ACCEL_REDIRECT": "An nginx `internal` location (e.g. `/_inkgate_blobs/`) aliasing `<data dir>/blobs/`: local files are then sent by nginx (`X-Accel-Redirect`). Default off.",
    "INKGATE_UPLOAD_MAX_ATTEMPTS": "Upload attempts before an image is marked failed (backoff up to 1 h). Default 10.",
}


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise ValueError(f"{name} must be an integer, got {raw!r}") from exc


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return float(raw)
    except ValueError as exc:
        raise ValueError(f"{name} must be a number, got {raw!r}") from exc


def _bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected true or false")


def _opt(env: Mapping[str, str], name: str, kind):
    """An optional typed setting: None when unset."""
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return None
    try:
        return kind(raw.strip())
    except ValueError as exc:
        raise ValueError(f"{name}: invalid value {raw!r}") from exc


def _networks(raw: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    nets = []
    for part in raw.split(","):
        part = part.strip()
        if part:
            nets.append(ipaddress.ip_network(part, strict=False))
    return tuple(nets)


@dataclass(frozen=True)
class Settings:
    data_dir: Path = Path("data")
    database_url: str = ""
    master_key: str | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    public_base_url: str | None = None
    trusted_proxies: tuple = ()
    config_path: Path | None = None
    max_body_bytes: int = 25 * 1024 * 1024
    upstream_timeout: float = 120.0
    deadline_seconds: float = 280.0
    image_concurrency: int = 4
    page_retries: int = 3
    keepalive_seconds: float = 8.0
    secret_key: str | None = None
    log_level: str = "INFO"
    config_reload_seconds: float = 1.0
    fetch_external_images: bool = False
    job_lease_seconds: float = 30.0
    usage_retention_days: float = 90.0
    admin_session_hours: float = 12.0
    retry_base_delay: float = field(default=1.0, repr=False)
    # storage: None = not set here (inkgate.yaml's `storage:` section or the default applies)
    storage: str | None = None
    s3_bucket: str | None = None
    s3_access_key_id: str | None = None
    s3_secret_access_key: str | None = field(default=None, repr=False)
    s3_endpoint_url: str | None = None
    s3_region: str | None = None
    r2_account_id: str | None = None
    s3_prefix: str | None = None
    s3_public_base_url: str | None = None
    image_urls: str | None = None
    presign_seconds: int | None = None
    cache_ttl_hours: float | None = None
    cache_max_mb: float | None = None
    retention_days: float | None = None
    retention_delete_remote: bool | None = None
    cache_sweep_seconds: float | None = None
    upload_max_attempts: int | None = None
    serve_cache_mb: float | None = None
    x_accel_redirect: str | None = None

    def __post_init__(self) -> None:
        data_dir = Path(self.data_dir).expanduser().resolve()
        object.__setattr__(self, "data_dir", data_dir)
        if not self.database_url:
            object.__setattr__(self, "database_url", f"sqlite:///{data_dir / 'inkgate.db'}")
        if self.config_path is None:
            object.__setattr__(self, "config_path", data_dir / "inkgate.yaml")
        if self.public_base_url:
            object.__setattr__(self, "public_base_url", self.public_base_url.rstrip("/"))
        if self.workers < 1:
            raise ValueError("INKGATE_WORKERS must be at least 1")
        if self.master_key is not None and len(self.master_key) < 16:
            raise ValueError("INKGATE_MASTER_KEY must be at least 16 characters")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: object) -> Settings:
        env = os.environ if env is None else env
        s = cls(
            data_dir=Path(env.get("INKGATE_DATA_DIR") or "data"),
            database_url=env.get("DATABASE_URL") or env.get("INKGATE_DATABASE_URL") or "",
            master_key=env.get("INKGATE_MASTER_KEY") or None,
            host=env.get("INKGATE_HOST") or "127.0.0.1",
            port=_int(env, "INKGATE_PORT", 8000),
            workers=_int(env, "INKGATE_WORKERS", 1),
            public_base_url=env.get("INKGATE_PUBLIC_BASE_URL") or None,
            trusted_proxies=_networks(env.get("INKGATE_TRUSTED_PROXIES", "")),
            config_path=Path(env["INKGATE_CONFIG"]) if env.get("INKGATE_CONFIG") else None,
            max_body_bytes=_int(env, "INKGATE_MAX_BODY_BYTES", 25 * 1024 * 1024),
            upstream_timeout=_float(env, "INKGATE_UPSTREAM_TIMEOUT", 120.0),
            deadline_seconds=_float(env, "INKGATE_DEADLINE_SECONDS", 280.0),
            image_concurrency=_int(env, "INKGATE_IMAGE_CONCURRENCY", 4),
            page_retries=_int(env, "INKGATE_PAGE_RETRIES", 3),
            keepalive_seconds=_float(env, "INKGATE_KEEPALIVE_SECONDS", 8.0),
            secret_key=env.get("INKGATE_SECRET_KEY") or None,
            log_level=(env.get("INKGATE_LOG_LEVEL") or "INFO").upper(),
            config_reload_seconds=_float(env, "INKGATE_CONFIG_RELOAD_SECONDS", 1.0),
            fetch_external_images=_bool(env.get("INKGATE_FETCH_EXTERNAL_IMAGES") or "false"),
            job_lease_seconds=_float(env, "INKGATE_JOB_LEASE_SECONDS", 30.0),
            usage_retention_days=_float(env, "INKGATE_USAGE_RETENTION_DAYS", 90.0),
            admin_session_hours=_float(env, "INKGATE_ADMIN_SESSION_HOURS", 12.0),
            storage=env.get("INKGATE_STORAGE") or None,
            s3_bucket=env.get("INKGATE_S3_BUCKET") or None,
            s3_access_key_id=env.get("INKGATE_S3_ACCESS_KEY_ID") or None,
            s3_secret_access_key=env.get("INKGATE_S3_SECRET_ACCESS_KEY") or None,
            s3_endpoint_url=env.get("INKGATE_S3_ENDPOINT_URL") or None,
            s3_region=env.get("INKGATE_S3_REGION") or None,
            r2_account_id=env.get("INKGATE_R2_ACCOUNT_ID") or None,
            s3_prefix=env.get("INKGATE_S3_PREFIX") or None,
            s3_public_base_url=env.get("INKGATE_S3_PUBLIC_BASE_URL") or None,
            image_urls=env.get("INKGATE_IMAGE_URLS") or None,
            presign_seconds=_opt(env, "INKGATE_PRESIGN_SECONDS", int),
            cache_ttl_hours=_opt(env, "INKGATE_CACHE_TTL_HOURS", float),
            cache_max_mb=_opt(env, "INKGATE_CACHE_MAX_MB", float),
            retention_days=_opt(env, "INKGATE_RETENTION_DAYS", float),
            retention_delete_remote=_opt(env, "INKGATE_RETENTION_DELETE_REMOTE", _bool),
            cache_sweep_seconds=_opt(env, "INKGATE_CACHE_SWEEP_SECONDS", float),
            upload_max_attempts=_opt(env, "INKGATE_UPLOAD_MAX_ATTEMPTS", int),
            serve_cache_mb=_opt(env, "INKGATE_SERVE_CACHE_MB", float),
            x_accel_redirect=env.get("INKGATE_X_ACCEL_REDIRECT") or None,
        )
        return replace(s, **overrides) if overrides else s

    def signing_secret(self) -> bytes:
        """The secret for signed links: the setting, else a file made once in the data dir.

        Read once per process (the app's lifespan warms it in a thread), so answering a
        request never touches the disk for it.
        """
        if self.secret_key:
            return self.secret_key.encode()
        return _secret_file(self.data_dir / "secret.key")


@functools.lru_cache(maxsize=8)
def _secret_file(path: Path) -> bytes:
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process made it first
            pass
        else:
            with os.fdopen(fd, "w") as fh:
                fh.write(secrets.token_hex(32))
    return path.read_text().strip().encode()
