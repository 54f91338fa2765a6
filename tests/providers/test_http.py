from __future__ import annotations

import asyncio
import logging

import httpx
import pytest

from gateway.errors import GatewayError, UpstreamError
from providers import http as http_module
from providers.http import large_answer_turn, read_limited, upstream_call

SECRET = "sk-upstream-secret-123"


def _status_error(status: int, body: str) -> httpx.HTTPStatusError:
    request = httpx.Request("POST", "https://relay.example/v1/images/generations")
    response = httpx.Response(status, text=body, request=request)
    return httpx.HTTPStatusError("x", request=request, response=response)


def test_error_body_is_logged_with_the_key_redacted(caplog) -> None:
    caplog.set_level(logging.WARNING, logger="inkgate.upstream")
    body = '{"error": {"message": "key sk-upstream-secret-123 is suspended", "code": "x"}}'
    with pytest.raises(GatewayError) as info, upstream_call("relay", SECRET):
        raise _status_error(403, body)
    assert SECRET not in info.value.message and info.value.status == 502
    [record] = caplog.records
    logged = record.getMessage()
    assert "403" in logged and "/v1/images/generations" in logged and "suspended" in logged
    assert SECRET not in logged and "[redacted]" in logged


def test_client_message_never_holds_the_key() -> None:
    body = '{"error": {"message": "bad request for sk-upstream-secret-123"}}'
    with pytest.raises(GatewayError) as info, upstream_call("relay", SECRET):
        raise _status_error(400, body)
    assert SECRET not in info.value.message and "[redacted]" in info.value.message


async def test_read_limited() -> None:
    small = httpx.Response(200, content=b"x" * 10)
    assert await read_limited(small, 100, "too big") == b"x" * 10
    large = httpx.Response(200, content=b"z" * 300_000)  # no request: nothing to ask
    assert await read_limited(large, 400_000, "too big") == b"z" * 300_000
    declared = httpx.Response(200, content=b"x" * 200)
    with pytest.raises(UpstreamError, match="too big"):
        await read_limited(declared, 100, "too big")

    async def stream():
        for _ in range(5):
            yield b"y" * 50

    streamed = httpx.Response(200, content=stream())
    with pytest.raises(UpstreamError, match="too big"):
        await read_limited(streamed, 100, "too big")


async def test_large_answers_take_turns_first_come_first_served(monkeypatch) -> None:
    monkeypatch.setattr(http_module, "LARGE_ANSWER_TURN_WAIT", 5.0)
    active = 0
    most = 0
    order: list[int] = []

    async def read(i: int) -> None:
        nonlocal active, most
        async with large_answer_turn():
            active += 1
            most = max(most, active)
            order.append(i)
            await asyncio.sleep(0.01)
            active -= 1

    tasks = []
    for i in range(6):
        tasks.append(asyncio.ensure_future(read(i)))
        await asyncio.sleep(0)  # arrive in this order
    await asyncio.gather(*tasks)
    assert most == http_module.LARGE_ANSWER_TURNS
    assert order == list(range(6))


async def test_a_stalled_answer_holds_the_others_back_only_briefly(monkeypatch) -> None:
    monkeypatch.setattr(http_module, "LARGE_ANSWER_TURN_WAIT", 0.05)
    stalled = asyncio.Event()

    async def stalled_read() -> None:
        async with large_answer_turn():
            await stalled.wait()

    holders = [asyncio.ensure_future(stalled_read()) for _ in range(http_module.LARGE_ANSWER_TURNS)]
    await asyncio.sleep(0.01)

    async def big():
        for _ in range(3):
            yield b"z" * (http_module.LARGE_ANSWER_BYTES // 2)

    started = asyncio.get_running_loop().time()
    data = await read_limited(httpx.Response(200, content=big()), 10**7, "too big")
    waited = asyncio.get_running_loop().time() - started
    assert len(data) == 3 * (http_module.LARGE_ANSWER_BYTES // 2)
    assert 0.04 <= waited < 1.0
    # a small answer (declared size) never waits for a turn
    started = asyncio.get_running_loop().time()
    assert await read_limited(httpx.Response(200, content=b"ok"), 100, "too big") == b"ok"
    assert asyncio.get_running_loop().time() - started < 0.04
    stalled.set()
    await asyncio.gather(*holders)
    # the turns were given back: a large answer now reads at once
    started = asyncio.get_running_loop().time()
    await read_limited(httpx.Response(200, content=big()), 10**7, "too big")
    assert asyncio.get_running_loop().time() - started < 0.04
