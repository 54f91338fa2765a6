"""`/admin/api/providers` and `/admin/api/models`: the JSON behind the dashboard's
"Providers & models" page.

Entries come from RedInk's provider files, `inkgate.yaml` and the database
(gateway/config.py). Only saved (database) entries are changed here; saving one with the
name of a file entry overrides that entry until the saved one is deleted. Every write is
checked by building the provider (no network) and the models' references before it is
stored, bumps the config revision (every replica reloads within
`INKGATE_CONFIG_RELOAD_SECONDS`) and reloads this process at once.

Secrets are write-only: answers show them masked (`sk-a…9f3c`), a secret sent blank or
masked keeps the stored one, and test reports and errors are scrubbed of them.
"""

from __future__ import annotations

import json
import re
from dataclasses import replace
from typing import Annotated, Any, NoReturn

from fastapi import APIRouter, Body, Request
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

from admin.api import Admin
from gateway.config import (
    MODEL_CONFIG,
    ConfigError,
    ConfigSource,
    GatewayConfig,
    ImageModelConfig,
    ModelReferenceError,
    PostModelConfig,
    VideoModelConfig,
    check_references,
    substitute_env,
)
from gateway.config_store import ConfigStore
from gateway.errors import Conflict, InvalidRequest, NotFound
from gateway.probe import probe
from gateway.secrets_box import get_path, masked, merge_options, scrub, secret_fields, secret_paths
from providers.base import ImageProvider, Provider, TextProvider, VideoProvider
from providers.registry import ProviderConfigError, build_provider, provider_types

router = APIRouter(prefix="/admin/api", tags=["admin"])

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,63}$")
MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,199}$")
UNSAVED = "unsaved"  # the name an unsaved provider is tested under
ROLE_KINDS = {"text": TextProvider, "image": ImageProvider, "video": VideoProvider}
MODEL_TYPES = ("redink", "image", "video")
AnyModel = PostModelConfig | ImageModelConfig | VideoModelConfig


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ProviderIn(_Body):
    name: str = Field(description="Letters, digits and . _ : @ -; at most 64.")
    type: str = Field(description="A registered provider type (see `types`).")
    options: dict[str, Any] = Field(default_factory=dict)
    max_concurrency: int | None = Field(default=None, ge=1, le=10_000)


class ProviderPatch(_Body):
    """Only what is sent changes; in `options`, `null` removes an option and a secret
    sent blank or masked keeps the stored one."""

    type: str | None = None
    options: dict[str, Any] = Field(default_factory=dict)
    max_concurrency: int | None = Field(default=None, ge=1, le=10_000)


class ProviderTestIn(_Body):
    """Options not saved yet. With the `name` of an existing provider of the same type,
    options and secrets not sent (or sent blank) are that provider's."""

    name: str | None = None
    type: str
    options: dict[str, Any] = Field(default_factory=dict)


# -- reading the layers ---------------------------------------------------------------


def _source(request: Request) -> ConfigSource:
    return request.app.state.config_source


def _store(source: ConfigSource) -> ConfigStore:
    if source.store is None:  # pragma: no cover - the app always has one
        raise Conflict("This gateway has no database for saved providers and models.")
    return source.store


def _provider_origins(source: ConfigSource, name: str) -> list[str]:
    """The layers that define provider `name`, highest first."""
    out = ["database"] if source.stored and name in source.stored.providers else []
    out += [origin for origin, layer in source.layers.named()[1:] if name in layer.providers]
    return out + (["builtin"] if name == "local" else [])


def _model_origins(source: ConfigSource, name: str) -> list[str]:
    out = ["database"] if source.stored and name in source.stored.models else []
    out += [origin for origin, layer in source.layers.named()[1:] if name in layer.models]
    if not out and name in source.current.post_models:
        out.append("builtin")  # the default `redink` on `local`
    return out


