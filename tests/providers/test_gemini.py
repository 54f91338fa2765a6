"""The Gemini provider: translation functions, and calls against the fake Gemini API."""

from __future__ import annotations

import base64
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
from providers.base import ImageData, ImageRequest
from providers.gemini import (
    BLOCKING_FINISH_REASONS,
    SUPPORTED_ASPECT_RATIOS,
    GeminiBlocked,
    GeminiOptions,
    GeminiProvider,
    answer_error,
    aspect_ratio_for,
    build_contents,
    build_image_payload,
    build_text_payload,
    image_from_body,
    parse_image_response,
    parse_retry_delay,
    parse_stream_line,
    parse_text_response,
    pick_image_part,
)
from providers.registry import build_provider
from tests.fakes.gemini_upstream import DEFAULT_API_KEY, create_fake_gemini
from tests.fakes.openai_upstream import fake_png

PNG = fake_png(64, 48, 0).png(1)
PNG_B64 = base64.b64encode(PNG).decode()
JPEG = b"\xff\xd8\xff\xe0" + b"\x00" * 64
RELAY = "http://gemini.test"  # respx-mocked upstream
SECRET = "AIza-secret-test-key-0123456789"


# --- fixtures --------------------------------------------------------------------------


@pytest.fixture
def fake():
    return create_fake_gemini()


@pytest.fixture
async def http(fake):
    transport = httpx.ASGITransport(app=fake)
    async with httpx.AsyncClient(transport=transport, base_url="http://fake") as client:
        yield client


@pytest.fixture
def make_provider(http):
    def make(**options) -> GeminiProvider:
        options.setdefault("base_url", "http://fake")
        options.setdefault("api_key", DEFAULT_API_KEY)
        return GeminiProvider("gemini", GeminiOptions(**options), http)

    return make


@pytest.fixture
async def relay():
    """A provider against respx-mocked `RELAY`, plus the router."""
    async with httpx.AsyncClient() as client:
        with respx.mock(base_url=RELAY, assert_all_called=False) as router:
            options = GeminiOptions(base_url=RELAY, api_key=SECRET)
            yield GeminiProvider("gemini", options, client), router


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def answer(*parts: dict, finish: str | None = "STOP", **extra) -> dict:
    candidate: dict = {"content": {"role": "model", "parts": list(parts)}, "index": 0}
    if finish:
        candidate["finishReason"] = finish
    return {"candidates": [candidate], **extra}


def inline(data: str = PNG_B64, thought: bool = False) -> dict:
    part: dict = {"inlineData": {"mimeType": "image/png", "data": data}}
    if thought:
        part["thought"] = True
    return part


# --- messages --------------------------------------------------------------------------


def test_build_contents_roles_system_and_merge():
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "developer", "content": [{"type": "text", "text": "Use Chinese."}]},
        {"role": "user", "content": "Topic: tea"},
        {"role": "user", "content": [{"type": "text", "text": "Pages: exactly 3"}]},
        {"role": "assistant", "content": "ok"},
        {"role": "tool", "content": "ignored"},
        {"role": "assistant", "content": "more"},
        {"role": "user", "content": ""},  # empty: left out
    ]
    system, contents = build_contents(messages)
    assert system == {"parts": [{"text": "Be brief."}, {"text": "Use Chinese."}]}
    assert contents == [
        {"role": "user", "parts": [{"text": "Topic: tea"}, {"text": "Pages: exactly 3"}]},
        {"role": "model", "parts": [{"text": "ok"}, {"text": "more"}]},
    ]


def test_build_contents_images_become_inline_data():
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG_B64}"}},
                {"type": "image_url", "image_url": {"url": "https://cdn.example/a.png"}},
                {"type": "image_url", "image_url": "data:image/jpeg;base64,/9j/4A=="},
                {"type": "text", "text": "Same style"},
            ],
        }
    ]
    system, contents = build_contents(messages)
    assert system is None
    assert contents == [
        {
            "role": "user",
            "parts": [
                {"inlineData": {"mimeType": "image/png", "data": PNG_B64}},
                {"inlineData": {"mimeType": "image/jpeg", "data": "/9j/4A=="}},
                {"text": "Same style"},
            ],
        }
    ]


