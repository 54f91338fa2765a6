"""External image URLs: off unless the operator allows it, and then SSRF-safe.

A real HTTP server on 127.0.0.1 plays every internal target and every served case; a
test that must not reach it checks that it saw no request, and a recording transport
checks that the gateway's client did not even try.
"""

from __future__ import annotations

import dataclasses
import io
import os
import threading
import time
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from PIL import Image

from gateway.app import create_app
from gateway.errors import InvalidRequest
from gateway.references import fetch_public_image, is_public_address, resolve_public
from tests.conftest import MASTER_KEY

OPENAI_ERROR_FIELDS = {"message", "type", "param", "code"}


def png(size: tuple[int, int] = (16, 16), color=(10, 120, 200)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    return buf.getvalue()


class ImageSite:
    """A plain HTTP server on 127.0.0.1 with one answer per path; `hits` lists the paths
    it was asked for."""

    def __init__(self) -> None:
        self.hits: list[str] = []
        site = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                site.hits.append(self.path)
                answer = getattr(site, "page_" + self.path.strip("/").replace(".", "_"), None)
                if answer is None:
                    self.send_error(404)
                    return
                try:
                    answer(self)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the gateway hung up, as it should for slow or big answers

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.02,), daemon=True)

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    @staticmethod
    def _send(h: BaseHTTPRequestHandler, body: bytes, ctype: str, length: bool = True) -> None:
        h.send_response(200)
        h.send_header("Content-Type", ctype)
        if length:
            h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)

    def page_x_png(self, h) -> None:
        self._send(h, png(), "image/png")

    def page_redirect(self, h) -> None:
        h.send_response(302)
        h.send_header("Location", self.url("/x.png"))
        h.send_header("Content-Length", "0")
        h.end_headers()

    def page_html(self, h) -> None:
        self._send(h, b"<html><body>not an image</body></html>", "text/html")

    def page_garbage_png(self, h) -> None:  # PNG magic, then nonsense: only a decode tells
        self._send(h, b"\x89PNG\r\n\x1a\n" + b"\x00garbage" * 64, "image/png")

    def page_truncated_png(self, h) -> None:
        noise = Image.frombytes("RGB", (24, 24), os.urandom(24 * 24 * 3))
        buf = io.BytesIO()
        noise.save(buf, "PNG")
        self._send(h, buf.getvalue()[:-500], "image/png")

    def page_big_png(self, h) -> None:
        self._send(h, png((300, 300)) + b"\x00" * 5000, "image/png")

    def page_big_unsized_png(self, h) -> None:  # no Content-Length: counted while read
        self._send(h, png((300, 300)) + b"\x00" * 5000, "image/png", length=False)

    def page_slow_png(self, h) -> None:  # every read is quick; the whole never ends
        h.send_response(200)
        h.send_header("Content-Type", "image/png")
        h.send_header("Content-Length", "100000")
        h.end_headers()
        for _ in range(200):
            h.wfile.write(b"\x00")
            h.wfile.flush()
            time.sleep(0.05)


@pytest.fixture
def site() -> Iterator[ImageSite]:
    s = ImageSite()
    s.thread.start()
    yield s
    s.server.shutdown()
    s.server.server_close()


