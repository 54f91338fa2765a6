"""RedInk's `text_providers.yaml` and `image_providers.yaml`, read as RedInk did.

Each file has `active_provider` and `providers`; the active text and image
providers become the `redink` model's providers. RedInk's types map onto ours:

| RedInk type | InkGate provider |
|---|---|
| text `openai_compatible` | `openai` (chat completions) |
| text `google_gemini` | `gemini` |
| image `google_genai` | `gemini` (image model) |
| image `image_api`, `openai_compatible` | `openai` (`endpoint_type` picks the Images API or chat) |

Only the mapping lives here; building and validating the providers is the config's job.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

TEXT_FILE = "text_providers.yaml"
IMAGE_FILE = "image_providers.yaml"

ENDPOINT_SHORTHANDS = {"images": "/v1/images/generations", "chat": "/v1/chat/completions"}
ENDPOINT_SUFFIXES = ("/chat/completions", "/images/generations", "/images/edits")
HIGH_CONCURRENCY = 15


class RedInkConfigError(ValueError):
    """A RedInk file is not usable; the message says which file and field."""


@dataclass(frozen=True)
class RedInkChoice:
    """The providers and `redink` model settings that RedInk's files describe."""

    providers: dict[str, dict[str, Any]]
    model: dict[str, Any]


def api_root(base_url: str) -> str:
    """`base_url` without a trailing `/` or a trailing `/v1` path segment.

    Only a whole `/v1` segment of the path goes: `https://api.openai.co` keeps its host.
    """
    parts = urlsplit(base_url.strip())
    path = parts.path.rstrip("/")
    if path.endswith("/v1"):
        path = path[: -len("/v1")]
    return urlunsplit((parts.scheme, parts.netloc, path, parts.query, "")).rstrip("/")


def openai_base(base_url: str | None, endpoint_type: str | None) -> str:
    """The prefix in front of `/chat/completions` etc. for RedInk's base_url + endpoint_type."""
    root = api_root(base_url or "https://api.openai.com")
    endpoint = ENDPOINT_SHORTHANDS.get((endpoint_type or "").strip(), (endpoint_type or "").strip())
    if not endpoint:
        return root + "/v1"
    if not endpoint.startswith("/"):
        endpoint = "/" + endpoint
    for suffix in ENDPOINT_SUFFIXES:
        if endpoint.endswith(suffix):
            return root + endpoint[: -len(suffix)]
    raise RedInkConfigError(
        f"endpoint_type {endpoint_type!r}: expected /v1/chat/completions, "
        "/v1/images/generations, /v1/images/edits, 'images' or 'chat'"
    )


def _active(path: Path, data: Any) -> tuple[str, dict[str, Any]]:
    if not isinstance(data, dict):
        raise RedInkConfigError(f"{path.name}: expected active_provider and providers")
    providers = data.get("providers")
    active = data.get("active_provider")
    if not isinstance(providers, dict) or not providers:
        raise RedInkConfigError(f"{path.name}: no providers")
    if active is None:
        raise RedInkConfigError(f"{path.name}: no active_provider")
    if str(active) not in {str(k) for k in providers}:
        names = ", ".join(str(k) for k in providers)
        raise RedInkConfigError(
            f"{path.name}: active_provider {active!r} is not among the providers ({names})"
        )
    entry = next(v for k, v in providers.items() if str(k) == str(active))
    if not isinstance(entry, dict):
        raise RedInkConfigError(f"{path.name}: provider {active!r} must be a mapping")
    return str(active), entry


def _drop_none(values: dict[str, Any]) -> dict[str, Any]:
    # RedInk writes empty strings and 0 for "not set"
    return {
        k: v
        for k, v in values.items()
        if v is not None and v != "" and not (k in ("max_tokens", "max_output_tokens") and not v)
    }


def text_provider(path: Path, data: Any) -> tuple[str, dict[str, Any]]:
    name, entry = _active(path, data)
    kind = entry.get("type")
    common = {
        "api_key": entry.get("api_key"),
        "text_model": entry.get("model"),
        "temperature": entry.get("temperature"),
    }
    if kind == "openai_compatible":
        options = {
            "type": "openai",
            "base_url": openai_base(entry.get("base_url"), entry.get("endpoint_type")),
            "max_tokens": entry.get("max_output_tokens"),
            **common,
        }
    elif kind == "google_gemini":
        options = {
            "type": "gemini",
            "base_url": api_root(entry["base_url"]) if entry.get("base_url") else None,
            "max_output_tokens": entry.get("max_output_tokens"),
            **common,
        }
    else:
        raise RedInkConfigError(
            f"{path.name}: provider {name!r} has type {kind!r}; "
            "text types are openai_compatible and google_gemini"
        )
    return f"text:{name}", _drop_none(options)


def image_provider(path: Path, data: Any) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """(provider name, provider options, `redink` model settings) of the active image provider."""
    name, entry = _active(path, data)
    kind = entry.get("type")
    if kind == "google_genai":
        options = {
            "type": "gemini",
            "base_url": api_root(entry["base_url"]) if entry.get("base_url") else None,
            "api_key": entry.get("api_key"),
            "image_model": entry.get("model"),
            "image_size": entry.get("image_size"),
        }
    elif kind in ("image_api", "openai_compatible"):
        endpoint = str(entry.get("endpoint_type") or "/v1/images/generations").strip()
        endpoint = ENDPOINT_SHORTHANDS.get(endpoint, endpoint)
        options = {
            "type": "openai",
            "base_url": openai_base(entry.get("base_url"), endpoint),
            "api_key": entry.get("api_key"),
            "image_model": entry.get("model"),
            "image_endpoint": "chat" if endpoint.endswith("/chat/completions") else "images",
            "image_size": entry.get("default_size"),
            "quality": entry.get("quality"),
        }
    else:
        raise RedInkConfigError(
            f"{path.name}: provider {name!r} has type {kind!r}; "
            "image types are google_genai, image_api and openai_compatible"
        )
    model: dict[str, Any] = {"short_prompt": bool(entry.get("short_prompt", False))}
    if "high_concurrency" in entry:
        model["concurrency"] = HIGH_CONCURRENCY if entry["high_concurrency"] else 1
    if entry.get("default_aspect_ratio"):
        model["aspect_ratio"] = str(entry["default_aspect_ratio"])
    return f"image:{name}", _drop_none(options), model


def read_redink_files(
    text_data: Any | None, image_data: Any | None, directory: Path
) -> RedInkChoice | None:
    """The providers and model settings the RedInk files describe (None when neither exists)."""
    if text_data is None and image_data is None:
        return None
    providers: dict[str, dict[str, Any]] = {}
    model: dict[str, Any] = {"type": "redink"}
    if text_data is not None:
        name, options = text_provider(directory / TEXT_FILE, text_data)
        providers[name] = options
        model["text_provider"] = name
    if image_data is not None:
        name, options, settings = image_provider(directory / IMAGE_FILE, image_data)
        providers[name] = options
        model["image_provider"] = name
        model.update(settings)
    return RedInkChoice(providers, model)
