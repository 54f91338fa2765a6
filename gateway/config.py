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
      clip:                       # a video model (a VideoProvider: kling)
        type: video
        provider: kling
        model: kling-v1-6

With no file, `redink` runs on the built-in offline `local` provider. Every post
model `X` also answers as `X-outline` (outline only).

Three layers make the config, lowest first: RedInk's provider files in the data
directory, `inkgate.yaml`, and the providers and models saved from the dashboard (the
database, gateway/config_store.py). An entry replaces a same-named entry of a lower
layer, so a dashboard entry overrides the file's; deleting it brings the file's back.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import anyio
import httpx
import yaml
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError
from sqlalchemy.exc import SQLAlchemyError

from gateway.redink_files import IMAGE_FILE, TEXT_FILE, RedInkConfigError, read_redink_files
from providers.base import ImageProvider, Provider, TextProvider, VideoProvider
from providers.registry import ProviderConfigError, build_provider, provider_types
from storage.config import StorageConfig, StorageConfigError

if TYPE_CHECKING:
    from gateway.config_store import ConfigStore, StoredConfig

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


class VideoModelConfig(_Strict):
    """A video model: `/v1/videos` and chat make videos with it (gateway/flow/videos.py)."""

    type: Literal["video"]
    provider: str
    model: str | None = None
    seconds: int = Field(default=5, ge=1, le=60, description="when the request names none")
    mode: str | None = Field(default=None, description="e.g. Kling's std | pro; None: provider's")
    aspect_ratio: str = Field(default="16:9", pattern=ASPECT_RATIO_PATTERN)


ModelConfig = Annotated[
    PostModelConfig | ImageModelConfig | VideoModelConfig, Field(discriminator="type")
]
MODEL_CONFIG: TypeAdapter[PostModelConfig | ImageModelConfig | VideoModelConfig] = TypeAdapter(
    ModelConfig
)


class ConfigFile(_Strict):
    providers: dict[str, dict] = Field(default_factory=dict)
    models: dict[str, ModelConfig] = Field(default_factory=dict)
    # read once at start by storage.config.StorageConfig (the environment wins)
    storage: dict[str, Any] = Field(default_factory=dict)


class ConfigError(ValueError):
    """The config file is invalid; the message says where."""


