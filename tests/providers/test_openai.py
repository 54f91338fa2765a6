"""The OpenAI-compatible provider: translation functions, and calls against the fake upstream."""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import json

import httpx
import pytest
import respx
from PIL import Image

from gateway.errors import (
    ContentPolicyViolation,
    InvalidRequest,
    RateLimited,
    UpstreamError,
    UpstreamTimeout,
)
from providers.base import ImageData, ImageRequest, decode_base64
from providers.openai import (
    OpenAIOptions,
    OpenAIProvider,
    build_chat_image_payload,
    build_chat_payload,
    build_edit_files,
    build_edit_json,
    build_generation_payload,
    cut_b64_values,
    data_url,
    extract_chat_image,
    parse_chat_image_response,
    parse_chat_response,
    parse_images_body,
    parse_images_response,
    parse_stream_line,
    size_for,
)
from tests.fakes.openai_upstream import (
    CHAT_IMAGE_REFUSAL,
    DEFAULT_API_KEY,
    create_fake_openai,
    fake_png,
)

PNG = fake_png(1080, 1440, 0).png(1)
JPEG = b"\xff\xd8\xff\xe0" + b"\x00" * 64
RELAY = "http://relay.test/v1"  # respx-mocked upstream


# --- fixtures --------------------------------------------------------------------------


@pytest.fixture
def fake():
    return create_fake_openai()


@pytest.fixture
async def http(fake):
    transport = httpx.ASGITransport(app=fake)
    async with httpx.AsyncClient(transport=transport, base_url="http://fake") as client:
        yield client


@pytest.fixture
def make_provider(http):
    def make(**options) -> OpenAIProvider:
        options.setdefault("base_url", "http://fake/v1")
        options.setdefault("api_key", DEFAULT_API_KEY)
        return OpenAIProvider("relay", OpenAIOptions(**options), http)

    return make


@pytest.fixture
async def plain_http():
    async with httpx.AsyncClient() as client:
        yield client


@pytest.fixture
def relay(plain_http):
    """A provider against respx-mocked `RELAY`, plus the router."""
    with respx.mock(base_url=RELAY, assert_all_called=False) as router:
        options = OpenAIOptions(base_url=RELAY, api_key="sk-secret-relay-key")
        yield OpenAIProvider("relay", options, plain_http), router


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def pages(outline: str) -> list[str]:
    return [p.strip() for p in outline.split("<page>")]


# --- translation -----------------------------------------------------------------------


def test_chat_payload_leaves_unset_options_out():
    assert build_chat_payload(user("hi"), "m", None, None, False) == {
        "model": "m",
        "messages": user("hi"),
        "stream": False,
    }
    payload = build_chat_payload(user("hi"), "m", 0.7, 500, True)
    assert payload["stream"] is True
    assert (payload["temperature"], payload["max_tokens"]) == (0.7, 500)


def test_parse_chat_response_text_and_parts():
    def answer(content):
        return {"choices": [{"message": {"role": "assistant", "content": content}}]}

    assert parse_chat_response(answer("hello")) == "hello"
    parts = [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]
    assert parse_chat_response(answer(parts)) == "ab"
    with pytest.raises(UpstreamError, match="without choices"):
        parse_chat_response({"choices": []})
    with pytest.raises(UpstreamError, match="empty"):
        parse_chat_response(answer(""))


def test_parse_chat_response_refusals():
    filtered = {"choices": [{"message": {"content": None}, "finish_reason": "content_filter"}]}
    with pytest.raises(ContentPolicyViolation):
        parse_chat_response(filtered)
    with pytest.raises(ContentPolicyViolation):
        parse_chat_response({"choices": [{"message": {"content": None, "refusal": "no"}}]})
    with pytest.raises(ContentPolicyViolation):
        parse_chat_response({"error": {"code": "content_policy_violation", "message": "x"}})
    with pytest.raises(UpstreamError, match="quota"):
        parse_chat_response({"error": {"message": "quota exceeded", "type": "insufficient_quota"}})


def test_parse_stream_line():
    chunk = {"choices": [{"index": 0, "delta": {"content": "页"}, "finish_reason": None}]}
    assert parse_stream_line("data: " + json.dumps(chunk)) == "页"
    assert parse_stream_line('data: {"choices":[{"delta":{"role":"assistant"}}]}') == ""
    assert parse_stream_line('data: {"choices":[{"delta":{},"finish_reason":"stop"}]}') == ""
    assert parse_stream_line("") == ""
    assert parse_stream_line(": keep-alive") == ""
    assert parse_stream_line('data: {"choices":[],"usage":{"total_tokens":3}}') == ""
    assert parse_stream_line("data: [DONE]") is None
    with pytest.raises(UpstreamError, match="malformed"):
        parse_stream_line("data: {oops")
    with pytest.raises(ContentPolicyViolation):
        parse_stream_line('data: {"choices":[{"delta":{},"finish_reason":"content_filter"}]}')