def test_text_payload():
    assert build_text_payload(user("hi")) == {
        "contents": [{"role": "user", "parts": [{"text": "hi"}]}]
    }
    payload = build_text_payload(
        [{"role": "system", "content": "s"}, *user("hi")], temperature=0.4, max_output_tokens=900
    )
    assert payload["systemInstruction"] == {"parts": [{"text": "s"}]}
    assert payload["generationConfig"] == {"temperature": 0.4, "maxOutputTokens": 900}
    with pytest.raises(InvalidRequest):
        build_text_payload([{"role": "system", "content": "only a system prompt"}])


# --- images: request -------------------------------------------------------------------


@pytest.mark.parametrize("ratio", SUPPORTED_ASPECT_RATIOS)
def test_supported_aspect_ratios_pass_through(ratio):
    assert aspect_ratio_for(ratio) == ratio


@pytest.mark.parametrize(
    ("ratio", "nearest"),
    [
        ("6:8", "3:4"),
        ("1:2", "9:16"),
        ("5:7", "3:4"),
        ("5:8", "2:3"),
        ("3:1", "21:9"),
        ("1.91:1", "16:9"),
    ],
)
def test_aspect_ratio_nearest(ratio, nearest):
    assert aspect_ratio_for(ratio) == nearest


@pytest.mark.parametrize("bad", ["tall", "0:4", "", "3x4"])
def test_aspect_ratio_invalid(bad):
    with pytest.raises(InvalidRequest):
        aspect_ratio_for(bad)


def test_image_payload_references_first_then_prompt():
    refs = (ImageData.from_bytes(PNG), ImageData.from_bytes(JPEG))
    payload = build_image_payload(ImageRequest(prompt="p", references=refs, aspect_ratio="3:4"))
    [content] = payload["contents"]
    assert content["role"] == "user"
    assert content["parts"] == [
        {"inlineData": {"mimeType": "image/png", "data": PNG_B64}},
        {"inlineData": {"mimeType": "image/jpeg", "data": base64.b64encode(JPEG).decode()}},
        {"text": "p"},
    ]
    assert payload["generationConfig"] == {
        "responseModalities": ["TEXT", "IMAGE"],
        "imageConfig": {"aspectRatio": "3:4"},
    }


def test_image_payload_size():
    request = ImageRequest(prompt="p", aspect_ratio="9:16", size="1080x1920")
    assert "imageSize" not in build_image_payload(request)["generationConfig"]["imageConfig"]
    assert build_image_payload(request, "2K")["generationConfig"]["imageConfig"] == {
        "aspectRatio": "9:16",
        "imageSize": "2K",
    }
    request_4k = ImageRequest(prompt="p", size="4k")
    assert build_image_payload(request_4k)["generationConfig"]["imageConfig"]["imageSize"] == "4K"


# --- answers ---------------------------------------------------------------------------


def test_parse_text_skips_thoughts():
    data = answer({"text": "thinking…", "thought": True}, {"text": "Hello "}, {"text": "world"})
    assert parse_text_response(data) == "Hello world"
    with pytest.raises(UpstreamError, match="empty answer") as err:
        parse_text_response(answer({"text": "x", "thought": True}, finish="MAX_TOKENS"))
    assert not err.value.retryable and "max_output_tokens" in err.value.message
    with pytest.raises(UpstreamError, match="empty answer") as err:
        parse_text_response({"candidates": []})
    assert err.value.retryable


def test_parse_stream_line():
    chunk = answer({"text": "页"}, finish=None)
    assert parse_stream_line("data: " + json.dumps(chunk)) == "页"
    assert parse_stream_line("") == ""
    assert parse_stream_line(": keep-alive") == ""
    assert parse_stream_line('data: {"usageMetadata": {"totalTokenCount": 3}}') == ""
    with pytest.raises(UpstreamError, match="malformed"):
        parse_stream_line("data: {oops")
    with pytest.raises(GeminiBlocked):
        parse_stream_line('data: {"candidates": [{"finishReason": "SAFETY"}]}')


