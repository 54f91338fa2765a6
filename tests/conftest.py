"""Shared fixtures: settings, app, client, and the database backends.

Database tests run on SQLite and, when INKGATE_TEST_DATABASE_URL is set, on
PostgreSQL too (each test gets a fresh database). With INKGATE_REQUIRE_POSTGRES=1
(CI) a missing PostgreSQL is an error, not a skip.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from gateway.app import create_app
from gateway.settings import Settings

pytest_plugins = ["tests.s3_server"]

# Fake keys, hard-coded so a real key in the environment is never used.
MASTER_KEY = "sk-test-master-0123456789abcdef"

PG_URL = os.environ.get("INKGATE_TEST_DATABASE_URL", "")
REQUIRE_PG = os.environ.get("INKGATE_REQUIRE_POSTGRES") == "1"

if REQUIRE_PG and not PG_URL:
    raise RuntimeError("INKGATE_REQUIRE_POSTGRES=1 but INKGATE_TEST_DATABASE_URL is not set")

DB_BACKENDS = ["sqlite"] + (["postgresql"] if PG_URL else [])


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("INKGATE_") and name not in (
            "INKGATE_TEST_DATABASE_URL",
            "INKGATE_REQUIRE_POSTGRES",
            "INKGATE_REQUIRE_CJK_FONT",
        ):
            monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("DATABASE_URL", raising=False)


def _fresh_pg_database() -> tuple[str, str]:
    import psycopg
    from sqlalchemy.engine import make_url

    base = make_url(PG_URL.replace("postgresql+psycopg", "postgresql"))
    name = "inkgate_t_" + secrets.token_hex(6)
    admin = base.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = base.set(drivername="postgresql+psycopg", database=name)
    return url.render_as_string(hide_password=False), name


def _drop_pg_database(name: str) -> None:
    import psycopg
    from sqlalchemy.engine import make_url

    admin = make_url(PG_URL.replace("postgresql+psycopg", "postgresql")).render_as_string(
        hide_password=False
    )
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=DB_BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'data' / 'inkgate.db'}"
        return
    url, name = _fresh_pg_database()
    try:
        yield url
    finally:
        _drop_pg_database(name)


@pytest.fixture
def settings(tmp_path, database_url: str) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        database_url=database_url,
        master_key=MASTER_KEY,
        retry_base_delay=0.01,
        keepalive_seconds=5,
        secret_key="test-signing-secret",
    )


@pytest.fixture
async def app(settings: Settings):
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture
async def client(app) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(
        transport=transport,
        base_url="http://testserver",
        headers={"Authorization": f"Bearer {MASTER_KEY}"},
        timeout=60,
    ) as c:
        yield c


@pytest.fixture
def services(app):
    return app.state.services