@pytest.mark.parametrize(
    ("model", "ratio", "size"),
    [
        ("gpt-image-1", "3:4", "1024x1536"),
        ("gpt-image-1", "2:3", "1024x1536"),
        ("gpt-image-1", "9:16", "1024x1536"),
        ("gpt-image-1", "4:3", "1536x1024"),
        ("gpt-image-1", "3:2", "1536x1024"),
        ("gpt-image-1", "16:9", "1536x1024"),
        ("gpt-image-1", "1:1", "1024x1024"),
        ("openai/gpt-image-1-mini", "3:4", "1024x1536"),
        ("dall-e-3", "3:4", "1024x1792"),
        ("dall-e-3", "16:9", "1792x1024"),
        ("dall-e-3", "1:1", "1024x1024"),
        ("dall-e-2", "3:4", "1024x1024"),
        ("flux-dev", "9:16", "1024x1536"),
        ("flux-dev", "6:5", "1024x1024"),
        ("flux-dev", "2:1", "1536x1024"),
    ],
)
def test_size_for(model, ratio, size):
    assert size_for(model, ratio, None) == size


def test_size_for_explicit_and_invalid():
    assert size_for("gpt-image-1", "3:4", "2048x2048") == "2048x2048"
    with pytest.raises(InvalidRequest):
        size_for("gpt-image-1", "tall", None)
    with pytest.raises(InvalidRequest):
        size_for("gpt-image-1", "0:4", None)


def test_generation_payload_response_format():
    request = ImageRequest(prompt="a cat", n=2)
    gpt = build_generation_payload(request, "gpt-image-1", OpenAIOptions())
    assert gpt == {"model": "gpt-image-1", "prompt": "a cat", "n": 2, "size": "1024x1536"}
    dalle = build_generation_payload(request, "dall-e-3", OpenAIOptions())
    assert dalle["response_format"] == "b64_json"
    url = build_generation_payload(request, "dall-e-3", OpenAIOptions(response_format="url"))
    assert url["response_format"] == "url"


def test_generation_payload_size_precedence():
    request = ImageRequest(prompt="p", size="1024x1024")
    assert build_generation_payload(request, "gpt-image-1", OpenAIOptions())["size"] == "1024x1024"
    override = OpenAIOptions(image_size="1328x1328")
    assert build_generation_payload(request, "gpt-image-1", override)["size"] == "1328x1328"


def test_edit_files_field_names_and_extensions():
    png, jpg = ImageData.from_bytes(PNG), ImageData.from_bytes(JPEG)
    [(field, (name, _, mime))] = build_edit_files((png,))
    assert (field, name, mime) == ("image", "ref0.png", "image/png")
    parts = build_edit_files((png, jpg))
    assert [(f, n) for f, (n, _, _) in parts] == [("image[]", "ref0.png"), ("image[]", "ref1.jpg")]


def test_parse_images_response():
    b64 = base64.b64encode(PNG).decode()
    data_url = "data:image/png;base64," + b64
    answer = {"data": [{"b64_json": b64}, {"url": "https://cdn/x.png"}, {"url": data_url}]}
    assert parse_images_response(answer) == [PNG, "https://cdn/x.png", PNG]
    with pytest.raises(UpstreamError, match="without an image"):
        parse_images_response({"created": 1, "data": []})
    with pytest.raises(ContentPolicyViolation):
        parse_images_response({"error": {"code": "moderation_blocked", "message": "blocked"}})


@pytest.mark.parametrize(
    "answer",
    [
        {"created": 1, "data": [{"b64_json": "B64"}], "usage": {"total_tokens": 3}},
        {"data": [{"b64_json": "B64"}, {"url": "https://cdn/x.png"}, {"b64_json": "B64"}]},
        {"output_format": "b64_json", "data": [{"revised_prompt": "b64_json", "b64_json": "B64"}]},
    ],
)
@pytest.mark.parametrize("separators", [(",", ":"), (", ", ": ")])
def test_parse_images_body_fast_path(answer, separators):
    b64 = base64.b64encode(PNG).decode()
    body = json.dumps(answer, separators=separators).replace("B64", b64).encode()
    assert cut_b64_values(body) is not None
    assert parse_images_body(body) == parse_images_response(json.loads(body))


