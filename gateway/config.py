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

from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

import httpx
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from providers.base import ImageProvider, Provider, TextProvider
from providers.registry import build_provider

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


ModelConfig = Annotated[PostModelConfig | ImageModelConfig, Field(discriminator="type")]


class ConfigFile(_Strict):
    providers: dict[str, dict] = Field(default_factory=dict)
    models: dict[str, ModelConfig] = Field(default_factory=dict)


class ConfigError(ValueError):
    """The config file is invalid; the message says where."""


@dataclass
class GatewayConfig:
    """Built providers and model definitions."""

    providers: dict[str, Provider] = field(default_factory=dict)
    post_models: dict[str, PostModelConfig] = field(default_factory=dict)
    image_models: dict[str, ImageModelConfig] = field(default_factory=dict)

    def model_ids(self) -> list[str]:
        ids: list[str] = []
        for name in self.post_models:
            ids += [name, f"{name}-outline"]
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


def read_config_file(path: Path | None) -> ConfigFile:
    if path is None or not path.exists():
        return ConfigFile()
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    try:
        return ConfigFile.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigError(f"{path}: {problems}") from exc


def build_config(file: ConfigFile, http: httpx.AsyncClient) -> GatewayConfig:
    """Build every provider and check every model's references."""
    raw_providers = {"local": {"type": "local"}, **file.providers}
    providers: dict[str, Provider] = {}
    for name, entry in raw_providers.items():
        entry = dict(entry or {})
        type_name = entry.pop("type", None)
        if not type_name:
            raise ConfigError(f"provider {name!r}: missing 'type'")
        providers[name] = build_provider(name, type_name, entry, http)

    config = GatewayConfig(providers=providers)
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
