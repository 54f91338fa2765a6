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
    "INKGATE_PUBLIC_BASE_URL": "Absolute base of returned URLs, e.g. `https://img.example.com`.",
    "INKGATE_TRUSTED_PROXIES": "Comma-separated IPs/CIDRs whose `X-Forwarded-*` are trusted.",
    "INKGATE_CONFIG": "Path of the provider/model config. Default `<data dir>/inkgate.yaml`.",
    "INKGATE_MAX_BODY_BYTES": "Largest accepted request body. Default 26214400 (25 MiB).",
    "INKGATE_UPSTREAM_TIMEOUT": "Seconds one upstream call (one attempt) may take. Default 120.",
    "INKGATE_DEADLINE_SECONDS": "Overall time for an outline, a page or an image call, retries included. Default 280.",
    "INKGATE_IMAGE_CONCURRENCY": "Default pages generated at once per post. Default 4.",
    "INKGATE_PAGE_RETRIES": "Attempts per page on transient upstream errors. Default 3.",
    "INKGATE_KEEPALIVE_SECONDS": "Silence before a `: keep-alive` SSE comment. Default 8.",
    "INKGATE_SECRET_KEY": "Secret that signs download links. Default: generated once in the data dir.",
    "INKGATE_LOG_LEVEL": "Log level. Default `INFO`.",
    "INKGATE_CONFIG_RELOAD_SECONDS": "How often config files are checked for changes. Default 1.",
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
    retry_base_delay: float = field(default=1.0, repr=False)

    def __post_init__(self) -> None:
        data_dir = Path(self.data_dir).expanduser().resolve()
        object.__setattr__(self, "data_dir", data_dir)
        if not self.database_url:
            object.__setattr__(self, "database_url", f"sqlite:///{data_dir / 'inkgate.db'}")
        if self.config_path is None:
            object.__setattr__(self, "config_path", data_dir / "inkgate.yaml")
        if self.public_base_url:
            object.__setattr__(self, "public_base_url", self.public_base_url.rstrip("/"))
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