@pytest.mark.parametrize(
    "body",
    [
        # escaped slashes (some relays): no fast path, same result
        b'{"data":[{"b64_json":"' + base64.b64encode(b"\xff" * 300).replace(b"/", b"\\/") + b'"}]}',
        # an escaped quote in the value: cut there, the skeleton does not parse
        b'{"data":[{"b64_json":"'
        + base64.b64encode(PNG)[:100]
        + b'\\"'
        + base64.b64encode(PNG)[100:]
        + b'"}]}',
        # a b64_json key somewhere else than data[]
        b'{"meta":{"b64_json":"aGk="},"data":[{"b64_json":"' + base64.b64encode(PNG) + b'"}]}',
    ],
)
def test_parse_images_body_falls_back(body):
    images = parse_images_body(body)
    assert images == parse_images_response(json.loads(body))
    assert images[0] in (b"\xff" * 300, PNG)


def test_decode_base64_strict_first_then_lenient():
    wrapped = base64.encodebytes(PNG)  # a line break every 76 characters
    assert b"\n" in wrapped
    assert decode_base64(base64.b64encode(PNG)) == PNG
    assert decode_base64(base64.b64encode(PNG).decode()) == PNG
    assert decode_base64(memoryview(b"x" + base64.b64encode(PNG))[1:]) == PNG
    # characters outside the alphabet are skipped, as before the strict decode came first
    assert decode_base64(wrapped) == PNG
    assert decode_base64(wrapped.replace(b"\n", b"\r\n")) == PNG
    with pytest.raises((binascii.Error, ValueError)):
        decode_base64(b"aGk")  # a character short
    with pytest.raises((binascii.Error, ValueError)):
        decode_base64("\u00e9t\u00e9")


def test_parse_images_body_line_wrapped_base64():
    # an upstream whose base64 has JSON-escaped line breaks: the whole body is parsed
    # (no fast path with escapes) and the lenient decode skips the breaks
    wrapped = base64.encodebytes(PNG).decode()
    body = json.dumps({"data": [{"b64_json": wrapped}]}).encode()
    assert b"\\n" in body
    assert parse_images_body(body) == [PNG]
    # a raw line break inside the JSON string is not JSON, but the fast path takes the
    # value as it is: still the same image
    raw = b'{"data":[{"b64_json":"' + base64.encodebytes(PNG) + b'"}]}'
    assert parse_images_body(raw) == [PNG]


def test_parse_images_body_errors():
    with pytest.raises(UpstreamError, match="malformed JSON"):
        parse_images_body(b'{"data":[{"b64_json":"aGk=')
    with pytest.raises(ContentPolicyViolation):
        parse_images_body(b'{"error":{"code":"content_policy_violation","message":"no"}}')
    with pytest.raises(UpstreamError, match="invalid base64"):
        parse_images_body('{"data":[{"b64_json":"\u00e9t\u00e9"}]}'.encode())


def test_options():
    options = OpenAIOptions(base_url="https://relay.example.com/openai/", api_key="sk-abc123")
    assert options.base_url == "https://relay.example.com/openai"  # kept, no /v1 added
    assert "sk-abc123" not in repr(options) and "sk-abc123" not in str(options.model_dump())
    assert OpenAIOptions(base_url="https://api.openai.com/v1/").base_url.endswith("/v1")
    with pytest.raises(ValueError):
        OpenAIOptions(unknown=1)
    with pytest.raises(ValueError):
        OpenAIOptions(base_url="api.openai.com")
    assert OpenAIProvider.type == "openai"


# --- chat against the fake -------------------------------------------------------------


async def test_chat(make_provider, fake):
    provider = make_provider(text_model="gpt-4o-mini")
    text = await provider.chat(user("Topic: 早起\nPages: exactly 5"), temperature=0.3)
    got = pages(text)
    assert len(got) == 5
    assert got[0].startswith("[封面]") and got[-1].startswith("[总结]")
    assert all(p.startswith("[内容]") for p in got[1:-1])
    [sent] = fake.state.requests
    assert sent["path"] == "/v1/chat/completions"
    assert sent["headers"]["authorization"] == f"Bearer {DEFAULT_API_KEY}"
    assert sent["json"]["model"] == "gpt-4o-mini"
    assert sent["json"]["temperature"] == 0.3
    assert sent["json"]["stream"] is False
    assert "max_tokens" not in sent["json"]


async def test_stream_chat_matches_non_stream(make_provider, fake):
    provider = make_provider()
    whole = await provider.chat(user("Topic: 咖啡\nPages: exactly 4"))
    deltas = [d async for d in provider.stream_chat(user("Topic: 咖啡\nPages: exactly 4"))]
    assert len(deltas) > 1
    assert "".join(deltas) == whole
    assert fake.state.requests[-1]["json"]["stream"] is True
    assert fake.state.requests[-1]["json"]["model"] == "gpt-4o-mini"  # the default


