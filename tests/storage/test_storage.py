from __future__ import annotations

import asyncio
import io

import pytest
from PIL import Image
from sqlalchemy import insert, inspect, text

from storage.blobs import LocalBlobStore
from storage.db import Database, normalize_url
from storage.images import GroupCommit, ImageStore, NotAnImage, blob_key, inspect_image
from storage.tables import Blob


def _png(color=(10, 20, 30), size=(40, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture
async def db(database_url: str):
    database = Database(database_url)
    await database.migrate()
    yield database
    await database.dispose()


async def test_migrations_create_the_tables_and_are_idempotent(db: Database) -> None:
    await db.migrate()  # a second start applies nothing and does not fail
    async with db.engine.connect() as conn:
        tables = await conn.run_sync(lambda c: set(inspect(c).get_table_names()))
        version = (await conn.execute(text("SELECT version_num FROM alembic_version"))).scalar()
    assert {"api_keys", "posts", "pages", "images", "alembic_version"} <= tables
    assert version == _head_revision()


def _head_revision() -> str:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    from storage.db import MIGRATIONS_DIR

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return ScriptDirectory.from_config(config).get_current_head()


async def test_migrations_match_the_tables(db: Database) -> None:
    """Every table and column the code declares is what the migrations made."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext
    from sqlmodel import SQLModel

    import storage.config_tables  # noqa: F401
    import storage.tables  # noqa: F401
    import storage.video_tables  # noqa: F401

    def diff(conn):
        context = MigrationContext.configure(conn, opts={"compare_type": False})
        return [
            d
            for d in compare_metadata(context, SQLModel.metadata)
            if not (isinstance(d, tuple) and d[0] in ("add_index", "remove_index"))
            and not (isinstance(d, list))  # column detail (nullable, server default) drifts
        ]

    async with db.engine.connect() as conn:
        problems = await conn.run_sync(diff)
    assert problems == []


async def test_sqlite_uses_wal(tmp_path) -> None:
    database = Database(f"sqlite:///{tmp_path / 'x.db'}")
    await database.migrate()
    async with database.engine.connect() as conn:
        assert (await conn.execute(text("PRAGMA journal_mode"))).scalar() == "wal"
    await database.dispose()


def test_normalize_url() -> None:
    assert normalize_url("sqlite:///data/x.db") == (
        "sqlite:///data/x.db",
        "sqlite+aiosqlite:///data/x.db",
    )
    pg = "postgresql+psycopg://u:p@h:5432/d"
    assert normalize_url("postgres://u:p@h:5432/d") == (pg, pg)
    assert normalize_url("postgresql://u:p@h:5432/d") == (pg, pg)
    with pytest.raises(ValueError):
        normalize_url("mysql://u@h/d")


def test_local_blob_store_atomic_and_safe(tmp_path) -> None:
    store = LocalBlobStore(tmp_path / "blobs")
    store.put("images/ab/x.png", b"data")
    assert store.get("images/ab/x.png") == b"data" and store.exists("images/ab/x.png")
    assert not [
        p for p in (tmp_path / "blobs" / "images" / "ab").iterdir() if p.name.startswith(".tmp")
    ]
    store.delete("images/ab/x.png")
    assert not store.exists("images/ab/x.png")
    for bad in ("../x", "/etc/passwd", "a/../../b", "", "a\\b"):
        with pytest.raises(ValueError):
            store.put(bad, b"x")


def test_inspect_image_from_bytes() -> None:
    info = inspect_image(_png(size=(40, 30)))
    assert (info.mime, info.ext, info.width, info.height) == ("image/png", "png", 40, 30)
    buf = io.BytesIO()
    Image.new("RGB", (5, 5)).save(buf, "WEBP")
    assert inspect_image(buf.getvalue()).mime == "image/webp"
    with pytest.raises(NotAnImage):
        inspect_image(b"<html>not an image</html>")


async def test_image_store_dedupes_bytes_and_ids_are_random(db: Database, tmp_path) -> None:
    store = ImageStore(db, LocalBlobStore(tmp_path / "blobs"))
    data = _png()
    a = await store.put(data, owner_key_id="k1", post_id="p1")
    b = await store.put(data)
    assert a.id != b.id and a.sha256 == b.sha256
    assert len(a.id) >= len("img_") + 22  # 128 random bits, url-safe
    files = list((tmp_path / "blobs").rglob("*.png"))
    assert files == [tmp_path / "blobs" / blob_key(a.sha256, "png")]
    assert await store.read(await store.get(a.id)) == data
    assert (await store.get(a.id)).owner_key_id == "k1"
    assert await store.get("img_missing") is None


async def test_concurrent_puts_share_commits_and_all_land(db: Database, tmp_path) -> None:
    store = ImageStore(db, LocalBlobStore(tmp_path / "blobs"))
    batches: list[int] = []
    commit = store._commit

    async def counting(items):
        batches.append(len(items))
        await commit(items)

    store._group = GroupCommit(counting)
    same = _png((1, 2, 3))
    datas = [_png((i, 0, 0)) for i in range(20)] + [same, same]
    rows = await asyncio.gather(*(store.put(d, owner_key_id="k") for d in datas))
    assert sum(batches) == len(datas) and len(batches) < len(datas)
    assert len({r.id for r in rows}) == len(datas)
    found = await store.get_many([r.id for r in rows])
    assert set(found) == {r.id for r in rows}
    # one blob row per content, even when a batch held the same content twice
    async with db.engine.connect() as conn:
        blobs = (await conn.execute(text("SELECT count(*) FROM blobs"))).scalar_one()
    assert blobs == 21


async def test_group_commit_failure_fails_only_its_item() -> None:
    committed: list[list[str]] = []

    async def commit(items: list[str]) -> None:
        await asyncio.sleep(0.01)
        if "bad" in items:
            raise ValueError("bad row")
        committed.append(items)

    group = GroupCommit(commit)
    first = asyncio.ensure_future(group.submit("a"))
    await asyncio.sleep(0)  # "a" is being committed; the next three wait for one batch
    rest = [asyncio.ensure_future(group.submit(x)) for x in ("b", "bad", "c")]
    results = await asyncio.gather(first, *rest, return_exceptions=True)
    assert results[0] is None and results[1] is None and results[3] is None
    assert isinstance(results[2], ValueError)
    assert committed == [["a"], ["b"], ["c"]]  # the failed batch, retried one by one


async def test_group_commit_cancelled_caller_still_writes() -> None:
    committed: list[str] = []
    gate = asyncio.Event()

    async def commit(items: list[str]) -> None:
        await gate.wait()
        committed.extend(items)

    group = GroupCommit(commit)
    caller = asyncio.ensure_future(group.submit("x"))
    await asyncio.sleep(0)
    caller.cancel()
    gate.set()
    with pytest.raises(asyncio.CancelledError):
        await caller
    later = await asyncio.wait_for(group.submit("y"), 1)
    assert later is None and committed == ["x", "y"]


@pytest.mark.parametrize("started", [False, True])
async def test_group_commit_cancelled_writer_cancels_its_waiters(started: bool) -> None:
    async def commit(items: list[str]) -> None:
        await asyncio.sleep(10)

    group = GroupCommit(commit)
    callers = [asyncio.ensure_future(group.submit("x"))]
    await asyncio.sleep(0.01 if started else 0)
    callers.append(asyncio.ensure_future(group.submit("y")))  # waits for the next batch
    await asyncio.sleep(0)
    group._task.cancel()
    for caller in callers:  # nobody waits forever
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(caller, 1)


async def test_write_in_thread_is_one_transaction_seen_by_the_async_engine(db: Database) -> None:
    def row(key: str) -> dict:
        return {
            "key": key, "sha256": "ab", "ext": "png", "mime": "image/png", "size_bytes": 1,
            "local": True, "remote_state": "none", "attempts": 0, "next_attempt_at": 0.0,
            "claimed_until": 0.0, "accessed_at": 1.0, "created_at": 1.0,
        }  # fmt: skip

    def two(conn):
        conn.execute(insert(Blob.__table__), [row("images/ab/one.png"), row("images/ab/two.png")])
        return "done"

    def half(conn):
        conn.execute(insert(Blob.__table__), [row("images/ab/three.png")])
        raise RuntimeError("fails after the first row")

    assert await db.write_in_thread(two) == "done"
    with pytest.raises(RuntimeError):
        await db.write_in_thread(half)
    async with db.engine.connect() as conn:
        keys = (await conn.execute(text("SELECT key FROM blobs ORDER BY key"))).scalars().all()
    assert keys == ["images/ab/one.png", "images/ab/two.png"]  # the failed one left nothing
