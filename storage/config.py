"""Where images live and how long: resolved from settings and `inkgate.yaml`.

Each option comes from its `INKGATE_*` environment variable when set, else from the
`storage:` section of `inkgate.yaml` (same names, lower case, without the prefix:
`storage`, `s3_bucket`, ..., `cache_ttl_hours`), else the default. Read once at start.

The cache options in `RUNTIME_OPTIONS` can also be changed from the dashboard while the
app runs: those values are kept in the database (every replica reads them at the start
of each sweep, storage/lifecycle.py) and win over the environment and the file.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

MAX_PRESIGN_SECONDS = 7 * 24 * 3600
# the options the dashboard may override at runtime (see `with_overrides`)
RUNTIME_OPTIONS = ("cache_ttl_hours", "cache_max_mb", "retention_days", "retention_delete_remote")


class StorageConfigError(ValueError):
    """A storage option is missing or invalid; the message says which."""


@dataclass(frozen=True)
class StorageConfig:
    storage: str = "local"  # local | s3 | r2
    s3_bucket: str | None = None
    s3_access_key_id: str | None = None
    s3_secret_access_key: str | None = None
    s3_endpoint_url: str | None = None
    s3_region: str | None = None
    r2_account_id: str | None = None
    s3_prefix: str = ""
    s3_public_base_url: str | None = None
    image_urls: str = "gateway"  # gateway | public | presigned
    presign_seconds: int = 3600
    cache_ttl_hours: float = 72.0
    cache_max_mb: float = 0.0
    retention_days: float = 365.0
    retention_delete_remote: bool = False
    cache_sweep_seconds: float = 600.0
    upload_max_attempts: int = 10
    serve_cache_mb: float = 128.0
    x_accel_redirect: str = ""  # e.g. /_inkgate_blobs/ : nginx sends local files

    def __repr__(self) -> str:  # never the secret
        shown = {f.name: getattr(self, f.name) for f in fields(self)}
        if shown["s3_secret_access_key"]:
            shown["s3_secret_access_key"] = "***"
        return "StorageConfig(" + ", ".join(f"{k}={v!r}" for k, v in shown.items()) + ")"

    @property
    def remote(self) -> bool:
        return self.storage in ("s3", "r2")

    @property
    def origins(self) -> dict[str, str]:
        """Where each option came from: "dashboard", "environment", "config file" or
        "default" (options missing here: "default"). Kept outside the fields, so it is
        never compared, printed or taken for an option."""
        return self.__dict__.get("_origins", {})

    def _with_origins(self, origins: dict[str, str]) -> StorageConfig:
        object.__setattr__(self, "_origins", origins)  # frozen: set once, at construction
        return self

    def with_overrides(self, overrides: dict[str, Any]) -> StorageConfig:
        """This config with the dashboard's values of `RUNTIME_OPTIONS` (other names are
        ignored); raises StorageConfigError on an invalid value."""
        defaults = {f.name: f.default for f in fields(self)}
        values = {
            name: _coerce(name, value, defaults[name])
            for name, value in overrides.items()
            if name in RUNTIME_OPTIONS and value is not None
        }
        if not values:
            return self
        for name, value in values.items():
            if not isinstance(value, bool) and value < 0:
                raise StorageConfigError(f"{name} must not be negative")
        config = replace(self, **values)
        return config._with_origins({**self.origins, **dict.fromkeys(values, "dashboard")})

    @classmethod
    def resolve(cls, settings: Any, section: dict | None = None) -> StorageConfig:
        """Environment (via `settings`) over the yaml `section` over the defaults."""
        section = dict(section or {})
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(section) - names)
        if unknown:
            raise StorageConfigError(f"storage: unknown option(s) {', '.join(unknown)}")
        values: dict[str, Any] = {}
        origins: dict[str, str] = {}
        for f in fields(cls):
            env_value = getattr(settings, f.name, None)
            value = env_value if env_value is not None else section.get(f.name)
            if value is not None:
                values[f.name] = _coerce(f.name, value, f.default)
            origins[f.name] = (
                "environment" if env_value is not None
                else "config file" if value is not None
                else "default"
            )  # fmt: skip
        config = cls(**values)
        config.validate()
        return config._with_origins(origins)

    def validate(self) -> None:
        if self.storage not in ("local", "s3", "r2"):
            raise StorageConfigError(
                f"INKGATE_STORAGE must be local, s3 or r2, not {self.storage!r}"
            )
        if self.image_urls not in ("gateway", "public", "presigned"):
            raise StorageConfigError(
                f"INKGATE_IMAGE_URLS must be gateway, public or presigned, not {self.image_urls!r}"
            )
        if not 1 <= self.presign_seconds <= MAX_PRESIGN_SECONDS:
            raise StorageConfigError(
                f"INKGATE_PRESIGN_SECONDS must be between 1 and {MAX_PRESIGN_SECONDS} (7 days)"
            )
        for name in (
            "cache_ttl_hours", "cache_max_mb", "retention_days", "cache_sweep_seconds",
            "serve_cache_mb",
        ):  # fmt: skip
            if getattr(self, name) < 0:
                raise StorageConfigError(f"INKGATE_{name.upper()} must not be negative")
        if self.x_accel_redirect and not (
            self.x_accel_redirect.startswith("/") and self.x_accel_redirect.endswith("/")
        ):
            raise StorageConfigError(
                "INKGATE_X_ACCEL_REDIRECT must be an nginx location like /_inkgate_blobs/"
            )
        if self.upload_max_attempts < 1:
            raise StorageConfigError("INKGATE_UPLOAD_MAX_ATTEMPTS must be at least 1")
        if self.remote:
            missing = [
                f"INKGATE_{name.upper()}"
                for name in ("s3_bucket", "s3_access_key_id", "s3_secret_access_key")
                if not getattr(self, name)
            ]
            if self.storage == "r2" and not (self.r2_account_id or self.s3_endpoint_url):
                missing.append("INKGATE_R2_ACCOUNT_ID")
            if missing:
                raise StorageConfigError(
                    f"INKGATE_STORAGE={self.storage} needs {', '.join(missing)}"
                )
        elif self.image_urls != "gateway":
            raise StorageConfigError(
                f"INKGATE_IMAGE_URLS={self.image_urls} needs INKGATE_STORAGE=s3 or r2"
            )
        if self.image_urls == "public" and not self.s3_public_base_url:
            raise StorageConfigError("INKGATE_IMAGE_URLS=public needs INKGATE_S3_PUBLIC_BASE_URL")


def _coerce(name: str, value: Any, default: Any) -> Any:
    try:
        if isinstance(default, bool):
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if isinstance(default, int):
            if isinstance(value, bool):
                raise ValueError
            return int(value)
        if isinstance(default, float):
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        return str(value).strip()
    except (TypeError, ValueError):
        raise StorageConfigError(f"storage: {name} has an invalid value {value!r}") from None