def _entry(source: ConfigSource, name: str, origin: str) -> tuple[str, dict, int | None]:
    """(type, options, max_concurrency) of provider `name` in layer `origin`; a saved one
    with `${ENV}` references as written."""
    if origin == "database":
        saved = source.stored.providers[name]
        return saved.type, dict(saved.options), saved.max_concurrency
    if origin == "builtin":
        return "local", {}, None
    entry = dict(dict(source.layers.named())[origin].providers[name] or {})
    return str(entry.pop("type", "")), entry, entry.pop("max_concurrency", None)


def _capabilities(cls: type[Provider] | None) -> list[str]:
    kinds = (("text", TextProvider), ("image", ImageProvider), ("video", VideoProvider))
    return [name for name, kind in kinds if cls is not None and issubclass(cls, kind)]


def _roles(config: GatewayConfig, name: str) -> list[tuple[str, str]]:
    """(model, role) for every model that uses provider `name`."""
    out = []
    for model_name, model in config.post_models.items():
        out += [(model_name, "text")] if model.text_provider == name else []
        out += [(model_name, "image")] if model.image_provider == name else []
    out += [(m, "image") for m, model in config.image_models.items() if model.provider == name]
    out += [(m, "video") for m, model in config.video_models.items() if model.provider == name]
    return out


def _current_model(config: GatewayConfig, name: str) -> AnyModel | None:
    return (
        config.post_models.get(name)
        or config.image_models.get(name)
        or config.video_models.get(name)
    )


def _provider_public(source: ConfigSource, name: str) -> dict:
    origins = _provider_origins(source, name)
    if not origins:  # deleted through another replica a moment ago
        raise NotFound(f"No provider named {name!r}", code="provider_not_found")
    type_name, options, limit = _entry(source, name, origins[0])
    cls = provider_types().get(type_name)
    paths = secret_paths(cls, options) if cls else []
    saved = source.stored.providers[name] if origins[0] == "database" else None
    problem = source.problems.providers.get(name) if saved else None
    return {
        "name": name,
        "object": "provider",
        "type": type_name,
        "source": origins[0],
        "editable": saved is not None,
        "overrides": origins[1] if len(origins) > 1 else None,
        "active": name in source.current.providers and problem is None,
        "problem": problem,
        "capabilities": _capabilities(cls),
        "options": masked(options, paths),
        "secret_fields": [".".join(p) for p in paths],
        "max_concurrency": limit,
        "used_by": sorted({model for model, _ in _roles(source.current, name)}),
        "created_at": saved.created_at if saved else None,
        "updated_at": saved.updated_at if saved else None,
    }


def _type_public(type_name: str, cls: type[Provider]) -> dict:
    try:
        schema = cls.Options.model_json_schema()
    except Exception:  # pragma: no cover - a schema pydantic cannot write
        schema = {}
    doc = (cls.__doc__ or "").strip()
    return {
        "type": type_name,
        "description": doc.splitlines()[0] if doc else "",
        "capabilities": _capabilities(cls),
        "secret_fields": list(secret_fields(cls)),
        "options_schema": schema,
    }


def _model_public(source: ConfigSource, name: str) -> dict:
    origins = _model_origins(source, name)
    if not origins:
        raise NotFound(f"No model named {name!r}", code="model_not_found")
    saved = source.stored.models[name] if origins[0] == "database" else None
    problem = source.problems.models.get(name) if saved else None
    model = _current_model(source.current, name)
    if saved is not None:
        try:
            model = MODEL_CONFIG.validate_python(saved.definition)
        except ValidationError:
            model = None
    definition = model.model_dump(mode="json") if model else (saved.definition if saved else {})
    post = isinstance(model, PostModelConfig)
    return {
        "name": name,
        "object": "model",
        "type": definition.get("type"),
        "source": origins[0],
        "editable": saved is not None,
        "overrides": origins[1] if len(origins) > 1 else None,
        "active": problem is None and _current_model(source.current, name) is not None,
        "problem": problem,
        "aliases": [f"{name}-plan"] if post else [],
        "definition": definition,
        "updated_at": saved.updated_at if saved else None,
    }