async def test_fake_stream_wire_format(http):
    body = {"model": "m", "stream": True, "messages": user("x")}
    headers = {"Authorization": f"Bearer {DEFAULT_API_KEY}"}
    response = await http.post("/v1/chat/completions", json=body, headers=headers)
    assert response.headers["content-type"].startswith("text/event-stream")
    events = [line[6:] for line in response.text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


async def test_stream_chat_error_status(make_provider, fake):
    fake.state.fail_next_chat.append(500)
    with pytest.raises(UpstreamError) as err:
        [d async for d in make_provider().stream_chat(user("x"))]
    assert err.value.status == 502 and err.value.retryable


# --- images against the fake -----------------------------------------------------------


async def test_generate_b64(make_provider, fake):
    provider = make_provider(image_model="dall-e-3")
    [image] = await provider.generate(ImageRequest(prompt="a cat", aspect_ratio="3:4"))
    assert image.mime == "image/png"
    assert Image.open(io.BytesIO(image.data)).size == (1080, 1440)
    [sent] = fake.state.requests
    assert sent["path"] == "/v1/images/generations"
    assert sent["json"] == {
        "model": "dall-e-3",
        "prompt": "a cat",
        "n": 1,
        "size": "1024x1792",
        "response_format": "b64_json",
    }


async def test_gpt_image_gets_no_response_format(make_provider, fake):
    images = await make_provider().generate(ImageRequest(prompt="p", n=2))
    assert len(images) == 2 and images[0].data != images[1].data
    sent = fake.state.requests[-1]["json"]
    assert sent["model"] == "gpt-image-1" and "response_format" not in sent


async def test_generate_url_answer_is_downloaded(make_provider, fake):
    provider = make_provider(image_model="dall-e-3", response_format="url")
    [image] = await provider.generate(ImageRequest(prompt="p"))
    assert image.mime == "image/png" and image.data.startswith(b"\x89PNG")
    [sent] = fake.state.requests  # the download from /files is not recorded
    assert sent["json"]["response_format"] == "url"
    assert len(fake.state.files) == 1


async def test_edits_with_one_reference(make_provider, fake):
    request = ImageRequest(prompt="same style", references=(ImageData.from_bytes(PNG),))
    [image] = await make_provider().generate(request)
    assert image.mime == "image/png"
    [sent] = fake.state.requests
    assert sent["path"] == "/v1/images/edits"
    assert sent["fields"] == {"model": "gpt-image-1", "prompt": "same style", "n": "1",
                              "size": "1024x1536"}  # fmt: skip
    [part] = sent["files"]
    assert (part["field"], part["filename"], part["mime"]) == ("image", "ref0.png", "image/png")
    assert part["size"] == len(PNG)


async def test_edits_with_several_references(make_provider, fake):
    refs = (ImageData.from_bytes(PNG), ImageData.from_bytes(JPEG))
    await make_provider().generate(ImageRequest(prompt="p", references=refs))
    files = fake.state.requests[-1]["files"]
    assert [(f["field"], f["filename"], f["content_type"]) for f in files] == [
        ("image[]", "ref0.png", "image/png"),
        ("image[]", "ref1.jpg", "image/jpeg"),
    ]


async def test_extra_headers_are_sent(make_provider, fake):
    await make_provider(extra_headers={"X-Relay-Group": "ink"}).chat(user("x"))
    assert fake.state.requests[-1]["headers"]["x-relay-group"] == "ink"


async def test_concurrent_images_are_counted(make_provider, fake):
    fake.state.image_latency = 0.05
    provider = make_provider()
    await asyncio.gather(*(provider.generate(ImageRequest(prompt="p")) for _ in range(3)))
    assert fake.state.max_images_in_flight == 3 and fake.state.images_in_flight == 0


def test_fake_png_size_target():
    png = fake_png(1080, 1440, 300_000).png(7)
    assert abs(len(png) - 300_000) < 15_000
    image = Image.open(io.BytesIO(png))
    image.load()
    assert image.size == (1080, 1440) and image.text["inkgate-serial"] == "000000000007"


# --- error paths -----------------------------------------------------------------------


async def test_upstream_401_blames_gateway_credentials(make_provider):
    provider = make_provider(api_key="sk-wrong-key-123456")
    with pytest.raises(UpstreamError) as err:
        await provider.generate(ImageRequest(prompt="p"))
    assert err.value.status == 502 and not err.value.retryable
    assert "gateway's credentials" in err.value.message
    assert "sk-wrong-key-123456" not in str(err.value)


async def test_upstream_429_is_rate_limited_with_retry_after(make_provider, fake):
    fake.state.fail_next_images.append(429)
    fake.state.retry_after = 7
    with pytest.raises(RateLimited) as err:
        await make_provider().generate(ImageRequest(prompt="p"))
    assert err.value.status == 429 and err.value.retry_after == 7.0


async def test_upstream_500_is_retryable_502(make_provider, fake):
    fake.state.fail_next_images.append(500)
    with pytest.raises(UpstreamError) as err:
        await make_provider().generate(ImageRequest(prompt="p"))
    assert err.value.status == 502 and err.value.retryable


async def test_content_policy(make_provider, fake):
    fake.state.content_policy = True
    with pytest.raises(ContentPolicyViolation) as err:
        await make_provider().generate(ImageRequest(prompt="p"))
    assert err.value.status == 400 and not err.value.retryable


async def test_policy_code_without_safety_words(relay):
    provider, router = relay
    body = {"error": {"code": "moderation_blocked", "message": "Blocked.", "type": "x"}}
    router.post("/images/generations").respond(400, json=body)
    with pytest.raises(ContentPolicyViolation):
        await provider.generate(ImageRequest(prompt="p"))


async def test_timeout_is_504(relay):
    provider, router = relay
    router.post("/images/generations").mock(side_effect=httpx.ReadTimeout("slow"))
    with pytest.raises(UpstreamTimeout) as err:
        await provider.generate(ImageRequest(prompt="p"))
    assert err.value.status == 504 and err.value.retryable


async def test_timeout_option_is_per_request(plain_http):
    with respx.mock(base_url=RELAY) as router:
        route = router.post("/chat/completions").respond(
            json={"choices": [{"message": {"content": "ok"}}]}
        )
        options = OpenAIOptions(base_url=RELAY, timeout=12.5)
        assert await OpenAIProvider("r", options, plain_http).chat(user("x")) == "ok"
        assert route.calls.last.request.extensions["timeout"]["read"] == 12.5
        assert "authorization" not in route.calls.last.request.headers


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"<html>oops</html>", "malformed JSON"),
        (b'{"created": 1, "data": []}', "without an image"),
        (b'{"data": [{"b64_json": "aGVsbG8="}]}', "not a PNG"),
    ],
)
async def test_bad_200_answers(relay, content, match):
    provider, router = relay
    router.post("/images/generations").respond(200, content=content)
    with pytest.raises(UpstreamError, match=match) as err:
        await provider.generate(ImageRequest(prompt="p"))
    assert "sk-secret-relay-key" not in str(err.value)


