"""`/admin/api/cache/settings`: the cache settings the dashboard can change at runtime.

`cache_ttl_hours`, `cache_max_mb`, `retention_days` and `retention_delete_remote` come
from the environment, else `inkgate.yaml`'s `storage:`, else the defaults, read at
start. A value saved here is kept in the database and wins over all three, on every
replica, from the next sweep on; `null` removes it. The result cache is set per image
model (`result_cache_seconds`, inkgate.yaml or the providers page): shown here read-only,
purged with `DELETE /admin/api/cache/results`.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import func, select

from admin.api import Admin
from gateway.errors import InvalidRequest
from gateway.routes.common import AppState, state_of
from storage.config import RUNTIME_OPTIONS, StorageConfigError
from storage.tables import ResultCacheEntry

router = APIRouter(prefix="/admin/api", tags=["admin"])

# upper bounds: far past any sane value, low enough to catch a unit mistake
MAX_TTL_HOURS = 10 * 365 * 24
MAX_CACHE_MB = 100_000_000  # ~95 TB
MAX_RETENTION_DAYS = 100 * 365
LIMITS: dict[str, dict[str, float]] = {
    "cache_ttl_hours": {"min": 0, "max": MAX_TTL_HOURS},
    "cache_max_mb": {"min": 0, "max": MAX_CACHE_MB},
    "retention_days": {"min": 0, "max": MAX_RETENTION_DAYS},
}


def _number(maximum: float, description: str):
    return Field(
        default=None, ge=0, le=maximum, allow_inf_nan=False, strict=True, description=description
    )


class CacheSettingsUpdate(BaseModel):
    """Only the fields sent change; `null` removes the dashboard's value."""

    model_config = ConfigDict(extra="forbid")

    cache_ttl_hours: float | None = _number(
        MAX_TTL_HOURS, "Local copies not read for this long are evicted once uploaded; 0 = never."
    )
    cache_max_mb: float | None = _number(MAX_CACHE_MB, "Local cache size cap; 0 = no cap.")
    retention_days: float | None = _number(
        MAX_RETENTION_DAYS, "Images not read for this long are deleted; 0 = forever."
    )
    retention_delete_remote: bool | None = Field(
        default=None, strict=True, description="Retention deletes the bucket's copy too."
    )


async def cache_settings(state: AppState) -> dict:
    """Each runtime setting: the value in effect, where it comes from, and what applies
    without the dashboard's value; the result cache per image model. No secrets."""
    lifecycle = state.storage.lifecycle
    config = await lifecycle.refresh()
    base = lifecycle.config
    settings = {}
    for name in RUNTIME_OPTIONS:
        source = config.origins.get(name, "default")
        settings[name] = {
            "value": getattr(config, name),
            "source": source,
            "overridden": source == "dashboard",
            "fallback": {"value": getattr(base, name), "source": base.origins.get(name, "default")},
            **LIMITS.get(name, {}),
        }
    async with state.db.session() as session:
        entries = dict(
            (
                await session.execute(
                    select(ResultCacheEntry.model, func.count()).group_by(ResultCacheEntry.model)
                )
            ).all()
        )
    models = [
        {"model": name, "seconds": model.result_cache_seconds, "entries": entries.get(name, 0)}
        for name, model in sorted(state.config().image_models.items())
    ]
    return {
        "object": "cache_settings",
        "settings": settings,
        "storage": config.storage,
        "remote_enabled": state.images.remote_enabled,
        "sweep_seconds": config.cache_sweep_seconds,
        "result_cache": {"entries": sum(entries.values()), "models": models},
    }


@router.get("/cache/settings")
async def get_cache_settings(request: Request, _: Admin) -> dict:
    """The cache settings in effect, each with its source: "dashboard", "environment",
    "config file" or "default"."""
    return await cache_settings(state_of(request))


@router.patch("/cache/settings")
async def update_cache_settings(request: Request, _: Admin, body: CacheSettingsUpdate) -> dict:
    """Save dashboard values (they win over the environment and inkgate.yaml, on every
    replica); `null` removes one."""
    state = state_of(request)
    changes = {name: getattr(body, name) for name in body.model_fields_set}
    try:
        await state.storage.lifecycle.set_overrides(changes)
    except StorageConfigError as exc:  # the model above catches these first
        raise InvalidRequest(str(exc)) from None
    return await cache_settings(state)
