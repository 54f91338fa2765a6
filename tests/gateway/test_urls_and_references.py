from __future__ import annotations

import base64
import io
import ipaddress

import httpx
import pytest
from PIL import Image
from starlette.requests import Request

from gateway.errors import InvalidRequest
from gateway.references import (
    checked_image,
    decode_data_url,
    fetch_public_image,
    is_public_address,
)
from gateway.settings import Settings
from gateway.urls import base_url, check_download_signature, signed_download_url


def _request(client: str, headers: dict[str, str], scheme: str = "http") -> Request:
    scope = {
        "type": "http",
        "scheme": scheme,
        "server": ("gateway", 8000),
        "client": (client, 50000),
        "path": "/",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
    }
    return Request(scope)


def test_base_url_ignores_forwarded_headers_from_untrusted_peers(tmp_path) -> None:
    s = Settings(data_dir=tmp_path)
    req = _request(
        "203.0.113.9", {"host": "gw:8000", "x-forwarded-proto": "https", "x-forwarded-host": "evil"}
    )
    assert base_url(s, req) == "http://gw:8000"


def test_base_url_trusts_configured_proxies(tmp_path) -> None:
    s = Settings(data_dir=tmp_path, trusted_proxies=(ipaddress.ip_network("10.0.0.0/8"),))
    req = _request(
        "10.1.2.3",
        {"host": "gw:8000", "x-forwarded-proto": "https", "x-forwarded-host": "img.example.com"},
    )
    assert base_url(s, req) == "https://img.example.com"


def test_public_base_url_wins(tmp_path) -> None:
    s = Settings(data_dir=tmp_path, public_base_url="https://cdn.example.com/")
    assert base_url(s, _request("1.2.3.4", {"host": "x"})) == "https://cdn.example.com"


def test_settings_from_env(tmp_path) -> None:
    s = Settings.from_env(
        {
            "INKGATE_DATA_DIR": str(tmp_path),
            "INKGATE_TRUSTED_PROXIES": "127.0.0.1, 10.0.0.0/8",
            "INKGATE_IMAGE_CONCURRENCY": "9",
            "DATABASE_URL": "postgresql://u@h/d",
        }
    )
    assert s.data_dir == tmp_path and s.image_concurrency == 9
    assert s.database_url == "postgresql://u@h/d" and len(s.trusted_proxies) == 2
    assert Settings.from_env({"INKGATE_DATA_DIR": str(tmp_path)}).database_url.endswith(
        "inkgate.db"
    )
    with pytest.raises(ValueError):
        Settings.from_env({"INKGATE_PORT": "eighty"})
    with pytest.raises(ValueError):
        Settings.from_env({"INKGATE_MASTER_KEY": "short"})


def test_signed_download_links(tmp_path) -> None:
    s = Settings(data_dir=tmp_path)
    url = signed_download_url(s, "http://x", "post_1", "key1")
    expires = int(url.split("expires=")[1].split("&")[0])
    sig = url.split("sig=")[1]
    assert check_download_signature(s, "post_1", "key1", expires, sig)
    assert not check_download_signature(s, "post_2", "key1", expires, sig)
    assert not check_download_signature(s, "post_1", "key2", expires, sig)
    assert not check_download_signature(s, "post_1", "key1", 1000, sig)
    assert (tmp_path / "secret.key").stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize(
    ("addr", "public"),
    [
        ("8.8.8.8", True),
        ("127.0.0.1", False),
        ("10.0.0.1", False),
        ("169.254.169.254", False),
        ("192.168.1.1", False),
        ("::1", False),
        ("::ffff:127.0.0.1", False),
        ("fd00::1", False),
        ("100.64.0.1", False),
        ("0.0.0.0", False),
        ("2001:4860:4860::8888", True),
    ],
)
def test_is_public_address(addr: str, public: bool) -> None:
    assert is_public_address(addr) is public


def _png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (1, 2, 3)).save(buf, "PNG")
    return buf.getvalue()


async def test_fetch_connects_to_the_checked_address() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, content=_png(), headers={"content-type": "image/png"})

    async def resolve(host: str, port: int) -> str:
        assert host == "img.example.com"
        return "93.184.216.34"

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
        image = await fetch_public_image(
            http, "https://img.example.com/a.png", param="p", resolve=resolve
        )
    assert image.mime == "image/png"
    assert seen[0].url.host == "93.184.216.34" and seen[0].headers["host"] == "img.example.com"
    assert seen[0].extensions["sni_hostname"] == "img.example.com"


async def test_fetch_rechecks_redirects_and_limits() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/start":
            return httpx.Response(302, headers={"location": "http://internal.example/x"})
        if request.url.path == "/html":
            return httpx.Response(200, content=b"<html>", headers={"content-type": "text/html"})
        return httpx.Response(200, content=b"x" * 2000, headers={"content-type": "image/png"})

    async def resolve(host: str, port: int) -> str:
        if host == "internal.example":
            raise InvalidRequest("Image URLs must point to a public internet address")
        return "93.184.216.34"

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
        with pytest.raises(InvalidRequest, match="public"):
            await fetch_public_image(http, "http://ok.example/start", param="p", resolve=resolve)
        with pytest.raises(InvalidRequest, match="did not return an image"):
            await fetch_public_image(http, "http://ok.example/html", param="p", resolve=resolve)
        with pytest.raises(InvalidRequest, match="larger"):
            await fetch_public_image(
                http, "http://ok.example/big", param="p", resolve=resolve, max_bytes=1000
            )
        with pytest.raises(InvalidRequest, match="http"):
            await fetch_public_image(http, "file:///etc/passwd", param="p", resolve=resolve)


async def test_data_urls_must_decode_as_images() -> None:
    # PNG magic, then nonsense: the magic bytes alone would let it through.
    garbage = "data:image/png;base64," + base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"x" * 99).decode()
    with pytest.raises(InvalidRequest, match="damaged") as exc:
        await decode_data_url(garbage, "p")
    assert exc.value.status == 400 and exc.value.param == "p"
    ok = "data:image/png;base64," + base64.b64encode(_png()).decode()
    assert (await decode_data_url(ok, "p")).data == _png()


async def test_a_small_file_with_a_huge_canvas_is_refused_before_decoding() -> None:
    buf = io.BytesIO()
    Image.new("1", (8000, 7000)).save(buf, "PNG")  # 56 MP in a few kB
    assert len(buf.getvalue()) < 100_000
    with pytest.raises(InvalidRequest, match="8000x7000 pixels"):
        await checked_image(buf.getvalue(), "p")
