"""SQLModel tables. Schema changes go through Alembic (storage/migrations)."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import Column, DateTime, Index, LargeBinary, Text, UniqueConstraint
from sqlmodel import Field, SQLModel


def utcnow() -> datetime:
    return datetime.now(UTC)


def _ts(nullable: bool = False, index: bool = False) -> Column:
    return Column(DateTime(timezone=True), nullable=nullable, index=index)


class ApiKey(SQLModel, table=True):
    """An API key. Only the sha256 of the key is stored; `prefix` is shown to people.

    Limits (gateway/limits.py), each NULL for none: `allowed_models` (a JSON list of
    model ids), `rpm` (requests per minute), `max_concurrent_posts`,
    `daily_image_quota` (images stored per UTC day), `expires_at`.
    """

    __tablename__ = "api_keys"

    id: str = Field(primary_key=True, max_length=32)
    name: str = Field(max_length=200)
    prefix: str = Field(index=True, max_length=32)
    key_hash: str = Field(max_length=64, unique=True)
    created_at: datetime = Field(default_factory=utcnow, sa_column=_ts())
    last_used_at: datetime | None = Field(default=None, sa_column=_ts(nullable=True))
    revoked_at: datetime | None = Field(default=None, sa_column=_ts(nullable=True))
    allowed_models: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    rpm: int | None = None
    max_concurrent_posts: int | None = None
    daily_image_quota: int | None = None
    expires_at: datetime | None = Field(default=None, sa_column=_ts(nullable=True))


class KeyRateWindow(SQLModel, table=True):
    """Requests of a key in one minute (`window_start`, unix seconds), for its `rpm`."""

    __tablename__ = "key_rate_windows"

    key_id: str = Field(primary_key=True, max_length=32)
    window_start: int = Field(primary_key=True)
    hits: int = 0


class UsageRow(SQLModel, table=True):
    """One `/v1` request (gateway/usage.py). No prompt, answer or credential is kept.

    `key_id` is None for the master key; `endpoint` the route's path template;
    `created_at` unix seconds of its start; `latency_ms` until its last byte.
    """

    __tablename__ = "usage"
    __table_args__ = (Index("ix_usage_key_created", "key_id", "created_at"),)

    id: int | None = Field(default=None, primary_key=True)
    created_at: float = Field(default=0.0, index=True)
    key_id: str | None = Field(default=None, max_length=32)
    key_name: str | None = Field(default=None, max_length=200)
    model: str | None = Field(default=None, max_length=200)
    method: str = Field(default="POST", max_length=8)
    endpoint: str = Field(max_length=200)
    status: int = 0
    latency_ms: float = 0.0
    pages: int | None = None
    images: int | None = None
    post_id: str | None = Field(default=None, max_length=64)
    # why a request failed, in words (error code and message; never a secret)
    message: str | None = Field(default=None, sa_column=Column(Text, nullable=True))


class Post(SQLModel, table=True):
    """A Xiaohongshu post: a topic, an outline and its pages.

    `status`: draft | generating | partial | completed | failed. `owner_key_id` is
    the key that made it (None for the master key).
    """

    __tablename__ = "posts"

    id: str = Field(primary_key=True, max_length=64)
    owner_key_id: str | None = Field(default=None, index=True, max_length=32)
    model: str = Field(max_length=200)
    topic: str = Field(sa_column=Column(Text, nullable=False))
    status: str = Field(default="draft", max_length=16, index=True)
    aspect_ratio: str = Field(default="3:4", max_length=16)
    page_count: int | None = None
    outline: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    error: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    # JSON: the post copy (titles, body, tags) and the ids of the user's reference images
    copy_json: str | None = Field(default=None, sa_column=Column("copy", Text, nullable=True))
    reference_ids: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    created_at: datetime = Field(default_factory=utcnow, sa_column=_ts(index=True))
    updated_at: datetime = Field(default_factory=utcnow, sa_column=_ts())


class Page(SQLModel, table=True):
    """One page of a post. `status`: pending | generating | done | failed."""

    __tablename__ = "pages"
    __table_args__ = (UniqueConstraint("post_id", "page_index", name="uq_pages_post_index"),)

    id: int | None = Field(default=None, primary_key=True)
    post_id: str = Field(foreign_key="posts.id", index=True, max_length=64)
    page_index: int
    type: str = Field(default="content", max_length=16)
    text: str = Field(sa_column=Column(Text, nullable=False))
    status: str = Field(default="pending", max_length=16)
    image_id: str | None = Field(default=None, max_length=64)
    error: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    attempts: int = 0
    updated_at: datetime = Field(default_factory=utcnow, sa_column=_ts())


class Image(SQLModel, table=True):
    """A stored image. `id` is random (128 bits); the bytes are stored by `sha256`."""

    __tablename__ = "images"

    id: str = Field(primary_key=True, max_length=64)
    sha256: str = Field(index=True, max_length=64)
    mime: str = Field(max_length=64)
    ext: str = Field(max_length=8)
    width: int
    height: int
    size_bytes: int
    owner_key_id: str | None = Field(default=None, index=True, max_length=32)
    post_id: str | None = Field(default=None, index=True, max_length=64)
    created_at: datetime = Field(default_factory=utcnow, sa_column=_ts(index=True))


class UpstreamSlot(SQLModel, table=True):
    """One of a provider's `max_concurrency` slots, leased by the process using it.

    `holder` is the process holding it (None: free); `expires_at` (unix seconds) is
    when a holder that stopped renewing loses it.
    """

    __tablename__ = "upstream_slots"

    provider: str = Field(primary_key=True, max_length=200)
    slot_no: int = Field(primary_key=True)
    holder: str | None = Field(default=None, max_length=32)
    expires_at: float = 0.0


class Blob(SQLModel, table=True):
    """The stored bytes of one content (sha256 + extension), shared by its image rows.

    `local`: the copy on local disk exists. `remote_state`: none (local-only storage)
    | pending | uploading | uploaded | failed | removed (deleted from the bucket on
    request). Times the lifecycle compares are unix seconds.
    """

    __tablename__ = "blobs"

    key: str = Field(primary_key=True, max_length=200)
    sha256: str = Field(index=True, max_length=64)
    ext: str = Field(max_length=8)
    mime: str = Field(max_length=64)
    size_bytes: int
    local: bool = Field(default=True, index=True)
    remote_state: str = Field(default="none", max_length=16, index=True)
    attempts: int = 0
    last_error: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    next_attempt_at: float = 0.0
    claimed_by: str | None = Field(default=None, max_length=32)
    claimed_until: float = 0.0
    accessed_at: float = Field(default=0.0, index=True)
    created_at: float = 0.0
    uploaded_at: float | None = None


class ResultCacheEntry(SQLModel, table=True):
    """An image request's answer, reused for an identical request within the model's TTL."""

    __tablename__ = "result_cache"

    key: str = Field(primary_key=True, max_length=64)
    model: str = Field(index=True, max_length=200)
    image_ids: str = Field(sa_column=Column(Text, nullable=False))  # JSON list
    created_at: float = Field(default=0.0, index=True)


class IdempotencyRecord(SQLModel, table=True):
    """The first answer to a request sent with an `Idempotency-Key` (gateway/idempotency.py).

    `id` is sha256(caller credential hash : key); `fingerprint` is sha256(path + body).
    """

    __tablename__ = "idempotency_keys"

    id: str = Field(primary_key=True, max_length=64)
    fingerprint: str = Field(max_length=64)
    state: str = Field(default="in_progress", max_length=16)
    status: int | None = None
    headers: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    body: bytes | None = Field(default=None, sa_column=Column(LargeBinary, nullable=True))
    created_at: float = Field(default=0.0, index=True)
    updated_at: float = 0.0


class PostJob(SQLModel, table=True):
    """A post's generation, detached from the request that started it.

    `state`: running | done | failed. `active_post_id` is the post's id while the job
    runs and NULL after (unique: one running job per post). `claimed_by` is the
    process running it, which renews `claimed_until` (unix seconds); a job whose
    claim ran out is resumed by any process.
    """

    __tablename__ = "post_jobs"

    id: str = Field(primary_key=True, max_length=64)
    post_id: str = Field(index=True, max_length=64)
    active_post_id: str | None = Field(default=None, unique=True, max_length=64)
    state: str = Field(default="running", max_length=16, index=True)
    outline_only: bool = False
    claimed_by: str | None = Field(default=None, max_length=32)
    claimed_until: float = 0.0
    runs: int = 1
    error: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    created_at: float = 0.0
    updated_at: float = 0.0


class PostEvent(SQLModel, table=True):
    """A progress event of a post, in order (`seq` per post; the SSE event id)."""

    __tablename__ = "post_events"
    __table_args__ = (UniqueConstraint("post_id", "seq", name="uq_post_events_seq"),)

    id: int | None = Field(default=None, primary_key=True)
    post_id: str = Field(index=True, max_length=64)
    seq: int
    kind: str = Field(max_length=32)
    page: int | None = None
    data: str = Field(sa_column=Column(Text, nullable=False))
    created_at: float = 0.0


class AdminUser(SQLModel, table=True):
    """A dashboard user. `password_hash` is scrypt (admin/auth.py), never the password."""

    __tablename__ = "admin_users"

    id: str = Field(primary_key=True, max_length=32)
    username: str = Field(unique=True, max_length=64)
    password_hash: str = Field(max_length=255)
    created_at: datetime = Field(default_factory=utcnow, sa_column=_ts())
    password_changed_at: datetime = Field(default_factory=utcnow, sa_column=_ts())


class AdminSession(SQLModel, table=True):
    """A signed-in browser. `id` is the sha256 of the cookie's token (the token itself is
    never stored); `csrf_token` must come back on every state-changing request."""

    __tablename__ = "admin_sessions"

    id: str = Field(primary_key=True, max_length=64)
    user_id: str = Field(index=True, max_length=32)
    csrf_token: str = Field(max_length=64)
    created_at: float = 0.0
    last_seen_at: float = 0.0
    expires_at: float = Field(default=0.0, index=True)
    ip: str | None = Field(default=None, max_length=64)
    user_agent: str | None = Field(default=None, max_length=200)


class AdminSignInFailure(SQLModel, table=True):
    """A failed sign-in, for throttling (per user name and per address)."""

    __tablename__ = "admin_signin_failures"

    id: int | None = Field(default=None, primary_key=True)
    username: str = Field(index=True, max_length=64)
    ip: str = Field(index=True, max_length=64)
    at: float = Field(default=0.0, index=True)


class AppSetting(SQLModel, table=True):
    """Small settings every replica shares (e.g. the hash of the one-time setup token)."""

    __tablename__ = "app_settings"

    name: str = Field(primary_key=True, max_length=100)
    value: str = Field(sa_column=Column(Text, nullable=False))
    updated_at: float = 0.0
