"""A usage row per `/v1` request, written after the answer; never a prompt or a key."""

from __future__ import annotations

import asyncio
import time

import pytest
from sqlalchemy import select

from storage.tables import UsageRow

CONFIG = "models:\n  poster: {type: image, provider: local}\n"
PROMPT = "一只戴帽子的狐狸 secret-topic-4711"


@pytest.fixture
def settings(settings):
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    settings.config_path.write_text(CONFIG)
    return settings


async def rows(services) -> list[UsageRow]:
    await services.usage.flush()
    async with services.db.session() as session:
        return list((await session.execute(select(UsageRow).order_by(UsageRow.id))).scalars())


async def test_usage_rows_record_key_model_status_latency_and_images(client, services) -> None:
    row, plaintext = await services.keys.create("alice")
    auth = {"Authorization": f"Bearer {plaintext}"}
    r = await client.post(
        "/v1/images/generations", json={"model": "poster", "prompt": PROMPT, "n": 2}, headers=auth
    )
    assert r.status_code == 200, r.text
    r = await client.post(
        "/v1/chat/completions",
        json={"model": "redink", "messages": [{"role": "user", "content": PROMPT}]},
        headers=auth,
    )
    assert r.status_code == 200, r.text
    post_id = r.json()["post"]["id"]
    assert (await client.get(f"/v1/posts/{post_id}", headers=auth)).status_code == 200
    r404 = await client.post("/v1/images/generations", json={"model": "nope", "prompt": "x"})
    assert r404.status_code == 404
    assert (await client.get("/v1/models", headers=auth)).status_code == 200  # not recorded
    bad = {"Authorization": "Bearer sk-ink-wrong"}
    assert (await client.get("/v1/posts", headers=bad)).status_code == 401  # not recorded

    recorded = await rows(services)
    assert [(u.method, u.endpoint, u.status) for u in recorded] == [
        ("POST", "/v1/images/generations", 200),
        ("POST", "/v1/chat/completions", 200),
        ("GET", "/v1/posts/{post_id}", 200),
        ("POST", "/v1/images/generations", 404),
    ]
    image, chat, get, missing = recorded
    assert (image.key_id, image.key_name, image.model) == (row.id, "alice", "poster")
    assert image.images == 2 and image.pages is None and image.post_id is None
    assert image.latency_ms > 0 and abs(image.created_at - time.time()) < 60
    assert (chat.model, chat.post_id) == ("redink", post_id)
    assert chat.pages == len(r.json()["post"]["pages"]) and chat.images == chat.pages
    assert (get.post_id, get.pages, get.images) == (post_id, None, None)
    assert (missing.key_id, missing.key_name, missing.model) == (None, "master", None)
    for usage in recorded:
        values = " ".join(str(v) for v in usage.model_dump().values())
        assert "secret-topic" not in values and plaintext not in values


async def test_failures_and_limits_are_recorded(client, services) -> None:
    _, plaintext = await services.keys.create("bob", allowed_models='["poster"]')
    r = await client.post(
        "/v1/chat/completions",
        json={"model": "redink", "messages": [{"role": "user", "content": "x"}]},
        headers={"Authorization": f"Bearer {plaintext}"},
    )
    assert r.status_code == 403
    [usage] = await rows(services)
    assert (usage.status, usage.model, usage.key_name) == (403, "redink", "bob")


async def test_rows_are_written_in_the_background(client, services) -> None:
    assert (await client.get("/v1/posts")).status_code == 200
    async with services.db.session() as session:
        for _ in range(60):  # the writer flushes about every second
            if (await session.execute(select(UsageRow))).scalars().first() is not None:
                break
            await asyncio.sleep(0.05)
        else:
            pytest.fail("no usage row was written")
