"""Providers and models saved from the dashboard, in the database.

Every write bumps the `config_revision` row of `app_settings` in the same transaction;
each replica's `ConfigSource` compares that one value on its reload tick and reloads
when it moved, so a change made through any replica is live on all of them within
`INKGATE_CONFIG_RELOAD_SECONDS`.

Secret options are encrypted here on the way in and decrypted on the way out
(gateway/secrets_box.py); nothing else sees a Fernet token.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Integer, Text, cast, delete, insert, select, update

from gateway.secrets_box import SecretBox, secret_paths
from providers.registry import provider_types
from storage.config_tables import CONFIG_REVISION, ModelConfigRow, ProviderConfigRow
from storage.db import Database
from storage.tables import AppSetting


@dataclass
class StoredProvider:
    """A saved provider with its secrets decrypted (or, where unreadable, left out)."""

    name: str
    type: str
    options: dict[str, Any]
    max_concurrency: int | None = None
    created_at: float = 0.0
    updated_at: float = 0.0
    # dotted option path → why it is missing (a secret this replica cannot decrypt)
    unreadable: dict[str, str] = field(default_factory=dict)

    def entry(self) -> dict[str, Any]:
        """The entry as `inkgate.yaml` would hold it."""
        out = {"type": self.type, **self.options}
        if self.max_concurrency is not None:
            out["max_concurrency"] = self.max_concurrency
        return out


@dataclass
class StoredModel:
    name: str
    definition: dict[str, Any]
    updated_at: float = 0.0


@dataclass
class StoredConfig:
    revision: str | None = None
    providers: dict[str, StoredProvider] = field(default_factory=dict)
    models: dict[str, StoredModel] = field(default_factory=dict)


class ConfigStore:
    """Reads and writes the `provider_configs` and `model_configs` tables."""

    def __init__(self, db: Database, box: SecretBox) -> None:
        self.db = db
        self.box = box

    async def revision(self) -> str | None:
        """The current config revision (one small SELECT)."""
        t = AppSetting.__table__
        async with self.db.engine.connect() as conn:
            return (
                await conn.execute(select(t.c.value).where(t.c.name == CONFIG_REVISION))
            ).scalar_one_or_none()

    async def read(self) -> StoredConfig:
        """Every saved provider and model, with the revision they belong to."""
        settings = AppSetting.__table__
        providers_t, models_t = ProviderConfigRow.__table__, ModelConfigRow.__table__
        async with self.db.engine.connect() as conn:
            revision = (
                await conn.execute(
                    select(settings.c.value).where(settings.c.name == CONFIG_REVISION)
                )
            ).scalar_one_or_none()
            provider_rows = (
                await conn.execute(select(providers_t).order_by(providers_t.c.name))
            ).all()
            model_rows = (await conn.execute(select(models_t).order_by(models_t.c.name))).all()
        stored = StoredConfig(revision=revision)
        for row in provider_rows:
            options, unreadable = self.box.open(json.loads(row.options))
            stored.providers[row.name] = StoredProvider(
                name=row.name,
                type=row.type,
                options=options,
                max_concurrency=row.max_concurrency,
                created_at=row.created_at,
                updated_at=row.updated_at,
                unreadable=unreadable,
            )
        for row in model_rows:
            stored.models[row.name] = StoredModel(
                row.name, json.loads(row.definition), row.updated_at
            )
        return stored

    def _sealed(self, type_name: str, options: dict[str, Any]) -> str:
        cls = provider_types().get(type_name)
        paths = secret_paths(cls, options) if cls is not None else []
        return json.dumps(self.box.seal(options, paths), ensure_ascii=False, sort_keys=True)

    async def save_provider(
        self, name: str, type_name: str, options: dict[str, Any], max_concurrency: int | None
    ) -> None:
        """Create or replace provider `name` (`options` with secrets in clear)."""
        t = ProviderConfigRow.__table__
        now = time.time()
        values = {
            "type": type_name,
            "options": self._sealed(type_name, options),
            "max_concurrency": max_concurrency,
            "updated_at": now,
        }
        async with self.db.writing(), self.db.engine.begin() as conn:
            done = await conn.execute(update(t).where(t.c.name == name).values(**values))
            if done.rowcount == 0:
                await conn.execute(insert(t).values(name=name, created_at=now, **values))
            await _bump(conn, now)

    async def delete_provider(self, name: str) -> bool:
        t = ProviderConfigRow.__table__
        async with self.db.writing(), self.db.engine.begin() as conn:
            done = await conn.execute(delete(t).where(t.c.name == name))
            if done.rowcount:
                await _bump(conn, time.time())
        return bool(done.rowcount)

    async def save_model(self, name: str, definition: dict[str, Any]) -> None:
        t = ModelConfigRow.__table__
        now = time.time()
        values = {"definition": json.dumps(definition, ensure_ascii=False), "updated_at": now}
        async with self.db.writing(), self.db.engine.begin() as conn:
            done = await conn.execute(update(t).where(t.c.name == name).values(**values))
            if done.rowcount == 0:
                await conn.execute(insert(t).values(name=name, **values))
            await _bump(conn, now)

    async def delete_model(self, name: str) -> bool:
        t = ModelConfigRow.__table__
        async with self.db.writing(), self.db.engine.begin() as conn:
            done = await conn.execute(delete(t).where(t.c.name == name))
            if done.rowcount:
                await _bump(conn, time.time())
        return bool(done.rowcount)


async def _bump(conn, now: float) -> None:
    """Move the revision on, atomically (two replicas writing at once both move it)."""
    t = AppSetting.__table__
    done = await conn.execute(
        update(t)
        .where(t.c.name == CONFIG_REVISION)
        .values(value=cast(cast(t.c.value, Integer) + 1, Text), updated_at=now)
    )
    if done.rowcount == 0:  # the row the migration made was removed by hand
        await conn.execute(insert(t).values(name=CONFIG_REVISION, value="1", updated_at=now))