class ModelReferenceError(ConfigError):
    """A model names a provider that does not exist or cannot do the job; `field` is
    the model field (`text_provider`, `image_provider` or `provider`)."""

    def __init__(self, message: str, field: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass
class GatewayConfig:
    """Built providers and model definitions."""

    providers: dict[str, Provider] = field(default_factory=dict)
    # calls in flight per provider (its `max_concurrency`); absent: no cap
    provider_limits: dict[str, int] = field(default_factory=dict)
    post_models: dict[str, PostModelConfig] = field(default_factory=dict)
    image_models: dict[str, ImageModelConfig] = field(default_factory=dict)
    video_models: dict[str, VideoModelConfig] = field(default_factory=dict)

    def model_ids(self) -> list[str]:
        ids: list[str] = []
        for name in self.post_models:
            ids += [name, f"{name}-plan"]
        ids += list(self.image_models)
        ids += list(self.video_models)
        return ids

    def text_provider(self, name: str) -> TextProvider:
        provider = self.providers[name]
        assert isinstance(provider, TextProvider)
        return provider

    def image_provider(self, name: str) -> ImageProvider:
        provider = self.providers[name]
        assert isinstance(provider, ImageProvider)
        return provider

    def video_provider(self, name: str) -> VideoProvider:
        provider = self.providers[name]
        assert isinstance(provider, VideoProvider)
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


@dataclass
class ConfigLayers:
    """Where the entries come from, lowest first; a higher layer's entry replaces a
    same-named one below it."""

    redink: ConfigFile = field(default_factory=ConfigFile)  # RedInk's provider files
    file: ConfigFile = field(default_factory=ConfigFile)  # inkgate.yaml
    database: ConfigFile = field(default_factory=ConfigFile)  # saved from the dashboard

    def named(self) -> list[tuple[str, ConfigFile]]:
        """The layers, highest first."""
        return [("database", self.database), ("file", self.file), ("redink", self.redink)]

    def merged(self) -> ConfigFile:
        return ConfigFile(
            providers={**self.redink.providers, **self.file.providers, **self.database.providers},
            models={**self.redink.models, **self.file.models, **self.database.models},
            storage=self.file.storage,
        )


@dataclass
class LayerProblems:
    """Saved entries this process could not apply, and why (the files have no such
    leniency: a broken file is an error, as before)."""

    providers: dict[str, str] = field(default_factory=dict)
    models: dict[str, str] = field(default_factory=dict)
    general: list[str] = field(default_factory=list)


def read_layers(config_path: Path | None, data_dir: Path, env: Mapping[str, str]) -> ConfigLayers:
    """`inkgate.yaml` and RedInk's provider files from the data directory.

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
        return ConfigLayers(file=file)
    try:
        model = PostModelConfig.model_validate(choice.model)
    except ValidationError as exc:
        raise ConfigError(f"{TEXT_FILE}/{IMAGE_FILE}: {_problems(exc)}") from exc
    return ConfigLayers(
        redink=ConfigFile(providers=choice.providers, models={"redink": model}), file=file
    )


def read_sources(config_path: Path | None, data_dir: Path, env: Mapping[str, str]) -> ConfigFile:
    """`inkgate.yaml` plus RedInk's provider files, merged (see `read_layers`)."""
    return read_layers(config_path, data_dir, env).merged()


def database_layer(
    stored: StoredConfig, env: Mapping[str, str], problems: LayerProblems
) -> ConfigFile:
    """The saved entries as a layer; one that cannot be read here goes to `problems`."""
    providers: dict[str, dict] = {}
    for name, saved in stored.providers.items():
        if saved.unreadable:
            problems.providers[name] = "; ".join(f"{p}: {m}" for p, m in saved.unreadable.items())
            continue
        try:
            providers[name] = substitute_env(saved.entry(), env, f"provider {name!r}")
        except ConfigError as exc:
            problems.providers[name] = str(exc)
    models: dict[str, PostModelConfig | ImageModelConfig | VideoModelConfig] = {}
    for name, saved_model in stored.models.items():
        try:
            raw = substitute_env(saved_model.definition, env, f"model {name!r}")
            models[name] = MODEL_CONFIG.validate_python(raw)
        except ConfigError as exc:
            problems.models[name] = str(exc)
        except ValidationError as exc:
            problems.models[name] = f"model {name!r}: {_problems(exc)}"
    return ConfigFile(providers=providers, models=models)


def provider_classes(file: ConfigFile) -> dict[str, type[Provider] | None]:
    """Provider name → its class (None for an unknown type), `local` included."""
    types = provider_types()
    classes: dict[str, type[Provider] | None] = {"local": types["local"]}
    for name, entry in file.providers.items():
        classes[name] = types.get(str((entry or {}).get("type")))
    return classes


def check_references(
    name: str,
    model: PostModelConfig | ImageModelConfig | VideoModelConfig,
    classes: Mapping[str, type | None],
) -> None:
    """Raise `ModelReferenceError` when model `name` names a provider that is missing or
    cannot do its part."""
    if isinstance(model, PostModelConfig):
        needs = [
            ("text_provider", model.text_provider, TextProvider, "text"),
            ("image_provider", model.image_provider, ImageProvider, "image"),
        ]
    elif isinstance(model, VideoModelConfig):
        needs = [("provider", model.provider, VideoProvider, "video")]
    else:
        needs = [("provider", model.provider, ImageProvider, "image")]
    for field_name, provider, kind, what in needs:
        if provider not in classes:
            raise ModelReferenceError(f"model {name!r}: no provider named {provider!r}", field_name)
        cls = classes[provider]
        if cls is None or not issubclass(cls, kind):
            raise ModelReferenceError(
                f"model {name!r}: provider {provider!r} cannot do {what}", field_name
            )


def build_layers(
    layers: ConfigLayers, http: httpx.AsyncClient, problems: LayerProblems
) -> GatewayConfig:
    """Build the merged config. A saved entry that cannot be built here is left out (its
    reason in `problems`), so one bad row never stops a start or a reload; if the saved
    entries break the files' models, the files alone are used."""
    usable: dict[str, dict] = {}
    for name, entry in layers.database.providers.items():
        options = dict(entry)
        type_name = options.pop("type", None)
        options.pop("max_concurrency", None)
        try:
            build_provider(name, str(type_name), options, http)
        except (ProviderConfigError, ValueError) as exc:
            problems.providers[name] = str(exc)
            continue
        usable[name] = entry
    candidate = replace(layers, database=ConfigFile(providers=usable))
    classes = provider_classes(candidate.merged())
    models = {}
    for name, model in layers.database.models.items():
        try:
            check_references(name, model, classes)
        except ModelReferenceError as exc:
            problems.models[name] = str(exc)
            continue
        models[name] = model
    candidate.database.models = models
    try:
        return build_config(candidate.merged(), http)
    except (ConfigError, ProviderConfigError) as exc:
        if not (candidate.database.providers or candidate.database.models):
            raise
        problems.general.append(f"saved providers and models not applied: {exc}")
        return build_config(replace(layers, database=ConfigFile()).merged(), http)


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
        elif isinstance(model, VideoModelConfig):
            _need(providers, name, model.provider, VideoProvider, "video")
            config.video_models[name] = model
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
    """The current config, reloaded when one of its files or the saved entries change
    (no restart needed).

    `current` is what requests use. A broken edit is logged and kept in `error`; the
    last good config stays in use, so nothing running breaks. With a `store` (the
    database), its revision is compared on every check too: one small SELECT.
    """

    def __init__(
        self, config_path: Path | None, data_dir: Path, http: httpx.AsyncClient,
        env: Mapping[str, str], store: ConfigStore | None = None,
    ) -> None:  # fmt: skip
        self.paths = [p for p in (config_path, data_dir / TEXT_FILE, data_dir / IMAGE_FILE) if p]
        self.config_path, self.data_dir, self.http, self.env = config_path, data_dir, http, env
        self.store = store
        self.current = GatewayConfig()
        self.layers = ConfigLayers()
        self.stored: StoredConfig | None = None
        self.problems = LayerProblems()
        self.error: str | None = None
        self._signature: tuple | None = None
        self._revision: str | None = None
        self._lock = asyncio.Lock()

    def signature(self) -> tuple:
        out = []
        for path in self.paths:
            try:
                st = path.stat()
                out.append((str(path), st.st_mtime_ns, st.st_size))
            except FileNotFoundError:
                out.append((str(path), None, None))
        return tuple(out)

    def _load(
        self, stored: StoredConfig | None
    ) -> tuple[tuple, ConfigLayers, GatewayConfig, LayerProblems]:
        signature = self.signature()
        layers = read_layers(self.config_path, self.data_dir, self.env)
        problems = LayerProblems()
        if stored is not None:
            layers.database = database_layer(stored, self.env, problems)
        return signature, layers, build_layers(layers, self.http, problems), problems

    async def _load_now(self) -> None:
        stored = await self.store.read() if self.store is not None else None
        if stored is not None:
            self.stored = stored  # what is saved, even when the files keep it from applying
        try:
            signature, layers, config, problems = await anyio.to_thread.run_sync(self._load, stored)
        except ProviderConfigError as exc:
            raise ConfigError(str(exc)) from exc
        self._signature, self._revision = signature, stored.revision if stored else None
        self.current, self.layers, self.stored, self.problems = config, layers, stored, problems
        self.error = None
        for what, problem in [
            *(("provider", p) for p in problems.providers.values()),
            *(("model", m) for m in problems.models.values()),
            *(("config", g) for g in problems.general),
        ]:
            log.error("saved %s not applied: %s", what, problem)

    async def load(self) -> None:
        """Load now; raises `ConfigError` (used at start: a broken config stops the start)."""
        async with self._lock:
            await self._load_now()

    async def reload_now(self) -> str | None:
        """Load now (after a change through the admin API); the error when the files are
        broken, the previous config then staying in use."""
        async with self._lock:
            try:
                await self._load_now()
            except ConfigError as exc:
                self.error = str(exc)
                log.error("config not reloaded, keeping the previous one: %s", exc)
                return self.error
        return None

    async def reload_if_changed(self) -> bool:
        """Reload when a file or the saved entries changed; True when a new config is in use."""
        async with self._lock:
            signature = await anyio.to_thread.run_sync(self.signature)
            try:
                revision = await self.store.revision() if self.store is not None else None
            except SQLAlchemyError as exc:
                log.warning("config revision not readable, checking again later: %s", exc)
                return False
            if signature == self._signature and revision == self._revision:
                return False
            try:
                await self._load_now()
            except ConfigError as exc:
                self._signature, self._revision = signature, revision
                self.error = str(exc)
                log.error("config not reloaded, keeping the previous one: %s", exc)
                return False
            except SQLAlchemyError as exc:
                log.warning("saved config not readable, checking again later: %s", exc)
                return False
        log.info("config reloaded: models %s", ", ".join(self.current.model_ids()))
        return True

    async def watch(self, interval: float = 1.0) -> None:
        while True:
            await anyio.sleep(interval)
            try:
                await self.reload_if_changed()
            except Exception:  # the watcher must outlive any one failed check
                log.exception("config check failed")
