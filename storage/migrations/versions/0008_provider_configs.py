"""providers and models saved from the dashboard, and the config revision every replica
watches

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "provider_configs",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("type", sa.String(length=64), nullable=False),
        sa.Column("options", sa.Text(), nullable=False),
        sa.Column("max_concurrency", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    op.create_table(
        "model_configs",
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("definition", sa.Text(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    settings = sa.table(
        "app_settings",
        sa.column("name", sa.String),
        sa.column("value", sa.Text),
        sa.column("updated_at", sa.Float),
    )
    op.bulk_insert(settings, [{"name": "config_revision", "value": "0", "updated_at": 0.0}])


def downgrade() -> None:
    op.execute("DELETE FROM app_settings WHERE name = 'config_revision'")
    op.drop_table("model_configs")
    op.drop_table("provider_configs")
