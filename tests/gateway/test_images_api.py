from __future__ import annotations

import base64
import io
import zipfile

import httpx
import pytest
from PIL import Image

from gateway.models import aspect_ratio_for_size


async def test_images_generate_redink_urls(client: httpx.AsyncClient) -> None:
    r = await client.post(
        "/v1/images/generations", json={"model": "redink", "prompt": "周末野餐攻略", "n": 3}
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert isinstance(body["created"], int) and len(body["data"]) == 3
    for item in body["data"]:
        assert item["url"].startswith("http://testserver/images/img_") and item["revised_prompt"]
        img = await client.get(item["url"])
        with Image.open(io.BytesIO(img.content)) as im:
            assert im.size == (1080, 1440)


async def test_images_generate_b64_and_size(client: httpx.AsyncClient) -> None:
    r = await client.post(
        "/v1/images/generations",
        json={"prompt": "tea ceremony", "n": 2, "size": "1024x1024", "response_format": "b64_json"},
    )
    assert r.status_code == 200, r.text
    data = r.json()["data"]
    assert len(data) == 2 and all("url" not in item for item in data)
    with Image.open(io.BytesIO(base64.b64decode(data[0]["b64_json"]))) as im:
        assert im.format == "PNG" and im.size[0] == im.size[1]


async def test_images_n1_lets_the_outline_decide(client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/images/generations", json={"model": "redink", "prompt": "city walk"})
    assert len(r.json()["data"]) >= 2


@pytest.mark.parametrize(
    ("payload", "status", "code", "param"),
    [
        ({"model": "nope", "prompt": "x"}, 404, "model_not_found", "model"),
        ({"prompt": ""}, 400, "invalid_value", "prompt"),
        ({}, 400, "missing_required_parameter", "prompt"),
        ({"prompt": "x", "n": "many"}, 400, "invalid_value", "n"),
        ({"prompt": "x", "n": 40}, 400, "invalid_value", "n"),
        ({"prompt": "x", "size": "big"}, 400, "invalid_value", "size"),
        ({"prompt": "x", "response_format": "gif"}, 400, "invalid_value", "response_format"),
        ({"prompt": "x", "bogus": 1}, 400, "unknown_parameter", "bogus"),
    ],
)
async def test_images_errors(client: httpx.AsyncClient, payload, status, code, param) -> None:
    r = await client.post("/v1/images/generations", json=payload)
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code and r.json()["error"]["param"] == param


@pytest.mark.parametrize(
    ("size", "ratio"),
    [
        (None, "3:4"),
        ("auto", "3:4"),
        ("1024x1536", "2:3"),
        ("1080x1440", "3:4"),
        ("1024x1024", "1:1"),
        ("1792x1024", "16:9"),
        ("1536x1024", "3:2"),
        ("900x1600", "9:16"),
    ],
)
def test_size_to_aspect_ratio(size, ratio) -> None:
    assert aspect_ratio_for_size(size, "3:4") == ratio


async def _post_with_images(client: httpx.AsyncClient) -> dict:
    r = await client.post(
        "/v1/chat/completions",
        json={"model": "redink", "messages": [{"role": "user", "content": "宠物摄影技巧 3页"}]},
    )
    return r.json()["post"]


async def test_image_serving_headers_and_304(client: httpx.AsyncClient) -> None:
    post = await _post_with_images(client)
    url = post["pages"][0]["image_url"]
    r = await client.get(url, headers={"Authorization": ""})  # public, unguessable URLs
    assert r.status_code == 200
    assert r.headers["content-type"] == "image/png"
    assert r.headers["cache-control"] == "public, max-age=31536000, immutable"
    etag = r.headers["etag"]
    r2 = await client.get(url, headers={"If-None-Match": etag})
    assert r2.status_code == 304 and r2.content == b""
    assert (await client.get("/images/img_doesnotexist0000000.png")).status_code == 404
    assert (await client.get("/images/../../etc/passwd")).status_code == 404


async def test_image_content_type_comes_from_bytes(client: httpx.AsyncClient, services) -> None:
    buf = io.BytesIO()
    Image.new("RGB", (10, 10)).save(buf, "JPEG")
    row = await services.images.put(buf.getvalue())
    r = await client.get(f"/images/{row.id}.png")  # a wrong extension does not change the type
    assert r.headers["content-type"] == "image/jpeg"


async def test_download_zip_by_owner_and_signed_link(client: httpx.AsyncClient, services) -> None:
    _, key = await services.keys.create("owner")
    auth = {"Authorization": f"Bearer {key}"}
    r = await client.post(
        "/v1/chat/completions",
        headers=auth,
        json={"model": "redink", "messages": [{"role": "user", "content": "读书笔记 3页"}]},
    )
    post = r.json()["post"]
    path = f"/v1/posts/{post['id']}/download"
    zipped = await client.get(path, headers=auth)
    assert zipped.status_code == 200 and zipped.headers["content-type"] == "application/zip"
    names = zipfile.ZipFile(io.BytesIO(zipped.content)).namelist()
    assert names == ["page_01.png", "page_02.png", "page_03.png"]
    # the link in the chat answer works without a header
    signed = post["download_url"].replace("http://testserver", "")
    assert (await client.get(signed, headers={"Authorization": ""})).status_code == 200
    # another key, a forged signature, no credentials
    _, other = await services.keys.create("other")
    assert (await client.get(path, headers={"Authorization": f"Bearer {other}"})).status_code == 404
    forged = signed[:-4] + "0000"
    assert (await client.get(forged, headers={"Authorization": ""})).status_code == 404
    assert (await client.get(path, headers={"Authorization": ""})).status_code == 401
    assert (await client.get(path)).status_code == 200  # the master key sees everything


async def test_health_and_ready(client: httpx.AsyncClient) -> None:
    assert (await client.get("/health")).json() == {"status": "ok"}
    r = await client.get("/ready")
    assert r.status_code == 200 and r.json()["checks"] == {"database": "ok", "storage": "ok"}


async def test_ready_reports_broken_storage(client: httpx.AsyncClient, services, tmp_path) -> None:
    services.blobs.root = tmp_path / "missing"
    r = await client.get("/ready")
    assert r.status_code == 503 and r.json()["checks"]["storage"].startswith("error")