class RecordingTransport(httpx.AsyncHTTPTransport):
    """A real transport that remembers every URL it was asked to connect to."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.urls.append(str(request.url))
        return await super().handle_async_request(request)


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    transport = RecordingTransport()
    async with httpx.AsyncClient(transport=transport, trust_env=False) as client:
        client.recorded = transport.urls  # type: ignore[attr-defined]
        yield client


def treat_as_public(name: str):
    """A resolver that sends `name` to the test server as if it were a public host and
    checks every other host for real."""

    async def resolve(host: str, port: int) -> str:
        if host == name:
            return "127.0.0.1"
        return await resolve_public(host, port)

    return resolve


def assert_refused(exc: pytest.ExceptionInfo[InvalidRequest], param: str = "p") -> dict:
    assert exc.value.status == 400
    error = exc.value.body()["error"]
    assert set(error) == OPENAI_ERROR_FIELDS and error["type"] == "invalid_request_error"
    assert error["param"] == param
    return error


# --- through the app, external fetching on ----------------------------------------------


@pytest.fixture
async def open_gw(settings, http) -> AsyncIterator[httpx.AsyncClient]:
    """The gateway with INKGATE_FETCH_EXTERNAL_IMAGES on; its client is `http`."""
    app = create_app(dataclasses.replace(settings, fetch_external_images=True))
    async with app.router.lifespan_context(app):
        app.state.services.http = http
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app),
            base_url="http://gw",
            headers={"Authorization": f"Bearer {MASTER_KEY}"},
            timeout=60,
        ) as client:
            yield client


def chat_with_image(url: str) -> dict:
    content = [
        {"type": "text", "text": "秋日穿搭 2页"},
        {"type": "image_url", "image_url": {"url": url}},
    ]
    return {"model": "redink", "messages": [{"role": "user", "content": content}]}


PUBLIC_ONLY = "must point to a public internet address"
REFUSED = [
    ("http://127.0.0.1:{port}/x.png", PUBLIC_ONLY),
    ("http://10.0.0.1/x.png", PUBLIC_ONLY),
    ("http://169.254.169.254/latest/meta-data", PUBLIC_ONLY),
    ("http://[::1]:{port}/x.png", PUBLIC_ONLY),
    ("http://localhost:{port}/x.png", PUBLIC_ONLY),
    ("http://0.0.0.0:{port}/x.png", PUBLIC_ONLY),
    ("http://[::ffff:127.0.0.1]:{port}/x.png", PUBLIC_ONLY),
    ("http://[::ffff:7f00:1]:{port}/x.png", PUBLIC_ONLY),
    ("http://2130706433:{port}/x.png", PUBLIC_ONLY),  # 127.0.0.1 written as one number
    ("http://100.64.0.1/x.png", PUBLIC_ONLY),
    ("http://[fd00::1]/x.png", PUBLIC_ONLY),
    ("http://[fe80::1]/x.png", PUBLIC_ONLY),
    ("http://[64:ff9b::7f00:1]:{port}/x.png", PUBLIC_ONLY),  # NAT64 of 127.0.0.1
    ("file:///etc/passwd", "must be http(s)"),
    ("ftp://example.com/x.png", "must be http(s)"),
    ("gopher://example.com/x", "must be http(s)"),
    ("http:///x.png", "must be http(s)"),
    ("http://user:secret@example.com/x.png", "user name or password"),
    ("http://example.com@127.0.0.1:{port}/x.png", "user name or password"),
    ("http://example.com:99999/x.png", "invalid host or port"),
]


@pytest.mark.parametrize(("url", "message"), REFUSED)
async def test_chat_refuses_internal_and_odd_urls_without_connecting(
    open_gw: httpx.AsyncClient, http, site: ImageSite, url: str, message: str
) -> None:
    url = url.format(port=site.port)
    r = await open_gw.post("/v1/chat/completions", json=chat_with_image(url))
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert set(error) == OPENAI_ERROR_FIELDS and error["type"] == "invalid_request_error"
    assert error["param"] == "messages[0].content[1].image_url"
    assert message in error["message"]
    assert http.recorded == [] and site.hits == []


async def test_images_edit_refuses_internal_urls(
    open_gw: httpx.AsyncClient, http, site: ImageSite
) -> None:
    r = await open_gw.post(
        "/v1/images/edits",
        json={"model": "redink", "prompt": "x", "images": [{"image_url": site.url("/x.png")}]},
    )
    assert r.status_code == 400 and r.json()["error"]["param"] == "images[0].image_url"
    assert http.recorded == [] and site.hits == []


async def test_chat_refuses_a_redirect_to_loopback(
    open_gw: httpx.AsyncClient, http, site: ImageSite, monkeypatch
) -> None:
    monkeypatch.setattr("gateway.references.resolve_public", treat_as_public("cdn.example.com"))
    r = await open_gw.post(
        "/v1/chat/completions", json=chat_with_image(site.url("/redirect", "cdn.example.com"))
    )
    assert r.status_code == 400, r.text
    assert "public" in r.json()["error"]["message"]
    assert site.hits == ["/redirect"]  # the first hop only: /x.png on loopback never asked
    assert len(http.recorded) == 1


async def test_chat_fetches_a_public_image_when_allowed(
    open_gw: httpx.AsyncClient, site: ImageSite, monkeypatch
) -> None:
    # The control for the refusals above: the same server, called public, is read.
    monkeypatch.setattr("gateway.references.resolve_public", treat_as_public("cdn.example.com"))
    r = await open_gw.post(
        "/v1/chat/completions", json=chat_with_image(site.url("/x.png", "cdn.example.com"))
    )
    assert r.status_code == 200, r.text
    assert site.hits == ["/x.png"]


# --- the fetcher --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("/html", "did not return an image"),
        ("/garbage.png", "damaged or not an image"),
        ("/truncated.png", "damaged or not an image"),
        ("/big.png", "larger than"),
        ("/big_unsized.png", "larger than"),
        ("/missing", "HTTP 404"),
    ],
)
async def test_fetch_refuses_what_is_not_a_small_image(
    http, site: ImageSite, path: str, message: str
) -> None:
    resolve = treat_as_public("img.example.com")
    with pytest.raises(InvalidRequest, match=message) as exc:
        await fetch_public_image(
            http, site.url(path, "img.example.com"), param="p", max_bytes=4000, resolve=resolve
        )
    assert_refused(exc)
    assert site.hits == [path]


async def test_fetch_has_a_total_time_limit(http, site: ImageSite) -> None:
    resolve = treat_as_public("img.example.com")
    started = time.monotonic()
    with pytest.raises(InvalidRequest, match="longer than") as exc:
        await fetch_public_image(
            http, site.url("/slow.png", "img.example.com"), param="p", timeout=0.5, resolve=resolve
        )
    assert_refused(exc)
    assert time.monotonic() - started < 3


async def test_fetch_reads_a_public_image_and_rechecks_redirects(http, site: ImageSite) -> None:
    resolve = treat_as_public("img.example.com")
    image = await fetch_public_image(
        http, site.url("/x.png", "img.example.com"), param="p", resolve=resolve
    )
    assert image.data == png() and image.mime == "image/png"
    with pytest.raises(InvalidRequest, match="public") as exc:
        await fetch_public_image(
            http, site.url("/redirect", "img.example.com"), param="p", resolve=resolve
        )
    assert_refused(exc)
    assert site.hits == ["/x.png", "/redirect"]


@pytest.mark.parametrize(
    "addr",
    [
        "64:ff9b::7f00:1",  # NAT64 of 127.0.0.1
        "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254
        "64:ff9b:1::808:808",  # local-use NAT64
        "2002:7f00:1::1",  # 6to4 of 127.0.0.1
        "2002:a00:1::1",  # 6to4 of 10.0.0.1
        "::7f00:1",  # IPv4-compatible 127.0.0.1
        "::",
        "fec0::1",  # site-local
        "ff02::1",
        "224.0.0.1",
        "255.255.255.255",
        "198.18.0.1",
        "not-an-address",
    ],
)
def test_addresses_that_hide_internal_ones_are_not_public(addr: str) -> None:
    assert is_public_address(addr) is False


@pytest.mark.parametrize("addr", ["64:ff9b::808:808", "2002:808:808::1", "::ffff:8.8.8.8"])
def test_wrapped_public_addresses_stay_public(addr: str) -> None:
    assert is_public_address(addr) is True


# --- external fetching off (the default) --------------------------------------------------


@pytest.fixture
async def recorded(services, http) -> list[str]:
    services.http = http
    return http.recorded


async def test_external_urls_are_refused_by_default_naming_the_setting(
    client: httpx.AsyncClient, recorded, site: ImageSite
) -> None:
    for url in ("https://example.com/cat.png", site.url("/x.png")):
        r = await client.post("/v1/chat/completions", json=chat_with_image(url))
        assert r.status_code == 400, r.text
        error = r.json()["error"]
        assert set(error) == OPENAI_ERROR_FIELDS and error["code"] == "external_image_urls_disabled"
        assert "INKGATE_FETCH_EXTERNAL_IMAGES" in error["message"]
        assert "data URL" in error["message"]
        assert error["param"] == "messages[0].content[1].image_url"
    r = await client.post(
        "/v1/images/edits",
        json={"model": "redink", "prompt": "x", "images": [{"image_url": site.url("/x.png")}]},
    )
    assert r.status_code == 400 and "INKGATE_FETCH_EXTERNAL_IMAGES" in r.text
    assert recorded == [] and site.hits == []


async def test_own_image_urls_work_by_default_from_any_host(
    client: httpx.AsyncClient, services, recorded
) -> None:
    row = await services.images.put(png((40, 40)))
    url = f"http://elsewhere.invalid/images/{row.id}.{row.ext}"
    r = await client.post("/v1/chat/completions", json=chat_with_image(url))
    assert r.status_code == 200, r.text
    assert r.json()["post"]["status"] == "completed"
    assert recorded == []
    # An id we do not have is not fetched either: the error says so.
    gone = "http://elsewhere.invalid/images/img_0000000000000000000000.png"
    r = await client.post("/v1/chat/completions", json=chat_with_image(gone))
    assert r.status_code == 400 and "img_0000000000000000000000" in r.json()["error"]["message"]
    assert recorded == []
