"""Per-key limits on `/v1`: expiry, allowed models, requests per minute (across two
app instances on one database), concurrent posts and the daily image quota."""

from __future__ import annotations

import asyncio
import io
import json
import time
import types
from datetime import timedelta

import httpx
import pytest
from PIL import Image as PILImage

from gateway import limits
from gateway.app import create_app
from storage.tables import Image, Post, PostJob, utcnow
from tests.conftest import MASTER_KEY

CONFIG = "models:\n  poster: {type: image, provider: local}\n"


@pytest.fixture
def settings(settings):
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    settings.config_path.write_text(CONFIG)
    return settings


async def make_key(services, **limits_) -> dict[str, str]:
    if "allowed_models" in limits_:
        limits_["allowed_models"] = json.dumps(limits_["allowed_models"])
    row, plaintext = await services.keys.create("limited", **limits_)
    return {"Authorization": f"Bearer {plaintext}", "_id": row.id}


def auth(key: dict) -> dict:
    return {"Authorization": key["Authorization"]}


def assert_error(r: httpx.Response, status: int, code: str) -> dict:
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == code
    return error


def chat(model: str, text: str = "周末野餐攻略") -> dict:
    return {"model": model, "messages": [{"role": "user", "content": text}]}


def png() -> bytes:
    out = io.BytesIO()
    PILImage.new("RGB", (8, 8), "red").save(out, "PNG")
    return out.getvalue()


# -- expiry -------------------------------------------------------------------------


async def test_expired_key_is_401_like_a_revoked_one(client, services) -> None:
    soon = await make_key(services, expires_at=utcnow() + timedelta(hours=1))
    assert (await client.get("/v1/models", headers=auth(soon))).status_code == 200
    gone = await make_key(services, expires_at=utcnow() - timedelta(seconds=1))
    error = assert_error(await client.get("/v1/models", headers=auth(gone)), 401, "invalid_api_key")
    assert "expired" in error["message"]
    r = await client.post("/v1/posts", json={"topic": "x"}, headers=auth(gone))
    assert_error(r, 401, "invalid_api_key")


# -- allowed models -----------------------------------------------------------------


async def test_models_outside_the_allowed_list_are_403(client, services) -> None:
    key = await make_key(services, allowed_models=["poster"])
    listed = (await client.get("/v1/models", headers=auth(key))).json()["data"]
    assert [m["id"] for m in listed] == ["poster"]
    for r in (
        await client.post("/v1/chat/completions", json=chat("redink"), headers=auth(key)),
        await client.post(
            "/v1/images/generations", json={"model": "redink", "prompt": "x"}, headers=auth(key)
        ),
        # no model: the default post model, which this key may not use
        await client.post("/v1/images/generations", json={"prompt": "x"}, headers=auth(key)),
        await client.post(
            "/v1/images/edits",
            files={"image": ("a.png", png(), "image/png")},
            data={"prompt": "x", "model": "redink-plan"},
            headers=auth(key),
        ),
        await client.post("/v1/posts", json={"topic": "x"}, headers=auth(key)),
        await client.get("/v1/models/redink", headers=auth(key)),
    ):
        error = assert_error(r, 403, "model_not_allowed")
        assert error["param"] == "model"
    r = await client.post(
        "/v1/images/generations", json={"model": "poster", "prompt": "a fox"}, headers=auth(key)
    )
    assert r.status_code == 200, r.text
    # the master key sees and uses every model
    everything = (await client.get("/v1/models")).json()["data"]
    assert {"redink", "redink-plan", "poster"} <= {m["id"] for m in everything}


async def test_allowing_a_post_model_allows_its_plan_twin(client, services) -> None:
    key = await make_key(services, allowed_models=["redink"])
    listed = (await client.get("/v1/models", headers=auth(key))).json()["data"]
    assert [m["id"] for m in listed] == ["redink", "redink-plan"]
    r = await client.post("/v1/chat/completions", json=chat("redink-plan"), headers=auth(key))
    assert r.status_code == 200, r.text
    r = await client.post(
        "/v1/images/generations", json={"model": "poster", "prompt": "x"}, headers=auth(key)
    )
    assert_error(r, 403, "model_not_allowed")


# -- requests per minute ------------------------------------------------------------


@pytest.fixture
def frozen(monkeypatch):
    """limits' clock, settable: starts 45 s into a minute."""
    clock = types.SimpleNamespace(now=1_800_000_000.0 + 45)  # a multiple of 60, plus 45
    monkeypatch.setattr(limits, "time", types.SimpleNamespace(time=lambda: clock.now))
    return clock


async def test_rpm_429_with_retry_after_until_the_minute_ends(client, services, frozen) -> None:
    key = await make_key(services, rpm=3)
    for _ in range(3):
        assert (await client.get("/v1/posts", headers=auth(key))).status_code == 200
    r = await client.get("/v1/posts", headers=auth(key))
    error = assert_error(r, 429, "rate_limit_exceeded")
    assert error["type"] == "rate_limit_error"
    assert r.headers["retry-after"] == "15"
    frozen.now += 10
    r = await client.post("/v1/chat/completions", json=chat("redink-plan"), headers=auth(key))
    assert_error(r, 429, "rate_limit_exceeded")
    assert r.headers["retry-after"] == "5"
    # the master key is never limited
    for _ in range(5):
        assert (await client.get("/v1/posts")).status_code == 200
    frozen.now += 5  # a new minute
    assert (await client.get("/v1/posts", headers=auth(key))).status_code == 200
    # another key has its own count
    other = await make_key(services, rpm=1)
    assert (await client.get("/v1/posts", headers=auth(other))).status_code == 200