def test_pick_last_non_thought_image():
    first, draft, final = inline("Zmlyc3Q="), inline("ZHJhZnQ=", thought=True), inline("ZmluYWw=")
    data = answer({"text": "here"}, first, draft, final, {"text": "done"})
    assert pick_image_part(data)["data"] == "ZmluYWw="
    assert pick_image_part(answer(first, draft))["data"] == "Zmlyc3Q="
    assert pick_image_part(answer(draft)) is None
    snake = {"inline_data": {"mime_type": "image/png", "data": "c25ha2U="}}
    assert pick_image_part(answer(snake))["data"] == "c25ha2U="


def test_image_from_body():
    body = json.dumps(answer({"text": "t"}, inline(thought=True), inline()), indent=2).encode()
    image = image_from_body(body)
    assert image == ImageData(PNG, "image/png")
    with pytest.raises(UpstreamError, match="not a PNG"):
        image_from_body(json.dumps(answer(inline("aGVsbG8="))).encode())
    with pytest.raises(UpstreamError, match="malformed JSON"):
        image_from_body(b"<html>")


def _assert_blocked(exc: GeminiBlocked, reason: str) -> None:
    assert isinstance(exc, ContentPolicyViolation)
    assert exc.reason == reason
    assert exc.status == 400 and exc.code == "content_policy_violation"
    assert not exc.retryable
    assert f"({reason})" in exc.message


@pytest.mark.parametrize("reason", sorted(BLOCKING_FINISH_REASONS))
def test_every_blocking_finish_reason(reason):
    data = {"candidates": [{"finishReason": reason, "index": 0}]}
    with pytest.raises(GeminiBlocked) as err:
        parse_image_response(data)
    _assert_blocked(err.value, reason)
    assert err.value.message.startswith(f"Gemini refused the image ({reason})")
    with pytest.raises(GeminiBlocked) as err:
        parse_text_response(data)
    _assert_blocked(err.value, reason)


@pytest.mark.parametrize(
    "reason", ["SAFETY", "OTHER", "BLOCKLIST", "PROHIBITED_CONTENT", "IMAGE_SAFETY"]
)
def test_prompt_block_reason(reason):
    data = {"promptFeedback": {"blockReason": reason}, "usageMetadata": {"promptTokenCount": 9}}
    with pytest.raises(GeminiBlocked) as err:
        parse_image_response(data)
    _assert_blocked(err.value, reason)
    assert "refused the prompt" in err.value.message


def test_refusal_quotes_what_the_model_said():
    data = answer({"text": "I can't draw that person."}, finish="NO_IMAGE")
    with pytest.raises(GeminiBlocked, match="the model said: I can't draw that person"):
        parse_image_response(data)


def test_no_image_without_reason():
    said = "Sure! " + "x" * 400
    with pytest.raises(UpstreamError, match="no image in the answer") as err:
        parse_image_response(answer({"text": said}))
    assert not err.value.retryable and not isinstance(err.value, ContentPolicyViolation)
    assert "Sure! xxx" in err.value.message and len(err.value.message) < 320
    with pytest.raises(UpstreamError, match=r"finishReason OTHER"):
        parse_image_response(answer(finish="OTHER"))


# --- errors ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("37s", 37.0), ("1.5s", 1.5), ("0.000340s", 0.00034), ("37", None), (7, None), (None, None)],
)
def test_parse_retry_delay(value, seconds):
    assert parse_retry_delay(value) == seconds


def _google_error(code: int, status: str, message: str, *details: dict) -> dict:
    return {"error": {"code": code, "message": message, "status": status, "details": list(details)}}