async def test_api_key_is_redacted_from_upstream_messages(relay):
    provider, router = relay
    body = {"error": {"message": "bad key sk-secret-relay-key for model", "type": "x"}}
    router.post("/images/generations").respond(400, json=body)
    with pytest.raises(UpstreamError) as err:
        await provider.generate(ImageRequest(prompt="p"))
    assert "sk-secret-relay-key" not in str(err.value) and "[redacted]" in err.value.message


def _url_answer(url: str) -> dict:
    return {"created": 1, "data": [{"url": url}]}


async def test_download_rejects_wrong_content_type(relay):
    provider, router = relay
    router.post("/images/generations").respond(json=_url_answer("https://cdn.test/a.png"))
    router.get("https://cdn.test/a.png").respond(200, content=PNG, content_type="text/html")
    with pytest.raises(UpstreamError, match="not an image"):
        await provider.generate(ImageRequest(prompt="p"))


async def test_download_rejects_oversize(plain_http):
    with respx.mock(base_url=RELAY) as router:
        router.post("/images/generations").respond(json=_url_answer("https://cdn.test/a.png"))
        download = router.get("https://cdn.test/a.png")
        options = OpenAIOptions(base_url=RELAY, api_key="sk-k", max_download_bytes=1000)
        provider = OpenAIProvider("relay", options, plain_http)

        async def chunked():  # no Content-Length: the running total must stop it
            for _ in range(10):
                yield b"\x89PNG" + b"\x00" * 200

        download.respond(200, stream=chunked(), content_type="image/png")
        with pytest.raises(UpstreamError, match="max_download_bytes"):
            await provider.generate(ImageRequest(prompt="p"))
        download.respond(200, content=PNG, content_type="image/png")  # Content-Length
        with pytest.raises(UpstreamError, match="max_download_bytes"):
            await provider.generate(ImageRequest(prompt="p"))
        # The key never goes to a foreign host.
        assert "authorization" not in download.calls.last.request.headers


