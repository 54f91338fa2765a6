"""Providers and models saved from the dashboard (gateway/config_store.py reads and writes
them; gateway/config.py layers them over `inkgate.yaml`). Schema changes go through
Alembic, as for storage/tables.py."""

from __future__ import annotations

from sqlalchemy import Column, Text
from sqlmodel import Field, SQLModel

# The `app_settings` row bumped in the same transaction as every write to the tables
# below: a replica compares it (one small SELECT) to notice a change made elsewhere.
CONFIG_REVISION = "config_revision"


class ProviderConfigRow(SQLModel, table=True):
    """A provider saved through the admin API.

    `options` is JSON; the values of secret fields are Fernet tokens
    (`{"fernet": "..."}`, gateway/secrets_box.py), except `${ENV_NAME}` references,
    which are kept as written. `max_concurrency` as in `inkgate.yaml`. Times are unix
    seconds.
    """

    __tablename__ = "provider_configs"

    name: str = Field(primary_key=True, max_length=64)
    type: str = Field(max_length=64)
    options: str = Field(sa_column=Column(Text, nullable=False))
    max_concurrency: int | None = None
    created_at: float = 0.0
    updated_at: float = 0.0


class ModelConfigRow(SQLModel, table=True):
    """A model saved through the admin API: `definition` is its `inkgate.yaml` entry as
    JSON (`type: redink` or `type: image`)."""

    __tablename__ = "model_configs"

    name: str = Field(primary_key=True, max_length=200)
    definition: str = Field(sa_column=Column(Text, nullable=False))
    updated_at: float = 0.0
