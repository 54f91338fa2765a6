"""Maps a config `type` to its provider class. The only place that branches on type."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import httpx
from pydantic import ValidationError

from providers.base import Provider

_TYPES: dict[str, type[Provider]] = {}

P = TypeVar("P", bound=type[Provider])


def register(type_name: str) -> Callable[[P], P]:
    """Class decorator: make `type_name` in the config build this class."""

    def decorate(cls: P) -> P:
        if type_name in _TYPES and _TYPES[type_name] is not cls:
            raise ValueError(f"provider type {type_name!r} registered twice")
        cls.type = type_name
        _TYPES[type_name] = cls
        return cls

    return decorate


def _load_builtins() -> None:
    # Importing a module registers its classes.
    from providers import gemini, kling, local, openai, vidsme  # noqa: F401


def provider_types() -> dict[str, type[Provider]]:
    _load_builtins()
    return dict(_TYPES)


class ProviderConfigError(ValueError):
    """A provider entry in the config cannot be built."""


def build_provider(
    name: str, type_name: str, options: dict[str, Any], http: httpx.AsyncClient
) -> Provider:
    """Build provider `name` of `type_name` from its raw options."""
    types = provider_types()
    cls = types.get(type_name)
    if cls is None:
        known = ", ".join(sorted(types))
        raise ProviderConfigError(f"provider {name!r}: unknown type {type_name!r} (known: {known})")
    try:
        opts = cls.Options.model_validate(options or {})
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(options)'}: {err['msg']}"
            for err in exc.errors()
        )
        raise ProviderConfigError(f"provider {name!r} ({type_name}): {problems}") from exc
    return cls(name, opts, http)