async def test_download_failure_status(relay):
    provider, router = relay
    router.post("/images/generations").respond(json=_url_answer("/files/gone.png"))
    router.get("http://relay.test/files/gone.png").respond(404)
    with pytest.raises(UpstreamError, match=r"downloading the generated image failed \(404\)"):
        await provider.generate(ImageRequest(prompt="p"))


# --- options added for relays ----------------------------------------------------------


def test_new_option_defaults_and_validation():
    options = OpenAIOptions()
    assert (options.image_endpoint, options.edits_format) == ("images", "multipart")
    assert options.quality is options.temperature is options.max_tokens is None
    assert options.chat_modalities is False
    for bad in ({"image_endpoint": "completions"}, {"edits_format": "form"},
                {"temperature": -1}, {"max_tokens": 0}):  # fmt: skip
        with pytest.raises(ValueError):
            OpenAIOptions(**bad)
    assert all(field.description for field in OpenAIOptions.model_fields.values())


def test_generation_payload_quality():
    request = ImageRequest(prompt="p")
    assert "quality" not in build_generation_payload(request, "gpt-image-1", OpenAIOptions())
    payload = build_generation_payload(request, "gpt-image-1", OpenAIOptions(quality="high"))
    assert payload["quality"] == "high"


def test_edit_json_shape():
    refs = (ImageData.from_bytes(PNG), ImageData.from_bytes(JPEG))
    payload = {"model": "gpt-image-1", "prompt": "p", "n": 1, "size": "1024x1536"}
    body = build_edit_json(payload, refs)
    assert body == {
        **payload,
        "images": [{"image_url": refs[0].data_url()}, {"image_url": refs[1].data_url()}],
    }
    assert body["images"][1]["image_url"].startswith("data:image/jpeg;base64,")


def test_chat_image_payload():
    refs = (ImageData.from_bytes(PNG), ImageData.from_bytes(JPEG))
    request = ImageRequest(prompt="a cover", references=refs, aspect_ratio="3:4")
    payload = build_chat_image_payload(request, "gemini-2.5-flash-image", OpenAIOptions())
    assert payload == {
        "model": "gemini-2.5-flash-image",
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "a cover\n\nAspect ratio: 3:4"},
                    {"type": "image_url", "image_url": {"url": refs[0].data_url()}},
                    {"type": "image_url", "image_url": {"url": refs[1].data_url()}},
                ],
            }
        ],
        "stream": False,
    }
    options = OpenAIOptions(chat_modalities=True, image_size="1024x1536")
    payload = build_chat_image_payload(ImageRequest(prompt="p"), "m", options)
    assert payload["modalities"] == ["image", "text"]
    assert payload["messages"][0]["content"] == [
        {"type": "text", "text": "p\n\nAspect ratio: 3:4\nSize: 1024x1536"}
    ]
    with pytest.raises(InvalidRequest):
        build_chat_image_payload(ImageRequest(prompt="p", aspect_ratio="tall"), "m", options)


DATA = "data:image/png;base64," + base64.b64encode(PNG).decode()
CDN = "https://cdn.test/out/a1.png"


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        # OpenRouter: message.images[]
        ({"content": "", "images": [{"type": "image_url", "image_url": {"url": DATA}}]}, [DATA]),
        ({"images": [{"url": CDN}, DATA]}, [CDN, DATA]),
        # content parts
        ({"content": [{"type": "text", "text": "ok"},
                      {"type": "image_url", "image_url": {"url": DATA}}]}, [DATA]),
        ({"content": [{"type": "output_image", "image_url": CDN}]}, [CDN]),
        ({"content": [{"type": "image", "b64_json": DATA.partition(",")[2]}]}, [DATA]),
        ({"content": [{"type": "text", "text": f"![x]({DATA})"}]}, [DATA]),
        # text
        ({"content": f"Here:\n\n![image]({DATA})"}, [DATA]),
        ({"content": f"Here: ![a cat]( <{CDN}> )"}, [CDN]),
        ({"content": f'![a]({CDN} "title")'}, [CDN]),
        ({"content": DATA}, [DATA]),
        ({"content": f"Done: {CDN}."}, [CDN]),
        ({"content": "Done:\nhttps://cdn.test/file?id=7\n"}, ["https://cdn.test/file?id=7"]),
        # preference: images[] over content, markdown data over markdown http
        ({"content": f"![a]({CDN})", "images": [{"image_url": {"url": DATA}}]}, [DATA]),
        ({"content": f"![a]({CDN}) ![b]({DATA})"}, [DATA]),
        # nothing usable
        ({"content": "See https://example.com/docs for details."}, []),
        ({"content": "I cannot draw that."}, []),
        ({"content": None, "images": [{"image_url": {"url": "ftp://x/y.png"}}]}, []),
        ({"content": [{"type": "text", "text": "no"}]}, []),
    ],
)  # fmt: skip
def test_extract_chat_image(message, expected):
    assert extract_chat_image(message) == expected


