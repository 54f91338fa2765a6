"""Providers and models from `inkgate.yaml` (path: `INKGATE_CONFIG`).

    providers:
      relay:                      # a name you choose
        type: openai              # a registered provider type
        base_url: https://relay.example.com/v1
        api_key: sk-...
    models:
      redink:                     # a post model: outline (text) + pages (image)
        type: redink
        text_provider: relay
        text_model: gpt-4o-mini
        image_provider: relay
        image_model: gpt-image-1
        concurrency: 8
      poster:                     # a plain image model
        type: image
        provider: relay
        model: gpt-image-1

With no file, `redink` runs on the built-in offline `local` provider. Every post
model `X` also answers as `X-outline` (outline only).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import anyio
import httpx
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gateway.redink_files import IMAGE_FILE, TEXT_FILE, RedInkConfigError, read_redink_files
from providers.base import ImageProvider, Provider, TextProvider
from providers.registry import ProviderConfigError, build_provider
from storage.config import StorageConfig, StorageConfigError

log = logging.getLogger("inkgate.config")

ASPECT_RATIO_PATTERN = r"^\d{1,2}:\d{1,2}$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PostModelConfig(_Strict):
    type: Literal["redink"] = "redink"
    text_provider: str = "local"
    text_model: str | None = None
    image_provider: str = "local"
    image_model: str | None = None
    concurrency: int = Field(default=0, ge=0, le=64, description="0 = INKGATE_IMAGE_CONCURRENCY")
    aspect_ratio: str = Field(default="3:4", pattern=ASPECT_RATIO_PATTERN)
    short_prompt: bool = False
    image_size: str | None = None
    temperature: float | None = None


class ImageModelConfig(_Strict):
    type: Literal["image"]
    provider: str
    model: str | None = None
    aspect_ratio: str = Field(default="1:1", pattern=ASPECT_RATIO_PATTERN)
    # identical requests within this many seconds reuse the stored images; 0 = off
    result_cache_seconds: int = Field(default=0, ge=0, le=30 * 86400)


ModelConfig = Annotated[PostModelConfig | ImageModelConfig, Field(discriminator="type")]


class ConfigFile(_Strict):
    providers: dict[str, dict] = Field(default_factory=dict)
    models: dict[str, ModelConfig] = Field(default_factory=dict)
    # read once at start by storage.config.StorageConfig (the environment wins)
    storage: dict[str, Any] = Field(default_factory=dict)


class ConfigError(ValueError):
    """The config file is invalid; the message says where."""


@dataclass
class GatewayConfig:
    """Built providers and model definitions."""

    providers: dict[str, Provider] = field(default_factory=dict)
    # calls in flight per provider (its `max_concurrency`); absent: no cap
    provider_limits: dict[str, int] = field(default_factory=dict)
    post_models: dict[str, PostModelConfig] = field(default_factory=dict)
    image_models: dict[str, ImageModelConfig] = field(default_factory=dict)

    def model_ids(self) -> list[str]:
        ids: list[str] = []
        for name in self.post_models:
            ids += [name, f"{name}-plan"]
        ids += list(self.image_models)
        return ids

    def text_provider(self, name: str) -> TextProvider:
        provider = self.providers[name]
        assert isinstance(provider, TextProvider)
        return provider

    def image_provider(self, name: str) -> ImageProvider:
        provider = self.providers[name]
        assert isinstance(provider, ImageProvider)
        return provider


_ENV_REF = re.compile(r"\$(\$?)\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def substitute_env(value: Any, env: Mapping[str, str], where: str = "") -> Any:
    """`${NAME}` and `${NAME:-default}` in every string, from `env`; `$${NAME}` is literal."""
    if isinstance(value, dict):
        return {
            k: substitute_env(v, env, f"{where}.{k}" if where else str(k)) for k, v in value.items()
        }
    if isinstance(value, list):
        return [substitute_env(v, env, f"{where}[{i}]") for i, v in enumerate(value)]
    if not isinstance(value, str) or "${" not in value:
        return value

    def replace(match: re.Match) -> str:
        escaped, name, default = match.groups()
        if escaped:
            return match.group(0)[1:]
        if name in env:
            return env[name]
        if default is not None:
            return default
        raise ConfigError(f"{where}: environment variable {name} is not set")

    return _ENV_REF.sub(replace, value)


def _read_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read ({exc.strerror})") from exc


def _problems(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
    )


def read_config_file(path: Path | None, env: Mapping[str, str] | None = None) -> ConfigFile:
    if path is None or not path.exists():
        return ConfigFile()
    raw = substitute_env(_read_yaml(path) or {}, env if env is not None else {})
    try:
        return ConfigFile.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{path}: {_problems(exc)}") from exc


def read_sources(config_path: Path | None, data_dir: Path, env: Mapping[str, str]) -> ConfigFile:
    """`inkgate.yaml` plus RedInk's provider files from the data directory.

    RedInk's active providers become the `redink` model's providers unless
    `inkgate.yaml` defines a `redink` model itself.
    """
    file = read_config_file(config_path, env)
    texts, images = (data_dir / TEXT_FILE, data_dir / IMAGE_FILE)
    text_data = substitute_env(_read_yaml(texts), env, texts.name) if texts.exists() else None
    image_data = substitute_env(_read_yaml(images), env, images.name) if images.exists() else None
    try:
        choice = read_redink_files(text_data, image_data, data_dir)
    except RedInkConfigError as exc:
        raise ConfigError(str(exc)) from exc
    if choice is None or "redink" in file.models:
        return file
    try:
        model = PostModelConfig.model_validate(choice.model)
    except ValidationError as exc:
        raise ConfigError(f"{TEXT_FILE}/{IMAGE_FILE}: {_problems(exc)}") from exc
    return ConfigFile(
        providers={**choice.providers, **file.providers},
        models={"redink": model, **file.models},
    )


def storage_config(settings) -> StorageConfig:
    """Storage options: the environment (via settings) over inkgate.yaml's `storage:`."""
    file = read_config_file(settings.config_path, os.environ)
    try:
        return StorageConfig.resolve(settings, file.storage)
    except StorageConfigError as exc:
        raise ConfigError(str(exc)) from exc


