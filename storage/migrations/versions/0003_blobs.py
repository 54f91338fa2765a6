"""blobs (local copy + remote upload state per content) and the result cache

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import os
import time

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "blobs",
        sa.Column("key", sa.String(length=200), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("ext", sa.String(length=8), nullable=False),
        sa.Column("mime", sa.String(length=64), nullable=False),
        sa.Column("size_bytes", sa.Integer(), nullable=False),
        sa.Column("local", sa.Boolean(), nullable=False),
        sa.Column("remote_state", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("next_attempt_at", sa.Float(), nullable=False),
        sa.Column("claimed_by", sa.String(length=32), nullable=True),
        sa.Column("claimed_until", sa.Float(), nullable=False),
        sa.Column("accessed_at", sa.Float(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("uploaded_at", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("key"),
    )
    op.create_index("ix_blobs_sha256", "blobs", ["sha256"])
    op.create_index("ix_blobs_local", "blobs", ["local"])
    op.create_index("ix_blobs_remote_state", "blobs", ["remote_state"])
    op.create_index("ix_blobs_accessed_at", "blobs", ["accessed_at"])
    op.create_table(
        "result_cache",
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("model", sa.String(length=200), nullable=False),
        sa.Column("image_ids", sa.Text(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("key"),
    )
    op.create_index("ix_result_cache_model", "result_cache", ["model"])
    op.create_index("ix_result_cache_created_at", "result_cache", ["created_at"])

    # Images stored before this revision: one blob row per content, local copy
    # assumed present (the orphan sweep corrects that), not uploaded anywhere yet.
    now = time.time()
    conn = op.get_bind()
    rows = conn.execute(
        sa.text("SELECT sha256, ext, MIN(mime), MIN(size_bytes) FROM images GROUP BY sha256, ext")
    ).fetchall()
    if rows:
        blobs = sa.table(
            "blobs", *(sa.column(c) for c in (
                "key", "sha256", "ext", "mime", "size_bytes", "local", "remote_state", "attempts",
                "next_attempt_at", "claimed_until", "accessed_at", "created_at",
            ))
        )  # fmt: skip
        op.bulk_insert(
            blobs,
            [
                {
                    "key": os.path.join("images", sha[:2], f"{sha}.{ext}").replace(os.sep, "/"),
                    "sha256": sha,
                    "ext": ext,
                    "mime": mime,
                    "size_bytes": size,
                    "local": True,
                    "remote_state": "none",
                    "attempts": 0,
                    "next_attempt_at": 0.0,
                    "claimed_until": 0.0,
                    "accessed_at": now,
                    "created_at": now,
                }  # fmt: skip
                for sha, ext, mime, size in rows
            ],
        )


def downgrade() -> None:
    op.drop_table("result_cache")
    op.drop_table("blobs")
