"""A plain image model in chat edits over several turns: the picture of the previous
answer goes back upstream as a reference, read from our store (never over HTTP) and at
most 1536 px on its long side."""

from __future__ import annotations

import base64
import dataclasses
import io
import re

import httpx
import pytest
from PIL import Image

from gateway.app import create_app
from gateway.references import MAX_REFERENCES, collect_edit_references
from providers.base import ImageData
from tests.conftest import MASTER_KEY
from tests.fakes.openai_upstream import create_fake_openai

OWN_URL = re.compile(r"\((http://gw/images/(img_[\w-]+)\.(\w+))\)")


def image_bytes(size: tuple[int, int], mode: str = "RGB", fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    color = (30, 90, 200, 128) if mode == "RGBA" else (200, 60, 30)
    Image.new(mode, size, color).save(buf, fmt)
    return buf.getvalue()


def data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def from_data_url(url: str) -> bytes:
    return base64.b64decode(url.partition(",")[2])


def gateway_for(name: str, fake_size: tuple[int, int]):
    """A fixture: the gateway with an image model `poster` on a fake OpenAI upstream whose
    images are `fake_size`; JSON edits, so the test can read the references sent."""

    @pytest.fixture(name=name, params=[False, True], ids=["external-off", "external-on"])
    async def gateway(request, settings, monkeypatch):
        fake = create_fake_openai(api_key="sk-turns", image_width=fake_size[0],
                                  image_height=fake_size[1])  # fmt: skip
        settings = dataclasses.replace(settings, fetch_external_images=request.param)
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        settings.config_path.write_text(
            "providers:\n  relay: {type: openai, base_url: 'http://fake/v1', api_key: sk-turns,"
            " edits_format: json}\n"
            "models:\n  poster: {type: image, provider: relay, model: dall-e-2}\n"
        )
        real = httpx.AsyncClient

        def to_fake(*args, **kwargs):  # every request of the gateway lands in the fake
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
                yield client, fake, app.state.services

    return gateway


gw = gateway_for("gw", (1080, 1440))
gw_large = gateway_for("gw_large", (2400, 1800))


async def chat(client: httpx.AsyncClient, messages: list[dict]) -> str:
    r = await client.post("/v1/chat/completions", json={"model": "poster", "messages": messages})
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]["message"]["content"]


def upstream_calls(fake) -> list[dict]:
    return [q for q in fake.state.requests if q["path"].startswith("/v1/images/")]


async def two_turns(client, fake, services) -> tuple[bytes, list[str]]:
    """Turn 1 draws; turn 2 says "make it blue" with turn 1's answer, whose URL names a
    host that does not exist. The stored bytes of turn 1 and the references of turn 2."""
    first = await chat(client, [{"role": "user", "content": "a red apple"}])
    assert upstream_calls(fake)[-1]["path"] == "/v1/images/generations"
    url, image_id, ext = OWN_URL.search(first).groups()
    stored = await services.images.read(await services.images.get(image_id))
    elsewhere = first.replace(url, f"http://elsewhere.invalid/images/{image_id}.{ext}")
    await chat(
        client,
        [
            {"role": "user", "content": "a red apple"},
            {"role": "assistant", "content": elsewhere},
            {"role": "user", "content": "make it blue"},
        ],
    )
    call = upstream_calls(fake)[-1]
    assert call["path"] == "/v1/images/edits" and call["json"]["prompt"] == "make it blue"
    # Nothing asked for the image over HTTP: every request the gateway made is an API call.
    assert [q["path"] for q in fake.state.requests] == [
        "/v1/images/generations",
        "/v1/images/edits",
    ]
    return stored, [ref["image_url"] for ref in call["json"]["images"]]


async def test_second_turn_sends_the_first_image_byte_for_byte(gw) -> None:
    client, fake, services = gw
    stored, refs = await two_turns(client, fake, services)
    assert len(refs) == 1 and refs[0].startswith("data:image/png;base64,")
    assert from_data_url(refs[0]) == stored


