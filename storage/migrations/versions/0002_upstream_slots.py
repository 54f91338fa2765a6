"""upstream slots: per-provider concurrency leases shared by every process

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "upstream_slots",
        sa.Column("provider", sa.String(length=200), nullable=False),
        sa.Column("slot_no", sa.Integer(), nullable=False),
        sa.Column("holder", sa.String(length=32), nullable=True),
        sa.Column("expires_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("provider", "slot_no"),
    )


def downgrade() -> None:
    op.drop_table("upstream_slots")