# -- checking a write -------------------------------------------------------------------


def _secret_values(provider: Provider) -> list[str]:
    """The secrets a built provider holds (env references resolved), for scrubbing."""
    options = provider.options.model_dump()
    values = []
    for path in secret_paths(type(provider), options):
        value = get_path(options, path)
        value = value.get_secret_value() if isinstance(value, SecretStr) else value
        if isinstance(value, str):
            values.append(value)
    return values


def _build(source: ConfigSource, name: str, type_name: str, options: dict) -> Provider:
    """Build the provider as the config will (no network); 400 naming the option."""
    cls = provider_types().get(type_name)
    if cls is None:
        known = ", ".join(sorted(provider_types()))
        raise InvalidRequest(f"Unknown provider type {type_name!r} (known: {known})", param="type")
    raw = [v for p in secret_paths(cls, options) if isinstance(v := get_path(options, p), str)]
    resolved: dict[str, Any] = {}
    for key, value in options.items():
        try:
            resolved[key] = substitute_env(value, source.env, f"options.{key}")
        except ConfigError as exc:
            raise InvalidRequest(str(exc), param=f"options.{key}") from None
    secrets = raw + [
        v for p in secret_paths(cls, resolved) if isinstance(v := get_path(resolved, p), str)
    ]
    try:
        cls.Options.model_validate(resolved)
    except ValidationError as exc:
        errors = exc.errors()
        where = [".".join(str(p) for p in err["loc"]) for err in errors]
        problems = "; ".join(
            f"{w or '(options)'}: {err['msg']}" for w, err in zip(where, errors, strict=True)
        )
        raise InvalidRequest(
            scrub(f"Provider {name!r} ({type_name}): {problems}", secrets),
            param=f"options.{where[0]}" if where[0] else "options",
        ) from None
    try:
        return build_provider(name, type_name, resolved, source.http)
    except (ProviderConfigError, ValueError) as exc:
        raise InvalidRequest(scrub(str(exc), secrets), param="options") from None


def _check_uses(config: GatewayConfig, name: str, cls: type[Provider] | None, what: str) -> None:
    """409 when a model uses provider `name` for a role `cls` (None: gone) cannot do."""
    broken = [
        (model, role) for model, role in _roles(config, name)
        if cls is None or not issubclass(cls, ROLE_KINDS[role])
    ]  # fmt: skip
    if not broken:
        return
    uses = ", ".join(f"{model!r} ({role})" for model, role in broken)
    raise Conflict(
        f"Provider {name!r} is used by model(s) {uses}; {what}. "
        "Point those models at another provider, or delete them, first.",
        code="provider_in_use",
    )


def _not_editable(source: ConfigSource, name: str, kind: str) -> NoReturn:
    """404 for an unknown name; 409 for an entry that lives in a file."""
    origins = (_provider_origins if kind == "provider" else _model_origins)(source, name)
    if not origins:
        raise NotFound(f"No {kind} named {name!r}", code=f"{kind}_not_found")
    where = {"file": "inkgate.yaml", "redink": "RedInk's provider files", "builtin": "InkGate"}
    raise Conflict(
        f"The {kind} {name!r} is defined in {where[origins[0]]}, not saved here; change it "
        f"there, or save a {kind} of the same name here to override it.",
        code="not_editable",
    )


def _check_name(name: str, pattern: re.Pattern, param: str = "name") -> str:
    if not pattern.match(name or ""):
        raise InvalidRequest(
            f"Invalid name {name!r}: letters, digits and . _ : @ - only, starting with a "
            "letter or digit.",
            param=param,
        )
    return name


async def _reloaded(source: ConfigSource) -> dict:
    """After a write: reload this process at once (the others follow the revision)."""
    error = await source.reload_now()
    return {"config_error": error} if error else {}


