"""The `videos` table: one row per video job of `/v1/videos` and of chat with a video model
(gateway/flow/videos.py runs them). Schema changes go through Alembic, as for
storage/tables.py."""

from __future__ import annotations

from sqlalchemy import Column, Index, Text
from sqlmodel import Field, SQLModel

QUEUED, IN_PROGRESS, COMPLETED, FAILED = "queued", "in_progress", "completed", "failed"
ACTIVE_STATUSES = (QUEUED, IN_PROGRESS)


class Video(SQLModel, table=True):
    """A video job and, once completed, its stored MP4.

    `status` is OpenAI's: queued | in_progress | completed | failed; `progress` 0-100.
    `task_id` is the upstream's task id, written as soon as the upstream accepted the job
    and before any wait, so a resumed job polls it instead of submitting again;
    `submitted_at` starts the provider's deadline. `params` is JSON: the upstream model,
    the provider's own parameters and the ids of the stored first / last frame images.
    `file_key` is the MP4's key in the blob store (local disk, and the bucket when one is
    configured). `claimed_by` is the process running the job, which renews
    `claimed_until` (unix seconds); a job whose claim ran out is taken over by any
    process. Times are unix seconds.
    """

    __tablename__ = "videos"
    __table_args__ = (Index("ix_videos_owner_created", "owner_key_id", "created_at"),)

    id: str = Field(primary_key=True, max_length=64)
    owner_key_id: str | None = Field(default=None, max_length=32)
    model: str = Field(max_length=200)
    provider: str = Field(max_length=64)
    task_id: str | None = Field(default=None, max_length=200)
    status: str = Field(default=QUEUED, max_length=16, index=True)
    progress: int = 0
    prompt: str = Field(default="", sa_column=Column(Text, nullable=False))
    params: str = Field(default="{}", sa_column=Column(Text, nullable=False))
    seconds: str = Field(default="5", max_length=8)
    size: str = Field(default="", max_length=32)
    error_code: str | None = Field(default=None, max_length=64)
    error_message: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    file_key: str | None = Field(default=None, max_length=300)
    size_bytes: int | None = None
    sha256: str | None = Field(default=None, max_length=64)
    claimed_by: str | None = Field(default=None, max_length=32)
    claimed_until: float = 0.0
    runs: int = 1
    created_at: float = 0.0
    updated_at: float = 0.0
    submitted_at: float | None = None
    completed_at: float | None = None
    expires_at: float | None = Field(default=None, index=True)
