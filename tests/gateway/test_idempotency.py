"""`Idempotency-Key` replays the first answer; failed generations say `x-should-retry: false`."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from gateway.app import create_app
from gateway.errors import UpstreamError
from tests.conftest import MASTER_KEY


@pytest.fixture
async def gw(settings):
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    settings.config_path.write_text("models:\n  poster: {type: image, provider: local}\n")
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        runner = app.state.services.runner
        real = runner.generate_image
        calls: list = []

        async def counting(*args, **kwargs):
            calls.append(args)
            if getattr(runner, "fail", False):
                raise UpstreamError("upstream broke")
            if getattr(runner, "slow", 0):
                await asyncio.sleep(runner.slow)
            return await real(*args, **kwargs)

        runner.generate_image = counting
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app),
            base_url="http://testserver",
            headers={"Authorization": f"Bearer {MASTER_KEY}"},
        ) as client:
            client.calls, client.runner = calls, runner
            yield client


def gen(prompt: str = "a fox") -> dict:
    return {"model": "poster", "prompt": prompt}


async def test_a_retried_request_replays_the_first_answer(gw) -> None:
    headers = {"Idempotency-Key": "req-1"}
    first = await gw.post("/v1/images/generations", json=gen(), headers=headers)
    second = await gw.post("/v1/images/generations", json=gen(), headers=headers)
    assert first.status_code == second.status_code == 200
    assert second.json() == first.json()
    assert second.headers["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in first.headers
    assert len(gw.calls) == 1
    # without a key, or with another key: generated again
    await gw.post("/v1/images/generations", json=gen())
    await gw.post("/v1/images/generations", json=gen(), headers={"Idempotency-Key": "req-2"})
    assert len(gw.calls) == 3


async def test_a_key_names_one_request(gw) -> None:
    headers = {"Idempotency-Key": "req-1"}
    await gw.post("/v1/images/generations", json=gen("a fox"), headers=headers)
    other = await gw.post("/v1/images/generations", json=gen("a cat"), headers=headers)
    assert other.status_code == 400
    assert other.json()["error"]["code"] == "idempotency_key_reused"
    assert other.json()["error"]["param"] == "Idempotency-Key"
    assert len(gw.calls) == 1


async def test_keys_are_per_caller(gw) -> None:
    services = gw._transport.app.state.services
    _, other_key = await services.keys.create("other")
    headers = {"Idempotency-Key": "shared"}
    await gw.post("/v1/images/generations", json=gen(), headers=headers)
    theirs = await gw.post(
        "/v1/images/generations",
        json=gen(),
        headers={**headers, "Authorization": f"Bearer {other_key}"},
    )
    assert theirs.status_code == 200 and "idempotent-replayed" not in theirs.headers
    assert len(gw.calls) == 2


async def test_a_duplicate_while_the_first_runs_gets_409(gw) -> None:
    gw.runner.slow = 0.5
    headers = {"Idempotency-Key": "slow"}
    first = asyncio.create_task(gw.post("/v1/images/generations", json=gen(), headers=headers))
    await asyncio.sleep(0.2)
    during = await gw.post("/v1/images/generations", json=gen(), headers=headers)
    assert during.status_code == 409
    assert during.json()["error"]["code"] == "idempotency_key_in_use"
    assert (await first).status_code == 200
    after = await gw.post("/v1/images/generations", json=gen(), headers=headers)
    assert after.headers["idempotent-replayed"] == "true"
    assert len(gw.calls) == 1


async def test_a_failed_generation_is_replayed_and_says_do_not_retry(gw) -> None:
    gw.runner.fail = True
    headers = {"Idempotency-Key": "fails"}
    first = await gw.post("/v1/images/generations", json=gen(), headers=headers)
    assert first.status_code == 502
    assert first.headers["x-should-retry"] == "false"
    again = await gw.post("/v1/images/generations", json=gen(), headers=headers)
    assert again.status_code == 502 and again.json() == first.json()
    assert len(gw.calls) == 1
    # and without a key the header is there too, so SDKs do not retry by themselves
    plain = await gw.post("/v1/images/generations", json=gen())
    assert plain.headers["x-should-retry"] == "false"


async def test_a_streamed_chat_answer_is_replayed(gw) -> None:
    body = {
        "model": "poster",
        "stream": True,
        "messages": [{"role": "user", "content": "a lighthouse"}],
    }
    headers = {"Idempotency-Key": "chat-1"}
    first = await gw.post("/v1/chat/completions", json=body, headers=headers)
    second = await gw.post("/v1/chat/completions", json=body, headers=headers)
    assert first.status_code == 200 and "data: [DONE]" in first.text
    assert second.text == first.text
    assert second.headers["content-type"].startswith("text/event-stream")
    assert len(gw.calls) == 1


async def test_wrong_keys_are_not_remembered_and_bad_keys_are_refused(gw) -> None:
    headers = {"Idempotency-Key": "k", "Authorization": "Bearer sk-ink-wrong"}
    assert (await gw.post("/v1/images/generations", json=gen(), headers=headers)).status_code == 401
    r = await gw.post("/v1/images/generations", json=gen(), headers={"Idempotency-Key": "x" * 300})
    assert r.status_code == 400 and r.json()["error"]["param"] == "Idempotency-Key"