# -- providers --------------------------------------------------------------------------


@router.get("/providers")
async def list_providers(request: Request, _: Admin) -> dict:
    """Every provider (saved, `inkgate.yaml`, RedInk's files, the built-in `local`) with
    secrets masked, and every provider type with its options' JSON schema."""
    source = _source(request)
    await source.reload_if_changed()
    names = list(source.current.providers)
    names += [n for n in (source.stored.providers if source.stored else {}) if n not in names]
    return {
        "object": "list",
        "data": [_provider_public(source, name) for name in names],
        "types": [_type_public(t, cls) for t, cls in sorted(provider_types().items())],
        "problems": source.problems.general,
        "config_error": source.error,
    }


@router.post("/providers", status_code=201)
async def create_provider(request: Request, _: Admin, body: ProviderIn) -> dict:
    """Save a new provider (or one overriding a file provider of the same name)."""
    source = _source(request)
    await source.reload_if_changed()
    name = _check_name(body.name, NAME)
    store = _store(source)
    if name in (await store.read()).providers:
        raise Conflict(
            f"A provider named {name!r} is already saved; change it with PATCH.",
            code="provider_exists",
            param="name",
        )
    cls = provider_types().get(body.type)
    options = merge_options(cls, {}, body.options) if cls else body.options
    provider = _build(source, name, body.type, options)
    _check_uses(source.current, name, type(provider), f"a {body.type} provider cannot do that")
    await store.save_provider(name, body.type, options, body.max_concurrency)
    answer = await _reloaded(source)
    return {**_provider_public(source, name), **answer}


@router.patch("/providers/{name}")
async def update_provider(request: Request, _: Admin, name: str, body: ProviderPatch) -> dict:
    """Change a saved provider: its options (merged), type or `max_concurrency`."""
    source = _source(request)
    await source.reload_if_changed()
    store = _store(source)
    saved = (await store.read()).providers.get(name)
    if saved is None:
        _not_editable(source, name, "provider")
    type_name = body.type or saved.type
    cls = provider_types().get(type_name)
    options = merge_options(cls, saved.options, body.options) if cls else saved.options
    provider = _build(source, name, type_name, options)
    _check_uses(source.current, name, type(provider), f"a {type_name} provider cannot do that")
    limit = (
        body.max_concurrency
        if "max_concurrency" in body.model_fields_set
        else saved.max_concurrency
    )
    await store.save_provider(name, type_name, options, limit)
    answer = await _reloaded(source)
    return {**_provider_public(source, name), **answer}


@router.delete("/providers/{name}")
async def delete_provider(request: Request, _: Admin, name: str) -> dict:
    """Delete a saved provider; a file provider of the same name applies again. 409 when
    a model still needs it."""
    source = _source(request)
    await source.reload_if_changed()
    store = _store(source)
    if name not in (await store.read()).providers:
        _not_editable(source, name, "provider")
    below = [o for o in _provider_origins(source, name) if o != "database"]
    cls = provider_types().get(_entry(source, name, below[0])[0]) if below else None
    what = (
        f"without the saved one, the {below[0]} provider {name!r} would apply and it cannot"
        if below
        else "it would no longer exist"
    )
    _check_uses(source.current, name, cls, what)
    await store.delete_provider(name)
    answer = await _reloaded(source)
    still = name in source.current.providers
    return {
        "name": name,
        "object": "provider",
        "deleted": True,
        "now": _provider_public(source, name) if still else None,
        **answer,
    }


def _report(report, secrets: list[str]) -> dict:
    body = {"ok": report.ok, "providers": [report.as_dict()]}
    return json.loads(scrub(json.dumps(body, ensure_ascii=False), secrets))


