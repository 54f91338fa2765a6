"""The pass-through benchmark's load generator (`bench.passthrough.RawClient`), against a
real uvicorn server on loopback: what it sends, how it reads answers, and that a broken
answer is an error, never a counted success."""

from __future__ import annotations

import asyncio
import json

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from bench.passthrough import RawClient, _answer_ok, _clients

seen: list[dict] = []


async def generations(request: Request) -> Response:
    body = await request.json()
    seen.append(
        {"auth": request.headers.get("authorization"), "body": body, "client": request.client}
    )
    mode = request.query_params.get("mode")
    if mode == "close":
        return JSONResponse({"data": [{"url": "http://x/1.png"}]}, headers={"Connection": "close"})
    if mode == "error":
        return JSONResponse({"error": {"message": "no"}}, status_code=500)
    return JSONResponse({"data": [{"url": f"http://x/{len(seen)}.png"}]})


@pytest.fixture
async def server():
    seen.clear()
    app = Starlette(routes=[Route("/v1/images/generations", generations, methods=["POST"])])
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off")
    srv = uvicorn.Server(config)
    task = asyncio.create_task(srv.serve())
    while not srv.started:
        await asyncio.sleep(0.01)
    port = srv.servers[0].sockets[0].getsockname()[1]
    yield port
    srv.should_exit = True
    await task


def _client(port: int, path: str = "/v1/images/generations") -> RawClient:
    body = json.dumps({"model": "poster", "prompt": "a cat"}).encode()
    headers = {"Authorization": "Bearer sk-test", "Content-Type": "application/json"}
    return RawClient("127.0.0.1", port, path, headers, body)


async def test_requests_go_out_whole_on_one_kept_alive_connection(server):
    client = _client(server)
    try:
        for n in (1, 2, 3):
            status, body = await client.post()
            assert status == 200 and json.loads(body) == {"data": [{"url": f"http://x/{n}.png"}]}
    finally:
        await client.close()
    assert [s["body"] for s in seen] == [{"model": "poster", "prompt": "a cat"}] * 3
    assert {s["auth"] for s in seen} == {"Bearer sk-test"}
    assert len({s["client"] for s in seen}) == 1  # the same connection each time


async def test_an_answer_with_connection_close_makes_the_next_request_reconnect(server):
    client = _client(server, "/v1/images/generations?mode=close")
    try:
        assert (await client.post())[0] == 200
        assert client.writer is None
        assert (await client.post())[0] == 200
    finally:
        await client.close()
    assert len({s["client"] for s in seen}) == 2


async def test_a_cut_answer_raises_and_the_next_request_reconnects(server):
    async def cut(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b'HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{"data"')
        await writer.drain()
        writer.close()

    broken = await asyncio.start_server(cut, "127.0.0.1", 0)
    client = _client(broken.sockets[0].getsockname()[1])
    try:
        with pytest.raises(asyncio.IncompleteReadError):
            await client.post()
        assert client.writer is None
        with pytest.raises(asyncio.IncompleteReadError):
            await client.post()
    finally:
        await client.close()
        broken.close()
        await broken.wait_closed()


def test_only_a_200_with_an_image_url_counts():
    assert _answer_ok(200, b'{"data": [{"url": "http://x/1.png"}]}')
    assert not _answer_ok(500, b'{"data": [{"url": "http://x/1.png"}]}')
    assert not _answer_ok(200, b'{"data": []}')
    assert not _answer_ok(200, b'{"data": [{"url": ""}]}')
    assert not _answer_ok(200, b"not json")
    assert not _answer_ok(200, b'{"error": {"message": "no"}}')


@pytest.mark.parametrize("kind", ["raw", "httpx"])
async def test_the_clients_count_successes_and_errors(server, kind):
    latencies, later, errors, elapsed = await _clients(f"http://127.0.0.1:{server}", 3, 0.3, kind)
    assert latencies and errors == 0 and len(later) == len(latencies) - 3
    assert elapsed >= 0.3