async def test_rpm_is_counted_across_two_app_instances(settings, frozen) -> None:
    first, second = create_app(settings), create_app(settings)
    async with (
        first.router.lifespan_context(first),
        second.router.lifespan_context(second),
    ):
        key = await make_key(first.state.services, rpm=4)
        clients = [
            httpx.AsyncClient(transport=httpx.ASGITransport(app=a), base_url="http://testserver")
            for a in (first, second)
        ]
        try:
            for c in clients + clients:
                assert (await c.get("/v1/posts", headers=auth(key))).status_code == 200
            for c in clients:
                r = await c.get("/v1/posts", headers=auth(key))
                assert_error(r, 429, "rate_limit_exceeded")
                assert r.headers["retry-after"] == "15"
        finally:
            for c in clients:
                await c.aclose()


# -- concurrent posts ---------------------------------------------------------------


async def running_post(services, owner: str | None) -> str:
    """A post whose job another (live) process runs."""
    post_id = "post_running_" + (owner or "master")
    async with services.db.session() as session:
        session.add(Post(id=post_id, owner_key_id=owner, model="redink", topic="t"))
        await session.commit()
        session.add(
            PostJob(
                id="job_" + post_id,
                post_id=post_id,
                active_post_id=post_id,
                claimed_by="elsewhere",
                claimed_until=time.time() + 3600,
                created_at=time.time(),
                updated_at=time.time(),
            )
        )
        await session.commit()
    return post_id


async def test_concurrent_posts_limit_429_when_starting_a_post(client, services) -> None:
    key = await make_key(services, max_concurrent_posts=1)
    await running_post(services, None)  # the master's post does not count
    r = await client.post("/v1/posts", json={"topic": "one", "mode": "outline"}, headers=auth(key))
    assert r.status_code == 200, r.text
    post_id = await running_post(services, key["_id"])
    for r in (
        await client.post("/v1/posts", json={"topic": "x"}, headers=auth(key)),
        await client.post("/v1/chat/completions", json=chat("redink"), headers=auth(key)),
        await client.post("/v1/chat/completions", json=chat("redink-plan"), headers=auth(key)),
        await client.post(
            "/v1/images/generations", json={"model": "redink", "prompt": "x"}, headers=auth(key)
        ),
    ):
        assert_error(r, 429, "concurrent_posts_exceeded")
        assert int(r.headers["retry-after"]) >= 1
    # an image model starts no post
    r = await client.post(
        "/v1/images/generations", json={"model": "poster", "prompt": "x"}, headers=auth(key)
    )
    assert r.status_code == 200, r.text
    assert (await client.post("/v1/posts", json={"topic": "x"})).status_code == 200  # master
    async with services.db.session() as session:
        job = await session.get(PostJob, "job_" + post_id)
        job.active_post_id = None
        session.add(job)
        await session.commit()
    r = await client.post("/v1/posts", json={"topic": "x", "mode": "outline"}, headers=auth(key))
    assert r.status_code == 200, r.text


# -- daily image quota --------------------------------------------------------------


async def test_daily_image_quota_429_before_generating(client, services) -> None:
    key = await make_key(services, daily_image_quota=2)
    async with services.db.session() as session:  # yesterday's images do not count
        session.add(
            Image(
                id="img_yesterday", sha256="0" * 64, mime="image/png", ext="png", width=1,
                height=1, size_bytes=1, owner_key_id=key["_id"],
                created_at=limits.utc_midnight(time.time()) - timedelta(seconds=1),
            )
        )  # fmt: skip
        await session.commit()

    def generate(n: int = 1):
        return client.post(
            "/v1/images/generations",
            json={"model": "poster", "prompt": f"fox {n} {time.time()}", "n": n},
            headers=auth(key),
        )

    r = await generate(3)  # more than the whole quota
    assert_error(r, 429, "daily_image_quota_exceeded")
    assert (await generate()).status_code == 200
    assert (await generate()).status_code == 200
    r = await generate()
    error = assert_error(r, 429, "daily_image_quota_exceeded")
    assert error["type"] == "rate_limit_error" and "2 of 2" in error["message"]
    midnight = limits.utc_midnight(time.time()) + timedelta(days=1)
    assert abs(int(r.headers["retry-after"]) - (midnight.timestamp() - time.time())) < 5
    for r in (
        await client.post("/v1/posts", json={"topic": "x"}, headers=auth(key)),
        await client.post("/v1/chat/completions", json=chat("redink"), headers=auth(key)),
        await client.post("/v1/chat/completions", json=chat("poster"), headers=auth(key)),
    ):
        assert_error(r, 429, "daily_image_quota_exceeded")
    # an outline draws nothing
    r = await client.post("/v1/posts", json={"topic": "x", "mode": "outline"}, headers=auth(key))
    assert r.status_code == 200, r.text
    post_id = r.json()["id"]
    for _ in range(200):  # until the outline is written
        if (await client.get(f"/v1/posts/{post_id}")).json()["status"] != "generating":
            break
        await asyncio.sleep(0.02)
    assert_error(
        await client.post(f"/v1/posts/{post_id}/generate", headers=auth(key)),
        429,
        "daily_image_quota_exceeded",
    )
    assert (await client.post("/v1/chat/completions", json=chat("poster"))).status_code == 200


async def test_unlimited_key_and_master_key_pass(client, services) -> None:
    key = await make_key(services)
    r = await client.post("/v1/chat/completions", json=chat("redink"), headers=auth(key))
    assert r.status_code == 200, r.text
    r = await client.post("/v1/chat/completions", json=chat("redink"), headers={})
    assert r.status_code == 200, r.text
    assert r.request.headers["authorization"] == f"Bearer {MASTER_KEY}"