@router.post("/providers/test")
async def test_unsaved_provider(
    request: Request, _: Admin, body: ProviderTestIn, deep: bool = False
) -> dict:
    """Probe options before saving them (`deep`: also draw one small image)."""
    source = _source(request)
    await source.reload_if_changed()
    name = _check_name(body.name, NAME) if body.name else UNSAVED
    cls = provider_types().get(body.type)
    base: dict = {}
    origins = _provider_origins(source, name) if body.name else []
    if origins and (found := _entry(source, name, origins[0]))[0] == body.type:
        base = found[1]
    options = merge_options(cls, base, body.options) if cls else body.options
    provider = _build(source, name, body.type, options)
    config = replace(source.current, providers={**source.current.providers, name: provider})
    return _report(await probe(config, name, deep=deep), _secret_values(provider))


@router.post("/providers/{name}/test")
async def test_provider(request: Request, _: Admin, name: str, deep: bool = False) -> dict:
    """Probe one configured provider: bad key, unreachable, timeout, wrong model."""
    source = _source(request)
    await source.reload_if_changed()
    provider = source.current.providers.get(name)
    if provider is None:
        raise NotFound(f"No provider named {name!r}", code="provider_not_found")
    return _report(await probe(source.current, name, deep=deep), _secret_values(provider))


# -- models -----------------------------------------------------------------------------


@router.get("/models")
async def list_models(request: Request, _: Admin) -> dict:
    """Every model (saved, files, the built-in `redink`) and the JSON schema of each
    kind: `redink` (a post model), `image` and `video`."""
    source = _source(request)
    await source.reload_if_changed()
    config = source.current
    names = [*config.post_models, *config.image_models, *config.video_models]
    names += [n for n in (source.stored.models if source.stored else {}) if n not in names]
    return {
        "object": "list",
        "data": [_model_public(source, name) for name in names],
        "schemas": {
            "redink": PostModelConfig.model_json_schema(),
            "image": ImageModelConfig.model_json_schema(),
            "video": VideoModelConfig.model_json_schema(),
        },
        "problems": source.problems.general,
        "config_error": source.error,
    }


@router.put("/models/{name}")
async def put_model(
    request: Request, _: Admin, name: str, body: Annotated[dict[str, Any], Body()]
) -> dict:
    """Save model `name`: its whole definition, as in `inkgate.yaml` (without `type`, the
    model's current kind). `redink` sets the post model's providers, models and
    concurrency."""
    source = _source(request)
    await source.reload_if_changed()
    _check_name(name, MODEL_NAME)
    definition = dict(body)
    if "type" not in definition:
        current = _current_model(source.current, name)
        if current is None:
            raise InvalidRequest(
                f"A new model needs a type: {', '.join(MODEL_TYPES)}", param="type"
            )
        definition["type"] = current.type
    try:
        model = MODEL_CONFIG.validate_python(definition)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = [str(p) for p in err["loc"]]
        loc = loc[1:] if loc and loc[0] in MODEL_TYPES else loc
        raise InvalidRequest(
            f"{'.'.join(loc) or 'model'}: {err['msg']}", param=".".join(loc) or None
        ) from None
    classes = {n: type(p) for n, p in source.current.providers.items()}
    try:
        check_references(name, model, classes)
    except ModelReferenceError as exc:
        raise InvalidRequest(str(exc), param=exc.field) from None
    stored = {"type": model.type, **model.model_dump(mode="json", exclude_unset=True)}
    await _store(source).save_model(name, stored)
    answer = await _reloaded(source)
    return {**_model_public(source, name), **answer}


@router.delete("/models/{name}")
async def delete_model(request: Request, _: Admin, name: str) -> dict:
    """Delete a saved model; a file model of the same name applies again."""
    source = _source(request)
    await source.reload_if_changed()
    store = _store(source)
    if name not in (await store.read()).models:
        _not_editable(source, name, "model")
    await store.delete_model(name)
    answer = await _reloaded(source)
    still = _current_model(source.current, name) is not None
    return {
        "name": name,
        "object": "model",
        "deleted": True,
        "now": _model_public(source, name) if still else None,
        **answer,
    }
