"""`/admin/api/logs`: requests and job events merged newest first, levels, filters, the
polling cursor; the error recorded for a failed request; usage retention."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
from sqlalchemy import func, insert, select

from gateway import usage as usage_module
from gateway.settings import Settings
from gateway.usage import RetentionSweep, sweep_retention
from storage.tables import AdminSession, AdminSignInFailure, UsageRow
from tests.gateway.test_posts_edit import wait_done
from tests.gateway.test_runner import (  # noqa: F401 - fixtures
    Script,
    fake_types,
    script,
    settings,
)


def assert_error(r, status: int, code: str | None = None) -> dict:
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    if code is not None:
        assert error["code"] == code
    return error


async def logs(client, services, **params) -> dict:
    await services.usage.flush()
    r = await client.get("/admin/api/logs", params=params)
    assert r.status_code == 200, r.text
    return r.json()


@pytest.fixture
async def user(services) -> dict:
    row, key = await services.keys.create("alice")
    return {"id": row.id, "headers": {"Authorization": f"Bearer {key}"}}


async def make_post(client, topic: str, headers=None) -> dict:
    r = await client.post("/v1/posts", json={"topic": topic}, headers=headers or {})
    assert r.status_code == 200, r.text
    return await wait_done(client, r.json()["id"])


async def test_requests_and_job_events_merged_newest_first(
    client, services, script: Script, user
) -> None:
    script.outline_pages = 3
    script.policy = {2}
    post = await make_post(client, "秋天的咖啡馆", user["headers"])
    r = await client.post("/v1/images/generations", json={"model": "nope", "prompt": "x"})
    assert r.status_code == 404

    body = await logs(client, services)
    data = body["data"]
    assert body["object"] == "list" and body["has_more"] is False
    assert body["next_before"] is None
    assert [i["ts"] for i in data] == sorted((i["ts"] for i in data), reverse=True)
    assert {i["source"] for i in data} == {"request", "job"}
    assert len({i["id"] for i in data}) == len(data)

    requests = [i for i in data if i["source"] == "request"]
    assert [(i["method"], i["endpoint"], i["status"]) for i in requests][-1] == (
        "POST",
        "/v1/posts",
        200,
    )
    failed = requests[0]
    assert failed["status"] == 404 and failed["level"] == "warning"
    assert failed["message"].startswith("model_not_found: ")
    assert failed["key_name"] == "master" and failed["latency_ms"] >= 0
    created = requests[-1]
    assert created["level"] == "info" and created["message"] is None
    assert created["key_id"] == user["id"] and created["key_name"] == "alice"
    assert created["post_id"] == post["id"] and created["model"] == "redink"

    events = [i for i in data if i["source"] == "job"]
    kinds = [i["kind"] for i in reversed(events)]
    assert kinds[0] == "outline" and kinds[-1] == "finished"
    assert {i["post_id"] for i in events} == {post["id"]}
    assert all(i["topic"] == "秋天的咖啡馆" and i["key_name"] == "alice" for i in events)
    assert all(i["model"] == "redink" and i["key_id"] == user["id"] for i in events)
    [page_failed] = [i for i in events if i["kind"] == "page_failed"]
    assert page_failed["level"] == "error" and page_failed["page"] == 2
    assert (
        page_failed["message"].startswith("page 3 failed: ")
        and "refused" in (page_failed["message"])
    )
    finished = events[0]
    assert finished["kind"] == "finished" and finished["level"] == "info"
    assert finished["message"] == "finished: partial (failed: page 3)"
    outline = events[-1]
    assert outline["message"] == "outline: 3 pages"
    done = [i["message"] for i in events if i["kind"] == "page_done"]
    assert sorted(done)[0].startswith("page 2 drawn (img_") and any(
        m.startswith("the cover drawn") for m in done
    )


async def test_levels_and_filters(client, services, script: Script, user) -> None:
    script.outline_pages = 3
    script.policy = {1}
    mine = await make_post(client, "tea with alice", user["headers"])
    script.policy = set()
    theirs = await make_post(client, "coffee by master")
    await client.post("/v1/images/generations", json={"model": "nope", "prompt": "x"})
    r = await client.post("/v1/posts", json={"topic": ""})  # 400, a validation error
    assert r.status_code == 400

    def sources(body) -> set[tuple]:
        return {(i["source"], i["kind"] or i["status"]) for i in body["data"]}

    errors = await logs(client, services, level="error")
    assert sources(errors) == {("job", "page_failed")}
    warnings = await logs(client, services, level="warning")
    assert sources(warnings) == {("job", "page_failed"), ("request", 404), ("request", 400)}
    assert [i["message"] for i in warnings["data"] if i["status"] == 400][0].startswith(
        "invalid_value: "
    )
    everything = await logs(client, services, level="info")
    assert len(everything["data"]) == len((await logs(client, services))["data"])

    by_user = await logs(client, services, key_id=user["id"])
    assert by_user["data"] and {i["key_id"] for i in by_user["data"]} == {user["id"]}
    assert {i["post_id"] for i in by_user["data"]} == {mine["id"]}
    by_master = await logs(client, services, key_id="master")
    assert {i["key_name"] for i in by_master["data"]} == {"master"}
    # (the master key also polled alice's post: those requests are the master's)
    assert {i["post_id"] for i in by_master["data"] if i["source"] == "job"} == {theirs["id"]}

    text = await logs(client, services, q="MODEL_NOT_FOUND")
    assert [(i["source"], i["status"]) for i in text["data"]] == [("request", 404)]
    topic = await logs(client, services, q="with alice")
    assert topic["data"] and {i["post_id"] for i in topic["data"]} == {mine["id"]}
    assert (await logs(client, services, q="%"))["data"] == []  # % is literal

    jobs = await logs(client, services, source="job", model="redink")
    assert jobs["data"] and {i["source"] for i in jobs["data"]} == {"job"}
    requests = await logs(client, services, source="request", model="redink")
    assert {i["endpoint"] for i in requests["data"]} == {"/v1/posts"}
    assert len(requests["data"]) == 2
    assert (await logs(client, services, since=str(time.time() + 60)))["data"] == []

    for params, param in (
        ({"after_id": "12"}, "after_id"),
        ({"before_id": "a-b"}, "before_id"),
        ({"after_id": "1-1", "before_id": "1-1"}, "after_id"),
        ({"limit": 501}, "limit"),
        ({"level": "debug"}, "level"),
        ({"since": "yesterday"}, "since"),
    ):
        error = assert_error(await client.get("/admin/api/logs", params=params), 400)
        assert error["param"] == param


async def test_the_cursor_returns_only_new_rows(client, services, script: Script) -> None:
    script.outline_pages = 2
    await make_post(client, "first")
    first = await logs(client, services)
    assert first["data"] and first["latest"]
    quiet = await logs(client, services, after_id=first["latest"])
    assert quiet["data"] == [] and quiet["latest"] == first["latest"]

    for _ in range(3):
        await client.post("/v1/images/generations", json={"model": "nope", "prompt": "x"})
    fresh = await logs(client, services, after_id=first["latest"])
    assert [i["status"] for i in fresh["data"]] == [404, 404, 404]
    assert fresh["has_more"] is False and fresh["latest"] != first["latest"]
    assert not {i["id"] for i in fresh["data"]} & {i["id"] for i in first["data"]}

    # a poll with a small limit catches up in order, without gaps
    for _ in range(3):
        await client.post("/v1/images/generations", json={"model": "nope", "prompt": "y"})
    seen: list[str] = []
    cursor = fresh["latest"]
    for _ in range(5):
        page = await logs(client, services, after_id=cursor, limit=2)
        seen += [i["id"] for i in reversed(page["data"])]
        cursor = page["latest"]
        if not page["has_more"]:
            break
    assert len(seen) == 3 and seen == sorted(seen, key=lambda s: int(s[2:]))

    # paging back with next_before covers everything once
    everything = await logs(client, services, limit=500)
    collected: list[str] = []
    page = await logs(client, services, limit=4)
    while True:
        collected += [i["id"] for i in page["data"]]
        if not page["has_more"]:
            break
        page = await logs(client, services, limit=4, before_id=page["next_before"])
    assert sorted(collected) == sorted(i["id"] for i in everything["data"])
    assert len(collected) == len(set(collected))


async def test_an_unhandled_error_is_recorded_as_internal(app, client, services) -> None:
    async def broken(**_kwargs):
        raise RuntimeError("a bug, with a secret sk-should-not-show")

    services.runner.start = broken
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(
        transport=transport, base_url="http://testserver", headers=client.headers
    ) as raw:
        r = await raw.post("/v1/posts", json={"topic": "tea"})
    assert r.status_code == 500
    [row] = (await logs(client, services, source="request"))["data"]
    assert (row["status"], row["level"]) == (500, "error")
    assert row["message"] == "internal_error: RuntimeError"


async def test_admin_logs_need_the_master_key(client, user) -> None:
    r = await client.get("/admin/api/logs", headers=user["headers"])
    assert_error(r, 403, "permission_denied")
    r = await client.get("/admin/api/logs", headers={"Authorization": ""})
    assert r.status_code == 401


# -- retention ---------------------------------------------------------------------


def _usage(created_at: float) -> dict:
    return {
        "created_at": created_at,
        "key_id": None,
        "key_name": "master",
        "model": None,
        "method": "GET",
        "endpoint": "/v1/posts",
        "status": 200,
        "latency_ms": 1.0,
    }


async def test_retention_deletes_only_old_rows(services, monkeypatch) -> None:
    monkeypatch.setattr(usage_module, "SWEEP_BATCH", 2)  # several batches
    now = time.time()
    day = 86400
    db = services.db
    async with db.engine.begin() as conn:
        await conn.execute(
            insert(UsageRow.__table__),
            [_usage(now - 100 * day - i) for i in range(5)] + [_usage(now - 10 * day), _usage(now)],
        )
        await conn.execute(
            insert(AdminSignInFailure.__table__),
            [
                {"username": "a", "ip": "1.2.3.4", "at": now - 2 * day},
                {"username": "a", "ip": "1.2.3.4", "at": now - 60},
            ],
        )
        await conn.execute(
            insert(AdminSession.__table__),
            [
                {"id": "old", "user_id": "u", "csrf_token": "c", "expires_at": now - 1},
                {"id": "live", "user_id": "u", "csrf_token": "c", "expires_at": now + 3600},
            ],
        )

    async def counts() -> tuple[int, int, int]:
        out = []
        async with db.engine.connect() as conn:
            for table in (UsageRow, AdminSignInFailure, AdminSession):
                out.append((await conn.execute(select(func.count()).select_from(table))).scalar())
        return tuple(out)

    # 0 keeps usage forever; the sign-in leftovers still go
    assert await sweep_retention(db, 0, now=now) == {
        "usage": 0,
        "signin_failures": 1,
        "sessions": 1,
    }
    assert await counts() == (7, 1, 1)
    assert (await sweep_retention(db, 90, now=now))["usage"] == 5
    assert await counts() == (2, 1, 1)
    async with db.engine.connect() as conn:
        left = (await conn.execute(select(AdminSession.__table__.c.id))).scalars().all()
    assert left == ["live"]
    assert (await sweep_retention(db, 5, now=now))["usage"] == 1
    assert await counts() == (1, 1, 1)


async def test_the_app_sweeps_in_the_background(app, services) -> None:
    assert "usage-retention" in {t.get_name() for t in asyncio.all_tasks()}
    async with services.db.engine.begin() as conn:
        await conn.execute(insert(UsageRow.__table__), [_usage(time.time() - 100 * 86400)])
    sweep = RetentionSweep(services.db, 90, every=0.02)
    sweep.start()
    try:
        async with asyncio.timeout(10):
            while True:
                async with services.db.engine.connect() as conn:
                    left = (await conn.execute(select(func.count()).select_from(UsageRow))).scalar()
                if left == 0:
                    break
                await asyncio.sleep(0.02)
    finally:
        await sweep.stop()


def test_usage_retention_setting() -> None:
    assert Settings.from_env({}).usage_retention_days == 90
    env = {"INKGATE_USAGE_RETENTION_DAYS": "0"}
    assert Settings.from_env(env).usage_retention_days == 0
    with pytest.raises(ValueError, match="INKGATE_USAGE_RETENTION_DAYS"):
        Settings.from_env({"INKGATE_USAGE_RETENTION_DAYS": "soon"})
