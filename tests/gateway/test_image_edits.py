from __future__ import annotations

import base64
import io

import httpx
import pytest
from PIL import Image

from gateway.app import create_app
from tests.conftest import MASTER_KEY
from tests.fakes.openai_upstream import create_fake_openai


def png(color=(200, 50, 50), size=(64, 64), mode="RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, color).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture
def fake():
    return create_fake_openai(api_key="sk-edit")


@pytest.fixture
async def gw(settings, fake, monkeypatch):
    """The gateway with an image model `poster` on the fake OpenAI upstream."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    settings.config_path.write_text(
        "providers:\n  relay: {type: openai, base_url: 'http://fake/v1', api_key: sk-edit}\n"
        "models:\n  poster: {type: image, provider: relay, model: dall-e-2}\n"
        "  redink: {type: redink}\n"
    )
    real = httpx.AsyncClient

    def to_fake(*args, **kwargs):
        kwargs["transport"] = httpx.ASGITransport(app=fake)
        return real(*args, **kwargs)

    monkeypatch.setattr("gateway.app.httpx.AsyncClient", to_fake)
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        async with real(
            transport=httpx.ASGITransport(app=app),
            base_url="http://gw",
            headers={"Authorization": f"Bearer {MASTER_KEY}"},
            timeout=60,
        ) as client:
            yield client


async def test_multipart_edit_with_mask_reaches_the_upstream(gw: httpx.AsyncClient, fake) -> None:
    r = await gw.post(
        "/v1/images/edits",
        data={"model": "poster", "prompt": "make it blue", "n": "2", "size": "512x512"},
        files=[
            ("image", ("a.png", png(), "image/png")),
            ("mask", ("m.png", png(mode="RGBA"), "image/png")),
        ],
    )
    assert r.status_code == 200, r.text
    assert len(r.json()["data"]) == 2 and all("url" in d for d in r.json()["data"])
    [sent] = [q for q in fake.state.requests if q["path"] == "/v1/images/edits"]
    assert sorted(f["field"] for f in sent["files"]) == ["image", "mask"]
    assert sent["fields"]["prompt"] == "make it blue" and sent["fields"]["n"] == "2"


async def test_json_edit_with_data_urls(gw: httpx.AsyncClient, fake) -> None:
    url = "data:image/png;base64," + base64.b64encode(png()).decode()
    r = await gw.post(
        "/v1/images/edits",
        json={"model": "poster", "prompt": "x", "images": [{"image_url": url}, {"image_url": url}],
              "response_format": "b64_json"},
    )  # fmt: skip
    assert r.status_code == 200, r.text
    assert Image.open(io.BytesIO(base64.b64decode(r.json()["data"][0]["b64_json"]))).format == "PNG"
    [sent] = [q for q in fake.state.requests if q["path"] == "/v1/images/edits"]
    assert [f["field"] for f in sent["files"]] == ["image[]", "image[]"]


async def test_redink_edit_uses_the_images_as_references(gw: httpx.AsyncClient) -> None:
    r = await gw.post(
        "/v1/images/edits",
        data={"model": "redink", "prompt": "同款配色的穿搭笔记", "n": "3"},
        files=[("image[]", ("a.png", png(), "image/png"))],
    )
    assert r.status_code == 200, r.text
    assert len(r.json()["data"]) == 3 and r.json()["post_id"].startswith("post_")


@pytest.mark.parametrize(
    ("kwargs", "status", "param"),
    [
        ({"data": {"model": "poster", "prompt": "x"}}, 400, None),  # urlencoded, not multipart
        (
            {
                "data": {"model": "poster", "prompt": "x"},
                "files": [("image", ("a.txt", b"hello", "text/plain"))],
            },
            400,
            "image",
        ),
        (
            {
                "data": {"model": "poster", "prompt": "x", "bogus": "1"},
                "files": [("image", ("a.png", png(), "image/png"))],
            },
            400,
            "bogus",
        ),
        (
            {"data": {"model": "poster"}, "files": [("image", ("a.png", png(), "image/png"))]},
            400,
            "prompt",
        ),
        (
            {
                "data": {"model": "redink", "prompt": "x"},
                "files": [
                    ("image", ("a.png", png(), "image/png")),
                    ("mask", ("m.png", png(), "image/png")),
                ],
            },
            400,
            "mask",
        ),
        ({"json": {"model": "poster", "prompt": "x"}}, 400, "images"),
        (
            {"json": {"model": "poster", "prompt": "x", "images": [{"file_id": "f"}]}},
            400,
            "images[0]",
        ),
        (
            {
                "json": {
                    "model": "poster",
                    "prompt": "x",
                    "images": [{"image_url": "http://127.0.0.1/a.png"}],
                }
            },
            400,
            "images[0].image_url",
        ),
        (
            {
                "json": {
                    "model": "nope",
                    "prompt": "x",
                    "images": [
                        {"image_url": "data:image/png;base64," + base64.b64encode(png()).decode()}
                    ],
                }
            },
            404,
            "model",
        ),
        ({"content": b"prompt=x", "headers": {"content-type": "text/plain"}}, 400, None),
    ],
)
async def test_edit_errors(gw: httpx.AsyncClient, kwargs, status, param) -> None:
    r = await gw.post("/v1/images/edits", **kwargs)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["param"] == param