def test_answer_error_rate_limit_and_key():
    retry = {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "37s"}
    quota = {"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": []}
    error = answer_error(429, _google_error(429, "RESOURCE_EXHAUSTED", "quota", quota, retry))
    assert isinstance(error, RateLimited) and error.retry_after == 37.0
    assert answer_error(429, _google_error(429, "RESOURCE_EXHAUSTED", "quota")) is None
    bad_key = {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID"}
    error = answer_error(400, _google_error(400, "INVALID_ARGUMENT", "API key not valid.", bad_key))
    assert isinstance(error, UpstreamError) and error.code == "upstream_auth_failed"
    assert error.status == 502 and not error.retryable
    error = answer_error(403, _google_error(403, "PERMISSION_DENIED", "denied"))
    assert error is not None and error.code == "upstream_auth_failed"
    assert answer_error(400, _google_error(400, "INVALID_ARGUMENT", "bad aspect ratio")) is None
    assert answer_error(503, _google_error(503, "UNAVAILABLE", "overloaded")) is None
    in_stream = answer_error(None, [_google_error(500, "INTERNAL", "boom")])
    assert isinstance(in_stream, UpstreamError) and in_stream.retryable


def test_options():
    options = GeminiOptions(base_url="https://relay.example.com/gemini/v1beta/", api_key="k-1")
    assert options.base_url == "https://relay.example.com/gemini"
    assert GeminiOptions().base_url == "https://generativelanguage.googleapis.com"
    assert "k-1" not in repr(options) and "k-1" not in str(options.model_dump())
    assert GeminiOptions(image_size="2k").image_size == "2K"
    for bad in ({"image_size": "8K"}, {"base_url": "example.com"}, {"unknown": 1}):
        with pytest.raises(ValueError):
            GeminiOptions(**bad)
    for name, field in GeminiOptions.model_fields.items():
        assert field.description, name
    assert GeminiProvider.type == "gemini"


async def test_registered():
    async with httpx.AsyncClient() as client:
        provider = build_provider("g", "gemini", {"api_key": "k", "image_size": "4k"}, client)
    assert isinstance(provider, GeminiProvider) and provider.options.image_size == "4K"


# --- text against the fake -------------------------------------------------------------


async def test_chat(make_provider, fake):
    provider = make_provider(temperature=0.2, max_output_tokens=2048)
    messages = [
        {"role": "system", "content": "You plan posts."},
        *user("Topic: 早起\nPages: exactly 5"),
    ]
    text = await provider.chat(messages, temperature=0.7)
    pages = [p.strip() for p in text.split("<page>")]
    assert len(pages) == 5 and pages[0].startswith("[封面]") and pages[-1].startswith("[总结]")
    [sent] = fake.state.requests
    assert sent["path"] == "/v1beta/models/gemini-2.5-flash:generateContent"
    assert sent["headers"]["x-goog-api-key"] == DEFAULT_API_KEY
    assert sent["query"] == {}
    assert sent["json"]["systemInstruction"] == {"parts": [{"text": "You plan posts."}]}
    assert sent["json"]["generationConfig"] == {"temperature": 0.7, "maxOutputTokens": 2048}


async def test_stream_chat_matches_non_stream(make_provider, fake):
    provider = make_provider(text_model="gemini-2.5-pro")
    whole = await provider.chat(user("Topic: 咖啡\nPages: exactly 4"))
    deltas = [d async for d in provider.stream_chat(user("Topic: 咖啡\nPages: exactly 4"))]
    assert len(deltas) > 1 and "".join(deltas) == whole
    sent = fake.state.requests[-1]
    assert sent["path"] == "/v1beta/models/gemini-2.5-pro:streamGenerateContent"
    assert sent["query"] == {"alt": "sse"}


async def test_stream_chat_refusal(make_provider, fake):
    fake.state.block_reason = "SAFETY"
    with pytest.raises(GeminiBlocked) as err:
        [d async for d in make_provider().stream_chat(user("x"))]
    assert err.value.reason == "SAFETY"


async def test_fake_rejects_unknown_fields_and_query_key(http):
    headers = {"x-goog-api-key": DEFAULT_API_KEY}
    url = "/v1beta/models/gemini-2.5-flash:generateContent"
    body = {"contents": [{"parts": [{"text": "hi"}]}], "generation_config": {"max_tokens": 5}}
    response = await http.post(url, json=body, headers=headers)
    assert response.status_code == 400
    assert 'Unknown name "max_tokens"' in response.json()["error"]["message"]
    response = await http.post(url, json={"contents": [], "model": "x"}, headers=headers)
    assert response.status_code == 400
    response = await http.post(url + f"?key={DEFAULT_API_KEY}", json=body)
    assert response.status_code == 400


# --- images against the fake -----------------------------------------------------------


async def test_generate(make_provider, fake):
    refs = (ImageData.from_bytes(PNG), ImageData.from_bytes(JPEG))
    provider = make_provider()
    request = ImageRequest(prompt="a cat", references=refs, aspect_ratio="3:4")
    [image] = await provider.generate(request)
    assert image.mime == "image/png"
    assert Image.open(io.BytesIO(image.data)).size == (864, 1184)  # not the 96x128 thought
    [sent] = fake.state.requests
    assert sent["path"] == "/v1beta/models/gemini-2.5-flash-image:generateContent"
    assert sent["headers"]["x-goog-api-key"] == DEFAULT_API_KEY
    assert "key" not in sent["query"]
    config = sent["json"]["generationConfig"]
    assert config["responseModalities"] == ["TEXT", "IMAGE"]
    assert config["imageConfig"] == {"aspectRatio": "3:4"}
    parts = sent["json"]["contents"][0]["parts"]
    assert [next(iter(p)) for p in parts] == ["inlineData", "inlineData", "text"]
    assert parts[0]["inlineData"] == {"mimeType": "image/png", "data": PNG_B64}
    assert parts[-1] == {"text": "a cat"}


async def test_generate_image_size_and_model(make_provider, fake):
    provider = make_provider(image_size="2K", image_model="gemini-3-pro-image-preview")
    [image] = await provider.generate(ImageRequest(prompt="p", aspect_ratio="16:9"))
    assert Image.open(io.BytesIO(image.data)).size == (2688, 1536)
    sent = fake.state.requests[-1]
    assert sent["path"] == "/v1beta/models/gemini-3-pro-image-preview:generateContent"
    assert sent["json"]["generationConfig"]["imageConfig"] == {
        "aspectRatio": "16:9",
        "imageSize": "2K",
    }


async def test_generate_n_calls_concurrently(make_provider, fake):
    fake.state.image_latency = 0.05
    images = await make_provider().generate(ImageRequest(prompt="p", n=3))
    assert len(images) == 3 and len({i.data for i in images}) == 3
    assert fake.state.calls == 3 and fake.state.max_images_in_flight == 3


@pytest.mark.parametrize("reason", ["IMAGE_SAFETY", "NO_IMAGE"])
async def test_generate_finish_reason_blocked(make_provider, fake, reason):
    fake.state.finish_reason = reason
    with pytest.raises(GeminiBlocked) as err:
        await make_provider().generate(ImageRequest(prompt="p"))
    _assert_blocked(err.value, reason)


async def test_generate_prompt_blocked(make_provider, fake):
    fake.state.block_reason = "PROHIBITED_CONTENT"
    with pytest.raises(GeminiBlocked) as err:
        await make_provider().generate(ImageRequest(prompt="p"))
    _assert_blocked(err.value, "PROHIBITED_CONTENT")


async def test_extra_headers_are_sent(make_provider, fake):
    await make_provider(extra_headers={"X-Relay-Group": "ink"}).chat(user("x"))
    assert fake.state.requests[-1]["headers"]["x-relay-group"] == "ink"


# --- error paths -----------------------------------------------------------------------


async def test_bad_key_blames_gateway_credentials(make_provider):
    provider = make_provider(api_key="AIza-wrong-key-123456")
    with pytest.raises(UpstreamError) as err:
        await provider.generate(ImageRequest(prompt="p"))
    assert err.value.status == 502 and err.value.code == "upstream_auth_failed"
    assert not err.value.retryable
    assert "AIza-wrong-key-123456" not in str(err.value)


async def test_missing_key_is_auth_failure(make_provider):
    with pytest.raises(UpstreamError) as err:
        await make_provider(api_key=None).chat(user("x"))
    assert err.value.status == 502 and err.value.code == "upstream_auth_failed"


async def test_429_is_rate_limited_with_retry_info(make_provider, fake):
    fake.state.fail_next.append(429)
    with pytest.raises(RateLimited) as err:
        await make_provider().generate(ImageRequest(prompt="p"))
    assert err.value.status == 429 and err.value.retry_after == 2.0 and err.value.retryable
    assert err.value.headers() == {"Retry-After": "2"}


@pytest.mark.parametrize("status", [500, 503])
async def test_server_errors_are_retryable_502(make_provider, fake, status):
    fake.state.fail_next.append(status)
    with pytest.raises(UpstreamError) as err:
        await make_provider().generate(ImageRequest(prompt="p"))
    assert err.value.status == 502 and err.value.retryable


async def test_stream_error_status(make_provider, fake):
    fake.state.fail_next.append(503)
    with pytest.raises(UpstreamError) as err:
        [d async for d in make_provider().stream_chat(user("x"))]
    assert err.value.status == 502 and err.value.retryable


async def test_invalid_argument_is_not_retried(relay):
    provider, router = relay
    body = _google_error(400, "INVALID_ARGUMENT", "Unsupported aspect ratio")
    router.post("/v1beta/models/gemini-2.5-flash-image:generateContent").respond(400, json=body)
    with pytest.raises(UpstreamError) as err:
        await provider.generate(ImageRequest(prompt="p"))
    assert err.value.code == "upstream_bad_request" and not err.value.retryable


async def test_timeout_is_504(relay):
    provider, router = relay
    route = router.post("/v1beta/models/gemini-2.5-flash-image:generateContent")
    route.mock(side_effect=httpx.ReadTimeout("slow"))
    with pytest.raises(UpstreamTimeout) as err:
        await provider.generate(ImageRequest(prompt="p"))
    assert err.value.status == 504 and err.value.retryable


async def test_timeout_option_is_per_request():
    async with httpx.AsyncClient() as client:
        with respx.mock(base_url=RELAY) as router:
            route = router.post("/v1beta/models/gemini-2.5-flash:generateContent").respond(
                json=answer({"text": "ok"})
            )
            options = GeminiOptions(base_url=RELAY + "/v1beta", timeout=12.5)
            assert await GeminiProvider("g", options, client).chat(user("x")) == "ok"
            sent = route.calls.last.request
            assert sent.extensions["timeout"]["read"] == 12.5
            assert "x-goog-api-key" not in sent.headers


async def test_key_is_redacted_from_upstream_messages(relay):
    provider, router = relay
    body = _google_error(400, "FAILED_PRECONDITION", f"Consumer 'api_key:{SECRET}' is odd")
    router.post("/v1beta/models/gemini-2.5-flash:generateContent").respond(400, json=body)
    with pytest.raises(UpstreamError) as err:
        await provider.chat(user("x"))
    assert SECRET not in str(err.value) and "[redacted]" in err.value.message
    [call] = router.calls
    assert SECRET not in str(call.request.url) and call.request.headers["x-goog-api-key"] == SECRET


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"<html>oops</html>", "malformed JSON"),
        (json.dumps(answer({"text": "no picture today"})).encode(), "no image in the answer"),
    ],
)
async def test_bad_200_answers(relay, content, match):
    provider, router = relay
    router.post("/v1beta/models/gemini-2.5-flash-image:generateContent").respond(
        200, content=content
    )
    with pytest.raises(UpstreamError, match=match) as err:
        await provider.generate(ImageRequest(prompt="p"))
    assert SECRET not in str(err.value)