def _chat_answer(message: dict, finish: str = "stop") -> dict:
    return {"choices": [{"index": 0, "message": message, "finish_reason": finish}]}


def test_parse_chat_image_response():
    answer = _chat_answer({"content": f"![a]({DATA})"})
    assert parse_chat_image_response(answer) == [PNG]
    assert parse_chat_image_response(_chat_answer({"content": CDN})) == [CDN]
    with pytest.raises(UpstreamError) as err:
        parse_chat_image_response(_chat_answer({"content": "I can't draw people. " * 30}))
    assert not err.value.retryable and err.value.code == "upstream_no_image"
    assert "it said: I can't draw people." in err.value.message
    assert len(err.value.message) < 300  # the text is cut to 200 characters
    with pytest.raises(UpstreamError, match="without an image and without text"):
        parse_chat_image_response(_chat_answer({"content": ""}))
    with pytest.raises(ContentPolicyViolation):
        parse_chat_image_response(_chat_answer({"content": None}, finish="IMAGE_SAFETY"))
    with pytest.raises(ContentPolicyViolation):
        parse_chat_image_response(_chat_answer({"content": None, "refusal": "no"}))
    with pytest.raises(UpstreamError, match="without choices"):
        parse_chat_image_response({"choices": []})
    with pytest.raises(UpstreamError, match="invalid base64"):
        parse_chat_image_response(_chat_answer({"images": ["data:image/png;base64,\u00e9"]}))


# --- chat-image mode against the fake --------------------------------------------------

CHAT_IMAGE_MODEL = "gemini-2.5-flash-image"


@pytest.mark.parametrize(
    "style", ["images_field", "content_parts", "markdown_data", "markdown_url", "bare_data"]
)
async def test_chat_image_mode(make_provider, fake, style):
    fake.state.chat_image_style = style
    provider = make_provider(image_endpoint="chat", image_model=CHAT_IMAGE_MODEL)
    refs = (ImageData.from_bytes(PNG), ImageData.from_bytes(JPEG))
    request = ImageRequest(prompt="a cover", references=refs, aspect_ratio="3:4")
    [image] = await provider.generate(request)
    assert image.mime == "image/png"
    assert Image.open(io.BytesIO(image.data)).size == (1080, 1440)
    [sent] = fake.state.requests  # the markdown_url download is not recorded
    assert sent["path"] == "/v1/chat/completions"
    assert sent["headers"]["content-type"] == "application/json"
    assert sent["headers"]["authorization"] == f"Bearer {DEFAULT_API_KEY}"
    assert sent["json"] == {
        "model": CHAT_IMAGE_MODEL,
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "a cover\n\nAspect ratio: 3:4"},
                    {"type": "image_url", "image_url": {"url": data_url(refs[0])}},
                    {"type": "image_url", "image_url": {"url": data_url(refs[1])}},
                ],
            }
        ],
        "stream": False,
    }
    assert len(fake.state.files) == (style == "markdown_url")


async def test_chat_image_mode_text_answer_is_not_retried(make_provider, fake):
    fake.state.chat_image_style = "text_only"
    provider = make_provider(image_endpoint="chat", image_model=CHAT_IMAGE_MODEL)
    with pytest.raises(UpstreamError) as err:
        await provider.generate(ImageRequest(prompt="p"))
    assert not err.value.retryable and CHAT_IMAGE_REFUSAL[:60] in err.value.message


async def test_chat_image_mode_modalities_and_n(make_provider, fake):
    fake.state.image_latency = 0.02
    provider = make_provider(
        image_endpoint="chat", image_model=CHAT_IMAGE_MODEL, chat_modalities=True
    )
    images = await provider.generate(ImageRequest(prompt="p", n=2))
    assert len(images) == 2 and images[0].data != images[1].data
    assert fake.state.max_images_in_flight == 2  # n calls at once
    assert [r["json"]["modalities"] for r in fake.state.requests] == [["image", "text"]] * 2
    assert [r["json"]["messages"][0]["content"] for r in fake.state.requests] == [
        [{"type": "text", "text": "p\n\nAspect ratio: 3:4"}]
    ] * 2


async def test_chat_image_mode_errors(make_provider, fake):
    provider = make_provider(image_endpoint="chat", image_model=CHAT_IMAGE_MODEL)
    fake.state.fail_next_chat.append(503)
    with pytest.raises(UpstreamError) as err:
        await provider.generate(ImageRequest(prompt="p", n=2))
    assert err.value.retryable
    fake.state.content_policy = True
    with pytest.raises(ContentPolicyViolation):
        await provider.generate(ImageRequest(prompt="p"))


