"""Per-key limits on `/v1`: allowed models, requests per minute, concurrent posts and
a daily image quota (expiry is checked with the key, in gateway/auth.py). The master
key is never limited.

Everything is counted in the database, so the limits hold across processes and
replicas. Each check is one small Core statement, and only for a key that has that
limit set:
- `rpm`: one `INSERT ... ON CONFLICT DO UPDATE ... RETURNING` on `key_rate_windows`
  (a fixed one-minute window per key; `Retry-After` is the rest of the minute);
- concurrent posts: a count of the key's posts with a running job, before a new post
  starts (two requests racing for the last slot may both start);
- daily images: a count of the images the key stored since 00:00 UTC, before drawing.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from sqlalchemy import delete, func, select
from sqlalchemy.dialects import postgresql, sqlite

from gateway.errors import PermissionDenied, RateLimited
from storage.db import Database
from storage.tables import ApiKey, Image, KeyRateWindow, Post, PostJob

if TYPE_CHECKING:
    from gateway.auth import Principal
    from gateway.models import ResolvedModel

WINDOW_SECONDS = 60


@dataclass(frozen=True)
class KeyLimits:
    """A stored key's limits; None means unlimited (`allowed_models` None: every model)."""

    allowed_models: frozenset[str] | None = None
    rpm: int | None = None
    max_concurrent_posts: int | None = None
    daily_image_quota: int | None = None

    @classmethod
    def of(cls, row: ApiKey) -> KeyLimits:
        allowed = json.loads(row.allowed_models) if row.allowed_models is not None else None
        return cls(
            allowed_models=frozenset(allowed) if allowed is not None else None,
            rpm=row.rpm,
            max_concurrent_posts=row.max_concurrent_posts,
            daily_image_quota=row.daily_image_quota,
        )

    def allows(self, model_id: str, post_name: str | None = None) -> bool:
        """Allowing a post model allows its `-plan` twin too."""
        if self.allowed_models is None:
            return True
        return model_id in self.allowed_models or (
            post_name is not None and post_name in self.allowed_models
        )

    def visible(self, model_ids: Iterable[str], post_models: Iterable[str]) -> list[str]:
        """The ids of `model_ids` this key may use (for `GET /v1/models`)."""
        posts = set(post_models)
        out = []
        for model_id in model_ids:
            base = model_id.removesuffix("-plan")
            if self.allows(model_id, base if base in posts else None):
                out.append(model_id)
        return out


def check_model(key: Principal, model: ResolvedModel) -> None:
    """403 `model_not_allowed` when the key may not use `model`."""
    if key.limits is not None and not key.limits.allows(model.name, model.post_name):
        raise PermissionDenied(
            f"This API key may not use the model '{model.name}'.",
            code="model_not_allowed",
            param="model",
        )


def _window_upsert(db: Database, key_id: str, window: int):
    dialect = sqlite if db.is_sqlite else postgresql
    table = KeyRateWindow.__table__
    stmt = dialect.insert(table).values(key_id=key_id, window_start=window, hits=1)
    return stmt.on_conflict_do_update(
        index_elements=[table.c.key_id, table.c.window_start],
        set_={"hits": table.c.hits + 1},
    ).returning(table.c.hits)


async def check_rate(db: Database, key: Principal) -> None:
    """Count this request against the key's `rpm`; 429 with `Retry-After` when over.

    Refused requests count too: a client hammering through its limit stays limited
    until the window ends.
    """
    if key.limits is None or key.limits.rpm is None or key.key_id is None:
        return
    now = time.time()
    window = int(now // WINDOW_SECONDS) * WINDOW_SECONDS
    table = KeyRateWindow.__table__
    async with db.writing(), db.engine.begin() as conn:
        hits = (await conn.execute(_window_upsert(db, key.key_id, window))).scalar_one()
        if hits == 1:  # the first request of a new minute: forget the key's older ones
            await conn.execute(
                delete(table).where(table.c.key_id == key.key_id, table.c.window_start < window)
            )
    if hits > key.limits.rpm:
        raise RateLimited(
            f"Rate limit reached for this API key: {key.limits.rpm} requests per minute.",
            retry_after=max(1, math.ceil(window + WINDOW_SECONDS - now)),
        )


def utc_midnight(now: float) -> datetime:
    return datetime.fromtimestamp(now, UTC).replace(hour=0, minute=0, second=0, microsecond=0)


async def images_today(db: Database, key_id: str, now: float | None = None) -> int:
    since = utc_midnight(time.time() if now is None else now)
    stmt = (
        select(func.count())
        .select_from(Image)
        .where(Image.owner_key_id == key_id, Image.created_at >= since)
    )
    async with db.engine.connect() as conn:
        return int((await conn.execute(stmt)).scalar_one())


async def check_image_quota(db: Database, key: Principal, needed: int = 1) -> None:
    """429 when storing `needed` more images would pass the key's daily quota."""
    if key.limits is None or key.limits.daily_image_quota is None or key.key_id is None:
        return
    quota = key.limits.daily_image_quota
    used = await images_today(db, key.key_id)
    if used + max(1, needed) > quota:
        now = time.time()
        tomorrow = utc_midnight(now) + timedelta(days=1)
        raise RateLimited(
            f"Daily image quota reached for this API key: {used} of {quota} images today (UTC).",
            code="daily_image_quota_exceeded",
            retry_after=max(1, math.ceil(tomorrow.timestamp() - now)),
        )


async def running_posts(db: Database, key_id: str) -> int:
    stmt = (
        select(func.count())
        .select_from(PostJob)
        .join(Post, Post.id == PostJob.active_post_id)
        .where(PostJob.active_post_id.is_not(None), Post.owner_key_id == key_id)
    )
    async with db.engine.connect() as conn:
        return int((await conn.execute(stmt)).scalar_one())


async def check_new_post(db: Database, key: Principal, *, draws: bool) -> None:
    """Before a new post starts: its concurrency limit, and (when it will draw pages)
    room for at least one more image today."""
    if key.limits is None or key.key_id is None:
        return
    limit = key.limits.max_concurrent_posts
    if limit is not None and await running_posts(db, key.key_id) >= limit:
        raise RateLimited(
            f"This API key already has {limit} post(s) generating; wait for one to finish.",
            code="concurrent_posts_exceeded",
            retry_after=5,
        )
    if draws:
        await check_image_quota(db, key)
