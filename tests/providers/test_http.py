from __future__ import annotations

import logging

import httpx
import pytest

from gateway.errors import GatewayError, UpstreamError
from providers.http import read_limited, upstream_call

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
    declared = httpx.Response(200, content=b"x" * 200)
    with pytest.raises(UpstreamError, match="too big"):
        await read_limited(declared, 100, "too big")

    async def stream():
        for _ in range(5):
            yield b"y" * 50

    streamed = httpx.Response(200, content=stream())
    with pytest.raises(UpstreamError, match="too big"):
        await read_limited(streamed, 100, "too big")