async def test_second_turn_scales_a_large_image_to_1536(gw_large) -> None:
    client, fake, services = gw_large
    stored, refs = await two_turns(client, fake, services)
    assert Image.open(io.BytesIO(stored)).size == (2400, 1800)
    [ref] = refs
    assert ref.startswith("data:image/jpeg;base64,")  # opaque: JPEG
    assert Image.open(io.BytesIO(from_data_url(ref))).size == (1536, 1152)


async def test_user_images_and_the_previous_answer_go_together(gw) -> None:
    client, fake, services = gw
    large_alpha = await services.images.put(image_bytes((3000, 1000), "RGBA"))
    small = image_bytes((300, 200))
    await chat(
        client,
        [
            {"role": "user", "content": "a poster"},
            {
                "role": "assistant",
                "content": [
                    {"type": "text", "text": "Here it is. ![elsewhere](https://cdn.example/a.png)"},
                    {"type": "image_url", "image_url": {"url": f"/images/{large_alpha.id}.png"}},
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "put this logo on it"},
                    {"type": "image_url", "image_url": {"url": data_url(small)}},
                ],
            },
        ],
    )
    refs = [ref["image_url"] for ref in upstream_calls(fake)[-1]["json"]["images"]]
    assert len(refs) == 2
    assert from_data_url(refs[0]) == small  # the user's, untouched (small enough)
    assert refs[1].startswith("data:image/png;base64,")  # transparent: stays PNG
    assert Image.open(io.BytesIO(from_data_url(refs[1]))).size == (1536, 512)
    assert [q["path"] for q in fake.state.requests] == ["/v1/images/edits"]  # no fetch


async def test_only_the_latest_answer_with_our_images_counts(gw) -> None:
    client, fake, services = gw
    old = await services.images.put(image_bytes((64, 64)))
    newer = await services.images.put(image_bytes((96, 64)))
    await chat(
        client,
        [
            {"role": "user", "content": "a cat"},
            {"role": "assistant", "content": f"![image 1](http://gw/images/{old.id}.png)"},
            {"role": "user", "content": "a dog"},
            {"role": "assistant", "content": f"![image 1](http://x/images/{newer.id}.png)"},
            {"role": "user", "content": "nicer"},
            {"role": "assistant", "content": "![other](https://cdn.example/images/b.png) sorry"},
            {"role": "user", "content": "make it blue"},
        ],
    )
    [ref] = upstream_calls(fake)[-1]["json"]["images"]
    assert from_data_url(ref["image_url"]) == await services.images.read(newer)


async def test_no_images_in_the_history_is_a_plain_generation(gw) -> None:
    client, fake, _ = gw
    await chat(
        client,
        [
            {"role": "user", "content": "a cat"},
            {
                "role": "assistant",
                "content": "![gone](http://gw/images/img_00000000000000000000.png)",
            },
            {"role": "user", "content": "a dog"},
        ],
    )
    assert [q["path"] for q in fake.state.requests] == ["/v1/images/generations"]


async def test_edit_references_are_capped_and_never_fetched() -> None:
    def no_network(request: httpx.Request) -> httpx.Response:
        raise AssertionError(f"fetched {request.url}")

    stored = {f"img_{i:020d}": ImageData(image_bytes((8 + i, 8)), "image/png") for i in range(12)}

    async def own_image(image_id: str) -> ImageData | None:
        return stored.get(image_id)

    answer = " ".join(f"![{i}](https://anywhere.example/images/{i}.png)" for i in stored)
    user = [{"type": "text", "text": "edit"}] + [
        {"type": "image_url", "image_url": {"url": data_url(image_bytes((4, 4)))}}
    ] * 3
    messages = [
        {"role": "user", "content": "draw"},
        {"role": "assistant", "content": answer},
        {"role": "user", "content": user},
    ]
    async with httpx.AsyncClient(transport=httpx.MockTransport(no_network)) as http:
        refs = await collect_edit_references(messages, http, own_image, allow_external=True)
    assert len(refs) == MAX_REFERENCES
    sizes = [Image.open(io.BytesIO(r.data)).size for r in refs]
    assert sizes == [(4, 4)] * 3 + [(8 + i, 8) for i in range(MAX_REFERENCES - 3)]
