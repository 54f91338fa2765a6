"""Walks every error path and checks the OpenAI error shape."""

from __future__ import annotations

import json

import httpx
import pytest

from gateway.errors import (
    ContentPolicyViolation,
    GatewayError,
    RateLimited,
    UpstreamError,
    UpstreamTimeout,
    map_upstream_errors,
)
from tests.conftest import MASTER_KEY


def assert_openai_error(r: httpx.Response, status: int, code: str | None = None) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    if code is not None:
        assert error["code"] == code
    return error


CHAT = "/v1/chat/completions"


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status", "code"),
    [
        ("GET", "/v1/nope", {}, 404, "not_found"),
        ("GET", CHAT, {}, 405, "method_not_allowed"),
        (
            "POST",
            CHAT,
            {"content": b"{not json", "headers": {"content-type": "application/json"}},
            400,
            "invalid_json",
        ),
        ("POST", CHAT, {"json": {"model": "redink", "messages": "hi"}}, 400, "invalid_value"),
        ("POST", CHAT, {"json": {"model": "redink", "messages": []}}, 400, "invalid_value"),
        (
            "POST",
            CHAT,
            {"json": {"messages": [{"role": "user", "content": "x"}]}},
            400,
            "missing_required_parameter",
        ),
        (
            "POST",
            CHAT,
            {"json": {"model": "redink", "messages": [{"role": "robot", "content": "x"}]}},
            400,
            "invalid_value",
        ),
        (
            "POST",
            CHAT,
            {"json": {"model": "redink", "n": 2, "messages": [{"role": "user", "content": "x"}]}},
            400,
            "invalid_value",
        ),
        (
            "POST",
            CHAT,
            {"json": {"model": "gpt-9", "messages": [{"role": "user", "content": "x"}]}},
            404,
            "model_not_found",
        ),
        (
            "POST",
            CHAT,
            {"json": {"model": "redink", "messages": [{"role": "system", "content": "x"}]}},
            400,
            "invalid_request",
        ),
        (
            "POST",
            CHAT,
            {"json": {"model": "redink", "messages": [{"role": "user", "content": "  "}]}},
            400,
            "invalid_request",
        ),
        (
            "POST",
            CHAT,
            {
                "json": {"model": "redink", "messages": [{"role": "user", "content": "x"}]},
                "headers": {"Authorization": "Bearer nope"},
            },
            401,
            "invalid_api_key",
        ),
        ("GET", "/v1/posts/post_nope/download", {}, 404, "post_not_found"),
        ("GET", "/images/img_nope.png", {}, 404, "image_not_found"),
    ],
)
async def test_error_paths(client: httpx.AsyncClient, method, path, kwargs, status, code) -> None:
    r = await client.request(method, path, **kwargs)
    error = assert_openai_error(r, status, code)
    if code == "invalid_value" and path == CHAT:
        assert error["param"] and error["param"].startswith(("messages", "n"))


async def test_validation_error_names_the_nested_param(client: httpx.AsyncClient) -> None:
    r = await client.post(
        CHAT, json={"model": "redink", "messages": [{"role": "user", "content": 5}]}
    )
    error = assert_openai_error(r, 400, "invalid_value")
    assert error["param"].startswith("messages[0].content")


async def test_oversize_body_is_413(app, settings) -> None:
    from dataclasses import replace

    from gateway.app import create_app

    small = create_app(replace(settings, max_body_bytes=1000))
    async with small.router.lifespan_context(small):
        transport = httpx.ASGITransport(app=small)
        async with httpx.AsyncClient(
            transport=transport,
            base_url="http://t",
            headers={"Authorization": f"Bearer {MASTER_KEY}"},
        ) as c:
            big = {"model": "redink", "messages": [{"role": "user", "content": "x" * 5000}]}
            assert_openai_error(await c.post(CHAT, json=big), 413, "request_too_large")

            async def chunks():
                for _ in range(10):
                    yield b" " * 500

            r = await c.post(CHAT, content=chunks(), headers={"content-type": "application/json"})
            assert_openai_error(r, 413, "request_too_large")


async def test_unexpected_error_is_500_openai_shape(app) -> None:
    def broken():
        raise RuntimeError("secret detail sk-live-123")

    app.state.services.config = broken
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(
        transport=transport, base_url="http://t", headers={"Authorization": f"Bearer {MASTER_KEY}"}
    ) as c:
        r = await c.get("/v1/models")
    error = assert_openai_error(r, 500, "internal_error")
    assert "sk-live" not in r.text and error["type"] == "server_error"


@pytest.fixture
def broken_upstream_config(settings) -> None:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    # port 9 on loopback: nothing listens, the connection is refused at once
    settings.config_path.write_text(
        "providers:\n"
        "  dead: {type: openai, base_url: 'http://127.0.0.1:9/v1', api_key: sk-upstream-secret}\n"
        "models:\n"
        "  redink: {type: redink, text_provider: dead, image_provider: local}\n"
    )


async def test_upstream_failure_non_stream(
    broken_upstream_config, client: httpx.AsyncClient
) -> None:
    r = await client.post(
        CHAT, json={"model": "redink", "messages": [{"role": "user", "content": "x"}]}
    )
    error = assert_openai_error(r, 502, "upstream_error")
    assert "sk-upstream-secret" not in r.text and "dead" in error["message"]


async def test_upstream_failure_stream(broken_upstream_config, client: httpx.AsyncClient) -> None:
    payload = {"model": "redink", "stream": True, "messages": [{"role": "user", "content": "x"}]}
    r = await client.post(CHAT, json=payload)
    lines = [x for x in r.text.split("\n") if x.startswith("data: ")]
    errors = [json.loads(x[6:]) for x in lines if x.startswith("data: {") and '"error"' in x]
    assert errors and set(errors[0]["error"]) == {"message", "type", "param", "code"}
    assert lines[-1] == "data: [DONE]"
    assert "sk-upstream-secret" not in r.text


def _raise_in_mapping(exc: Exception) -> GatewayError:
    with pytest.raises(GatewayError) as info, map_upstream_errors("relay"):
        raise exc
    return info.value


def _status_error(
    status: int, body: dict | None = None, headers: dict | None = None
) -> httpx.HTTPStatusError:
    request = httpx.Request("POST", "http://upstream/v1/images/generations")
    response = httpx.Response(
        status, json=body or {"error": {"message": "nope"}}, headers=headers, request=request
    )
    return httpx.HTTPStatusError("x", request=request, response=response)


def test_upstream_mapping() -> None:
    auth = _raise_in_mapping(_status_error(401))
    assert isinstance(auth, UpstreamError) and auth.status == 502 and not auth.retryable
    assert "your API key is fine" in auth.message
    limited = _raise_in_mapping(_status_error(429, headers={"Retry-After": "7"}))
    assert isinstance(limited, RateLimited) and limited.status == 429
    assert limited.headers() == {"Retry-After": "7"}
    timeout = _raise_in_mapping(httpx.ReadTimeout("slow"))
    assert isinstance(timeout, UpstreamTimeout) and timeout.status == 504
    server = _raise_in_mapping(_status_error(503))
    assert server.status == 502 and server.retryable
    safety = _raise_in_mapping(
        _status_error(400, {"error": {"message": "blocked by safety system"}})
    )
    assert (
        isinstance(safety, ContentPolicyViolation) and safety.status == 400 and not safety.retryable
    )
    assert safety.body()["error"]["code"] == "content_policy_violation"
    refused = _raise_in_mapping(httpx.ConnectError("refused"))
    assert refused.status == 502 and refused.retryable
