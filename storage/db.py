"""The database: an async engine for the app, Alembic migrations at start.

SQLite (default, WAL) and PostgreSQL (psycopg 3) are supported. The same URL
forms people already use work: `sqlite:///path`, `postgresql://...`,
`postgres://...`, `postgresql+psycopg://...`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TypeVar

import anyio
from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlmodel.ext.asyncio.session import AsyncSession

T = TypeVar("T")

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def normalize_url(url: str) -> tuple[str, str]:
    """The (sync, async) SQLAlchemy URLs for a database URL."""
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://") :]
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        sync = parsed.set(drivername="sqlite")
        return (
            sync.render_as_string(hide_password=False),
            sync.set(drivername="sqlite+aiosqlite").render_as_string(hide_password=False),
        )
    if backend == "postgresql":
        pg = parsed.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)
        return pg, pg
    raise ValueError(f"unsupported database {backend!r}: use SQLite or PostgreSQL")


def _sqlite_pragmas(dbapi_conn, _record) -> None:  # pragma: no cover - trivial
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


class Database:
    """An async engine plus session factory for one database URL."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.sync_url, self.async_url = normalize_url(url)
        self.is_sqlite = self.async_url.startswith("sqlite")
        if self.is_sqlite:
            db_path = make_url(self.sync_url).database
            if db_path and db_path != ":memory:":
                Path(db_path).parent.mkdir(parents=True, exist_ok=True)
            # Pages of a post are written concurrently (15+ at once): a pool that
            # small would close and reopen connections (a thread and four PRAGMAs
            # each) on every burst.
            self.engine: AsyncEngine = create_async_engine(
                self.async_url, connect_args={"timeout": 30}, pool_size=20, max_overflow=20
            )
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)
        else:
            self.engine = create_async_engine(
                self.async_url, pool_size=20, max_overflow=20, pool_pre_ping=True
            )
        # SQLite has one writer at a time; writers that collide sleep in its busy handler
        # (tens of ms, growing), which made the tail of bursty writes seconds long.
        # Writers of this process queue here instead, first come first served.
        self._write_lock = asyncio.Lock() if self.is_sqlite else None
        self._sessions = async_sessionmaker(
            self.engine, class_=AsyncSession, expire_on_commit=False
        )
        self._sync_engine: Engine | None = None

    @asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncSession]:
        async with self._sessions() as session:
            yield session

    @asynccontextmanager
    async def writing(self) -> AsyncIterator[None]:
        """Hold around a write transaction: queues writers on SQLite, nothing elsewhere."""
        if self._write_lock is None:
            yield
            return
        async with self._write_lock:
            yield

    async def write_in_thread(self, work: Callable[[Connection], T]) -> T:
        """Run `work(connection)` in one transaction in a worker thread, with a synchronous
        connection: one hop off the event loop for the whole transaction.

        Why: on the async engine every statement, the BEGIN and the COMMIT are each a hop
        to the driver and back through the event loop. With the loop busy (a burst of
        image answers) each hop waits its turn, and a two-statement commit measured 40-130
        ms. Queues behind this process's other SQLite writers like `writing()`.
        """
        async with self.writing():
            return await anyio.to_thread.run_sync(self._run_write, work)

    def _run_write(self, work: Callable[[Connection], T]) -> T:
        engine = self._sync_engine
        if engine is None:
            engine = self._sync_engine = self._make_sync_engine()
        with engine.begin() as conn:
            return work(conn)

    def _make_sync_engine(self) -> Engine:
        if self.is_sqlite:
            engine = create_engine(
                self.sync_url, connect_args={"timeout": 30, "check_same_thread": False},
                pool_size=2, max_overflow=4,
            )  # fmt: skip
            event.listen(engine, "connect", _sqlite_pragmas)
            return engine
        return create_engine(self.sync_url, pool_size=2, max_overflow=4, pool_pre_ping=True)

    async def migrate(self) -> None:
        """Apply Alembic migrations up to head (in a thread: Alembic is synchronous)."""
        await anyio.to_thread.run_sync(upgrade_to_head, self.sync_url)

    async def ping(self) -> None:
        async with self.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    async def dispose(self) -> None:
        await self.engine.dispose()
        if self._sync_engine is not None:
            await anyio.to_thread.run_sync(self._sync_engine.dispose)


def alembic_config(sync_url: str):
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", sync_url.replace("%", "%%"))
    return cfg


def upgrade_to_head(sync_url: str) -> None:
    from alembic import command

    command.upgrade(alembic_config(sync_url), "head")