def build_config(file: ConfigFile, http: httpx.AsyncClient) -> GatewayConfig:
    """Build every provider and check every model's references."""
    raw_providers = {"local": {"type": "local"}, **file.providers}
    providers: dict[str, Provider] = {}
    limits: dict[str, int] = {}
    for name, entry in raw_providers.items():
        entry = dict(entry or {})
        type_name = entry.pop("type", None)
        if not type_name:
            raise ConfigError(f"provider {name!r}: missing 'type'")
        limit = entry.pop("max_concurrency", None)
        if limit is not None:
            if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
                raise ConfigError(f"provider {name!r}: max_concurrency must be a whole number >= 1")
            limits[name] = limit
        providers[name] = build_provider(name, type_name, entry, http)

    config = GatewayConfig(providers=providers, provider_limits=limits)
    models = dict(file.models)
    if not any(isinstance(m, PostModelConfig) for m in models.values()):
        models.setdefault("redink", PostModelConfig())
    for name, model in models.items():
        if isinstance(model, PostModelConfig):
            _need(providers, name, model.text_provider, TextProvider, "text")
            _need(providers, name, model.image_provider, ImageProvider, "image")
            config.post_models[name] = model
        else:
            _need(providers, name, model.provider, ImageProvider, "image")
            config.image_models[name] = model
    return config


def _need(providers: dict[str, Provider], model: str, name: str, kind: type, what: str) -> None:
    if name not in providers:
        raise ConfigError(f"model {model!r}: no provider named {name!r}")
    if not isinstance(providers[name], kind):
        raise ConfigError(f"model {model!r}: provider {name!r} cannot do {what}")


def load_config(path: Path | None, http: httpx.AsyncClient) -> GatewayConfig:
    return build_config(read_config_file(path), http)


class ConfigSource:
    """The current config, reloaded when one of its files changes (no restart needed).

    `current` is what requests use. A broken edit is logged and kept in `error`; the
    last good config stays in use, so nothing running breaks.
    """

    def __init__(
        self, config_path: Path | None, data_dir: Path, http: httpx.AsyncClient,
        env: Mapping[str, str],
    ) -> None:  # fmt: skip
        self.paths = [p for p in (config_path, data_dir / TEXT_FILE, data_dir / IMAGE_FILE) if p]
        self.config_path, self.data_dir, self.http, self.env = config_path, data_dir, http, env
        self.current = GatewayConfig()
        self.error: str | None = None
        self._signature: tuple | None = None

    def signature(self) -> tuple:
        out = []
        for path in self.paths:
            try:
                st = path.stat()
                out.append((str(path), st.st_mtime_ns, st.st_size))
            except FileNotFoundError:
                out.append((str(path), None, None))
        return tuple(out)

    def _load(self) -> tuple[tuple, GatewayConfig]:
        signature = self.signature()
        file = read_sources(self.config_path, self.data_dir, self.env)
        return signature, build_config(file, self.http)

    async def load(self) -> None:
        """Load now; raises `ConfigError` (used at start: a broken config stops the start)."""
        try:
            self._signature, self.current = await anyio.to_thread.run_sync(self._load)
        except ProviderConfigError as exc:
            raise ConfigError(str(exc)) from exc
        self.error = None

    async def reload_if_changed(self) -> bool:
        """Reload when a file changed; True when a new config is in use."""
        if await anyio.to_thread.run_sync(self.signature) == self._signature:
            return False
        try:
            await self.load()
        except ConfigError as exc:
            self._signature = await anyio.to_thread.run_sync(self.signature)
            self.error = str(exc)
            log.error("config not reloaded, keeping the previous one: %s", exc)
            return False
        log.info("config reloaded: models %s", ", ".join(self.current.model_ids()))
        return True

    async def watch(self, interval: float = 1.0) -> None:
        while True:
            await anyio.sleep(interval)
            await self.reload_if_changed()
