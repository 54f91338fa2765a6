"""`/admin/api` for keys, usage and the overview: the JSON behind the dashboard's
Keys, Usage and Overview pages. Master key only, as the rest of the admin API."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy import func, select

from admin.api import Admin
from gateway.errors import InvalidRequest
from gateway.limits import utc_midnight
from gateway.routes.common import AppState, state_of
from storage.tables import ApiKey, Image, Post, UsageRow

router = APIRouter(prefix="/admin/api", tags=["admin"])

LIMITS = ("allowed_models", "rpm", "max_concurrent_posts", "daily_image_quota", "expires_at")


def _iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).isoformat()


class KeyLimitsIn(BaseModel):
    """A key's limits; null (or absent on create) means unlimited."""

    model_config = ConfigDict(extra="forbid")

    allowed_models: list[Annotated[str, Field(min_length=1, max_length=200)]] | None = Field(
        default=None, max_length=200, description="Model ids the key may use; null: all."
    )
    rpm: int | None = Field(default=None, ge=1, le=1_000_000, description="Requests per minute.")
    max_concurrent_posts: int | None = Field(default=None, ge=1, le=10_000)
    daily_image_quota: int | None = Field(
        default=None, ge=0, le=100_000_000, description="Images stored per UTC day."
    )
    expires_at: datetime | None = Field(
        default=None, description="ISO 8601 or unix seconds; a time without zone is UTC."
    )

    @field_validator("expires_at")
    @classmethod
    def _utc(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


class CreateKey(KeyLimitsIn):
    name: str = Field(min_length=1, max_length=200)


class UpdateKey(KeyLimitsIn):
    """Only the fields sent change; `null` removes a limit."""

    name: str | None = Field(default=None, min_length=1, max_length=200)


def _columns(state: AppState, body: KeyLimitsIn) -> dict:
    """The ApiKey columns for the limit fields that were sent."""
    out: dict = {}
    for field in LIMITS:
        if field not in body.model_fields_set:
            continue
        value = getattr(body, field)
        if field == "allowed_models" and value is not None:
            known = set(state.config().model_ids())
            unknown = [m for m in value if m not in known]
            if unknown:
                raise InvalidRequest(
                    f"Unknown model(s): {', '.join(unknown)}. Known: {', '.join(sorted(known))}.",
                    param="allowed_models",
                )
            value = json.dumps(sorted(set(value)))
        out[field] = value
    return out


def key_public(row: ApiKey, today: dict[str, tuple[int, int]]) -> dict:
    requests, images = today.get(row.id, (0, 0))
    return {
        "id": row.id,
        "object": "api_key",
        "name": row.name,
        "prefix": row.prefix,
        "created_at": _iso(row.created_at),
        "last_used_at": _iso(row.last_used_at),
        "revoked": row.revoked_at is not None,
        "revoked_at": _iso(row.revoked_at),
        "limits": {
            "allowed_models": json.loads(row.allowed_models) if row.allowed_models else None,
            "rpm": row.rpm,
            "max_concurrent_posts": row.max_concurrent_posts,
            "daily_image_quota": row.daily_image_quota,
            "expires_at": _iso(row.expires_at),
        },
        "usage_today": {"requests": requests, "images": images},
    }


async def usage_today(state: AppState, key_ids: list[str] | None = None) -> dict:
    """key id → (requests, images stored) since 00:00 UTC."""
    now = time.time()
    midnight = utc_midnight(now)
    requests = (
        select(UsageRow.key_id, func.count())
        .where(UsageRow.created_at >= midnight.timestamp(), UsageRow.key_id.is_not(None))
        .group_by(UsageRow.key_id)
    )
    images = (
        select(Image.owner_key_id, func.count())
        .where(Image.created_at >= midnight, Image.owner_key_id.is_not(None))
        .group_by(Image.owner_key_id)
    )
    if key_ids is not None:
        requests = requests.where(UsageRow.key_id.in_(key_ids))
        images = images.where(Image.owner_key_id.in_(key_ids))
    async with state.db.engine.connect() as conn:
        counts = dict((await conn.execute(requests)).all())
        drawn = dict((await conn.execute(images)).all())
    return {k: (int(counts.get(k, 0)), int(drawn.get(k, 0))) for k in set(counts) | set(drawn)}


@router.get("/keys")
async def list_keys(request: Request, _: Admin) -> dict:
    """Every key: prefix, times, limits and today's usage. Never the key or its hash."""
    state = state_of(request)
    rows = await state.keys.list()
    today = await usage_today(state)
    return {"object": "list", "data": [key_public(row, today) for row in rows]}


@router.post("/keys", status_code=201)
async def create_key(request: Request, _: Admin, body: CreateKey) -> dict:
    """A new key. The answer's `key` is the only time the key is shown."""
    state = state_of(request)
    name = body.name.strip()
    if not name:
        raise InvalidRequest("A key needs a name", param="name")
    row, plaintext = await state.keys.create(name, **_columns(state, body))
    return {**key_public(row, {}), "key": plaintext}


@router.patch("/keys/{key_id}")
async def update_key(request: Request, _: Admin, key_id: str, body: UpdateKey) -> dict:
    """Change a key's name or limits; they apply from its next request."""
    state = state_of(request)
    fields = _columns(state, body)
    if "name" in body.model_fields_set:
        if body.name is None or not body.name.strip():
            raise InvalidRequest("A key needs a name", param="name")
        fields["name"] = body.name.strip()
    row = await state.keys.update(key_id, **fields) if fields else await state.keys.get(key_id)
    return key_public(row, await usage_today(state, [row.id]))


@router.delete("/keys/{key_id}")
async def revoke_key(request: Request, _: Admin, key_id: str) -> dict:
    """Revoke a key (it is kept, revoked, so its usage stays attributed)."""
    state = state_of(request)
    await state.keys.get(key_id)  # 404 in the key_not_found shape
    row = await state.keys.revoke(key_id)
    return key_public(row, await usage_today(state, [row.id]))


# -- usage and the overview -----------------------------------------------------


def _since(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        pass
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidRequest("'since' must be unix seconds or ISO 8601", param="since") from None
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()


@router.get("/usage")
async def list_usage(
    request: Request,
    _: Admin,
    page: Annotated[int, Query(ge=1)] = 1,
    per_page: Annotated[int, Query(ge=1, le=500)] = 50,
    key_id: Annotated[
        str | None, Query(max_length=32, description="'master': the master key")
    ] = None,
    model: Annotated[str | None, Query(max_length=200)] = None,
    status: Literal["2xx", "3xx", "4xx", "5xx"] | None = None,
    since: Annotated[str | None, Query(description="unix seconds or ISO 8601")] = None,
) -> dict:
    """Usage rows, newest first: key, model, endpoint, status, latency, pages, images."""
    where = usage_filters(key_id=key_id, model=model, status=status, start=_since(since))
    return await read_usage(state_of(request), where, page=page, per_page=per_page)


def usage_filters(
    *,
    key_id: str | None = None,
    model: str | None = None,
    status: str | None = None,
    start: float | None = None,
) -> list:
    """WHERE clauses on `usage`: a key (`master` for the master key), a model, a status
    class (`4xx`), rows since unix seconds `start`."""
    t = UsageRow.__table__
    where = []
    if key_id == "master":
        where.append(t.c.key_id.is_(None))
    elif key_id is not None:
        where.append(t.c.key_id == key_id)
    if model is not None:
        where.append(t.c.model == model)
    if status is not None:
        low = int(status[0]) * 100
        where += [t.c.status >= low, t.c.status < low + 100]
    if start is not None:
        where.append(t.c.created_at >= start)
    return where


async def read_usage(state: AppState, where: list, *, page: int = 1, per_page: int = 50) -> dict:
    """One page of `GET /admin/api/usage` for `usage_filters(...)`."""
    t = UsageRow.__table__
    async with state.db.engine.connect() as conn:
        total = (await conn.execute(select(func.count()).select_from(t).where(*where))).scalar_one()
        rows = (
            await conn.execute(
                select(t)
                .where(*where)
                .order_by(t.c.created_at.desc(), t.c.id.desc())
                .offset((page - 1) * per_page)
                .limit(per_page)
            )
        ).all()
    return {
        "object": "list",
        "page": page,
        "per_page": per_page,
        "total": int(total),
        "data": [
            {
                **{k: v for k, v in row._mapping.items() if k != "created_at"},
                "created_at": datetime.fromtimestamp(row.created_at, UTC).isoformat(),
            }
            for row in rows
        ],
    }


@router.get("/stats")
async def stats(request: Request, _: Admin) -> dict:
    """The overview: today's (UTC) requests, posts, images and failures; storage;
    configured providers."""
    return await collect_stats(state_of(request))


async def collect_stats(state: AppState) -> dict:
    midnight = utc_midnight(time.time())
    t = UsageRow.__table__
    today = t.c.created_at >= midnight.timestamp()
    async with state.db.engine.connect() as conn:
        requests, failures, client_errors = (
            await conn.execute(
                select(
                    func.count(),
                    func.count().filter(t.c.status >= 500),
                    func.count().filter(t.c.status >= 400, t.c.status < 500),
                ).where(today)
            )
        ).one()
        posts_today = (
            await conn.execute(
                select(func.count()).select_from(Post).where(Post.created_at >= midnight)
            )
        ).scalar_one()
        images_today = (
            await conn.execute(
                select(func.count()).select_from(Image).where(Image.created_at >= midnight)
            )
        ).scalar_one()
    config = state.config()
    return {
        "since": midnight.isoformat(),
        "today": {
            "requests": int(requests),
            "posts": int(posts_today),
            "images": int(images_today),
            "failures": int(failures),
            "client_errors": int(client_errors),
        },
        "storage": await state.storage.lifecycle.stats(),
        "providers": [
            {"name": name, "type": type(provider).__name__}
            for name, provider in config.providers.items()
        ],
        "models": config.model_ids(),
    }