async def test_fake_chat_image_rejects_bad_image_parts(http):
    headers = {"Authorization": f"Bearer {DEFAULT_API_KEY}"}
    part = {"type": "image_url", "image_url": {"url": "data:image/png;base64,aGVsbG8="}}
    body = {"model": CHAT_IMAGE_MODEL, "messages": [{"role": "user", "content": [part]}]}
    response = await http.post("/v1/chat/completions", json=body, headers=headers)
    assert response.status_code == 400
    assert "not a PNG" in response.json()["error"]["message"]


# --- JSON edits, quality, text defaults ------------------------------------------------


async def test_json_edits(make_provider, fake):
    provider = make_provider(edits_format="json", quality="high")
    refs = (ImageData.from_bytes(PNG), ImageData.from_bytes(JPEG))
    [image] = await provider.generate(ImageRequest(prompt="same style", references=refs))
    assert image.mime == "image/png"
    [sent] = fake.state.requests
    assert sent["path"] == "/v1/images/edits"
    assert sent["headers"]["content-type"] == "application/json"
    assert sent["fields"] is None and sent["files"] is None  # no multipart
    assert sent["json"] == {
        "model": "gpt-image-1",
        "prompt": "same style",
        "n": 1,
        "size": "1024x1536",
        "quality": "high",
        "images": [{"image_url": data_url(refs[0])}, {"image_url": data_url(refs[1])}],
    }


async def test_json_edits_for_a_relay_model_keep_response_format(make_provider, fake):
    provider = make_provider(edits_format="json", image_model="flux-kontext")
    await provider.generate(ImageRequest(prompt="p", references=(ImageData.from_bytes(PNG),)))
    assert fake.state.requests[-1]["json"]["response_format"] == "b64_json"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"image": "x"}, "Unknown parameter: 'image'"),
        ({"images": []}, "'images' must be a list"),
        ({"images": ["data:image/png;base64,AAAA"]}, "exactly one of image_url or file_id"),
        ({"images": [{"image_url": "x", "file_id": "f"}]}, "exactly one of"),
        ({"images": [{"image_url": "data:image/png;base64,aGVsbG8="}]}, "not a PNG"),
        ({"images": [{"image_url": "/tmp/a.png"}]}, "http(s) URL or a base64 data URL"),
        ({"n": "1"}, "'n' must be an integer"),
        ({"quality": "ultra"}, "Invalid 'quality'"),
    ],
)
async def test_fake_json_edits_are_strict(http, change, message):
    body = {"model": "gpt-image-1", "prompt": "p", "images": [{"image_url": DATA}]}
    headers = {"Authorization": f"Bearer {DEFAULT_API_KEY}"}
    response = await http.post("/v1/images/edits", json={**body, **change}, headers=headers)
    assert response.status_code == 400
    error = response.json()["error"]
    assert message in error["message"] and error["type"] == "invalid_request_error"


async def test_quality_is_sent(make_provider, fake):
    provider = make_provider(quality="medium")
    await provider.generate(ImageRequest(prompt="p"))
    await provider.generate(ImageRequest(prompt="p", references=(ImageData.from_bytes(PNG),)))
    generation, edit = fake.state.requests
    assert generation["json"]["quality"] == "medium" and edit["fields"]["quality"] == "medium"
    with pytest.raises(UpstreamError, match="Invalid 'quality'") as err:
        await make_provider(quality="ultra").generate(ImageRequest(prompt="p"))
    assert not err.value.retryable


async def test_text_defaults_apply_when_the_caller_gives_none(make_provider, fake):
    provider = make_provider(temperature=0.2, max_tokens=900)
    await provider.chat(user("x"))
    [d async for d in provider.stream_chat(user("x"))]
    await provider.chat(user("x"), temperature=0.9, max_tokens=50)
    sent = [(r["json"]["temperature"], r["json"]["max_tokens"]) for r in fake.state.requests]
    assert sent == [(0.2, 900), (0.2, 900), (0.9, 50)]


def test_client_quality_and_style_pass_through() -> None:
    options = OpenAIOptions(quality="low")
    plain = build_generation_payload(ImageRequest(prompt="x"), "gpt-image-1", options)
    assert plain["quality"] == "low" and "style" not in plain
    chosen = build_generation_payload(
        ImageRequest(prompt="x", quality="high", style="vivid"), "gpt-image-1", options
    )
    assert chosen["quality"] == "high" and "style" not in chosen  # gpt-image has no style
    dalle = build_generation_payload(ImageRequest(prompt="x", style="natural"), "dall-e-3", options)
    assert dalle["style"] == "natural"
