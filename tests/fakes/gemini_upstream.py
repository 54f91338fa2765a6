"""A fake Gemini API (generativelanguage.googleapis.com), for tests (in-process, via
`httpx.ASGITransport`) and for the benchmark (as a real process).

    python -m tests.fakes.gemini_upstream --port 18998 --text-latency 1 \\
        --image-latency 2 --image-bytes 2000000

Routes: `POST /v1beta/models/{model}:generateContent` and
`POST /v1beta/models/{model}:streamGenerateContent?alt=sse` (SSE, one whole
`GenerateContentResponse` per `data:` line, `\\r\\n\\r\\n` between events, as Google sends
them), plus `GET /health`.

It validates like the real service, in Google's error format (`{"error": {"code",
"message", "status", "details"}}`):

- no `x-goog-api-key` header: 403 PERMISSION_DENIED "Method doesn't allow unregistered
  callers" (what Google answers); a wrong key: 400 INVALID_ARGUMENT with an ErrorInfo
  detail `reason: API_KEY_INVALID`. A key in the `?key=` query is refused too (400),
  although Google accepts it: the gateway must only use the header.
- unknown fields (top level, in `generationConfig`, `imageConfig`, contents and parts):
  400 INVALID_ARGUMENT "Invalid JSON payload received. Unknown name ...".
- a bad `role`, empty `contents` or `parts`, inline data that is not base64, an
  unsupported `aspectRatio` or `imageSize`, or IMAGE asked of a model without "image" in
  its name: 400 INVALID_ARGUMENT.

Answers: text is a RedInk outline (pages separated by `<page>`, `[封面]` / `[内容]` /
`[总结]`; the page count from a `Pages: exactly N` line in the last user text, else
`outline_pages`). When `responseModalities` has IMAGE, the candidate's parts are a text
part, a `thought: true` draft image (a small, different PNG) and the real image (a PNG
sized for the aspect ratio and `imageSize` like gemini-2.5-flash-image, ~`image_bytes`
when set, with a `thoughtSignature`), `finishReason: "STOP"`, and `usageMetadata`.

Everything a test may look at or change lives in `app.state`:

- `requests`: every request, a dict with `method`, `path`, `query` (dict), `headers`
  (lower-case keys) and `json` (the parsed body, or None).
- `text_latency`, `image_latency`, `outline_pages`, `api_key` (None: no key check).
- `block_reason`: answer with `promptFeedback.blockReason` and no candidates.
- `finish_reason`: answer a candidate with this `finishReason` and no content
  (e.g. "IMAGE_SAFETY", "NO_IMAGE").
- `fail_next`: HTTP statuses popped one per model call and answered at once, Google-shaped
  (429: RESOURCE_EXHAUSTED with a RetryInfo `retryDelay` of `retry_delay`, default "2s";
  500 INTERNAL; 503 UNAVAILABLE; ...).
- Counters: `text_in_flight`, `max_text_in_flight`, `images_in_flight`,
  `max_images_in_flight`, `calls`.
"""

from __future__ import annotations

import argparse
import asyncio
import binascii
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.fakes.openai_upstream import fake_png, text_for

DEFAULT_API_KEY = "fake-gemini-key"
DEFAULT_IMAGE_MODEL = "gemini-2.5-flash-image"

# gemini-2.5-flash-image's output sizes at 1K; 2K and 4K scale them.
IMAGE_SIZES = {
    "1:1": (1024, 1024),
    "2:3": (832, 1248),
    "3:2": (1248, 832),
    "3:4": (864, 1184),
    "4:3": (1184, 864),
    "4:5": (896, 1152),
    "5:4": (1152, 896),
    "9:16": (768, 1344),
    "16:9": (1344, 768),
    "21:9": (1536, 672),
}
SCALES = {"1K": 1, "2K": 2, "4K": 4}
THOUGHT_SIZE = (96, 128)

# Known fields (REST camelCase and the proto snake_case Google also accepts).
_REQUEST_FIELDS = {
    "contents", "systemInstruction", "system_instruction", "generationConfig",
    "generation_config", "safetySettings", "safety_settings", "tools", "toolConfig",
    "tool_config", "cachedContent", "cached_content", "model",
}  # fmt: skip
_GENERATION_FIELDS = {
    "temperature", "maxOutputTokens", "max_output_tokens", "topP", "top_p", "topK", "top_k",
    "candidateCount", "candidate_count", "stopSequences", "stop_sequences", "seed",
    "responseMimeType", "response_mime_type", "responseSchema", "response_schema",
    "responseJsonSchema", "response_json_schema", "responseModalities",
    "response_modalities", "imageConfig", "image_config", "thinkingConfig",
    "thinking_config", "presencePenalty", "presence_penalty", "frequencyPenalty",
    "frequency_penalty", "responseLogprobs", "response_logprobs", "logprobs",
    "mediaResolution", "media_resolution", "speechConfig", "speech_config",
}  # fmt: skip
_IMAGE_CONFIG_FIELDS = {"aspectRatio", "aspect_ratio", "imageSize", "image_size"}
_CONTENT_FIELDS = {"role", "parts"}
_PART_FIELDS = {
    "text", "inlineData", "inline_data", "fileData", "file_data", "thought",
    "thoughtSignature", "thought_signature", "functionCall", "function_call",
    "functionResponse", "function_response", "videoMetadata", "video_metadata",
}  # fmt: skip
_INLINE_FIELDS = {"mimeType", "mime_type", "data"}

_STATUS_NAMES = {
    400: ("INVALID_ARGUMENT", "Request contains an invalid argument."),
    403: ("PERMISSION_DENIED", "The caller does not have permission"),
    404: ("NOT_FOUND", "models/unknown is not found for API version v1beta."),
    429: (
        "RESOURCE_EXHAUSTED",
        "You exceeded your current quota, please check your plan and billing details.",
    ),
    500: (
        "INTERNAL",
        "An internal error has occurred. Please retry or report in "
        "https://developers.generativeai.google/guide/troubleshooting",
    ),
    503: ("UNAVAILABLE", "The model is overloaded. Please try again later."),
    504: ("DEADLINE_EXCEEDED", "The request timed out. Please try again."),
}


# --- errors ----------------------------------------------------------------------------


def google_error(
    code: int, message: str | None = None, status: str | None = None, details: list | None = None
) -> JSONResponse:
    default_status, default_message = _STATUS_NAMES.get(code, ("UNKNOWN", "Unknown error."))
    error: dict[str, Any] = {
        "code": code,
        "message": message or default_message,
        "status": status or default_status,
    }
    if details:
        error["details"] = details
    return JSONResponse({"error": error}, status_code=code)


def _invalid(message: str) -> JSONResponse:
    return google_error(400, message, "INVALID_ARGUMENT")


def _unknown_field(name: str, where: str | None = None) -> JSONResponse:
    at = f" at '{where}'" if where else ""
    message = f'Invalid JSON payload received. Unknown name "{name}"{at}: Cannot find field.'
    violation = {"field": f"{where}.{name}" if where else name, "description": message}
    details = [
        {"@type": "type.googleapis.com/google.rpc.BadRequest", "fieldViolations": [violation]}
    ]
    return google_error(400, message, "INVALID_ARGUMENT", details)


def _bad_key() -> JSONResponse:
    message = "API key not valid. Please pass a valid API key."
    details = [
        {
            "@type": "type.googleapis.com/google.rpc.ErrorInfo",
            "reason": "API_KEY_INVALID",
            "domain": "googleapis.com",
            "metadata": {"service": "generativelanguage.googleapis.com"},
        },
        {
            "@type": "type.googleapis.com/google.rpc.LocalizedMessage",
            "locale": "en-US",
            "message": message,
        },
    ]
    return google_error(400, message, "INVALID_ARGUMENT", details)


def _injected(state: Any) -> JSONResponse | None:
    if not state.fail_next:
        return None
    code = state.fail_next.pop(0)
    if code == 429:
        details = [
            {
                "@type": "type.googleapis.com/google.rpc.QuotaFailure",
                "violations": [
                    {
                        "quotaMetric": "generativelanguage.googleapis.com/"
                        "generate_content_free_tier_requests",
                        "quotaId": "GenerateRequestsPerMinutePerProjectPerModel-FreeTier",
                        "quotaValue": "10",
                    }
                ],
            },
            {
                "@type": "type.googleapis.com/google.rpc.Help",
                "links": [
                    {
                        "description": "Learn more about Gemini API quotas",
                        "url": "https://ai.google.dev/gemini-api/docs/rate-limits",
                    }
                ],
            },
            {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": state.retry_delay},
        ]
        return google_error(429, details=details)
    return google_error(code)


def _auth(request: Request) -> JSONResponse | None:
    if "key" in request.query_params:
        return _invalid("fake Gemini: send the API key in the x-goog-api-key header, not ?key=")
    expected = request.app.state.api_key
    if expected is None:
        return None
    given = request.headers.get("x-goog-api-key")
    if not given:
        return google_error(
            403,
            "Method doesn't allow unregistered callers (callers without established identity). "
            "Please use API Key or other form of API consumer identity to call this API.",
            "PERMISSION_DENIED",
        )
    return None if given == expected else _bad_key()


# --- validation ------------------------------------------------------------------------


def _first(obj: dict, *names: str) -> Any:
    for name in names:
        if name in obj:
            return obj[name]
    return None


def _check_part(part: Any, where: str) -> JSONResponse | None:
    if not isinstance(part, dict):
        return _invalid(f"Invalid value at '{where}': expected an object.")
    for name in part:
        if name not in _PART_FIELDS:
            return _unknown_field(name, where)
    inline = _first(part, "inlineData", "inline_data")
    if inline is not None:
        if not isinstance(inline, dict):
            return _invalid(f"Invalid value at '{where}.inline_data'.")
        for name in inline:
            if name not in _INLINE_FIELDS:
                return _unknown_field(name, f"{where}.inline_data")
        mime, data = _first(inline, "mimeType", "mime_type"), inline.get("data")
        if not mime or not isinstance(data, str) or not data:
            return _invalid(f"{where}.inline_data: mime_type and data are required.")
        try:
            binascii.a2b_base64(data.encode("ascii"), strict_mode=True)
        except (binascii.Error, UnicodeEncodeError):
            return _invalid(
                f"Invalid value at '{where}.inline_data.data' (TYPE_BYTES), Base64 decoding failed."
            )
    elif not isinstance(part.get("text"), str):
        return _invalid(f"{where}: a part needs text or inline_data.")
    return None


def _check_content(content: Any, where: str, roles: tuple[str, ...]) -> JSONResponse | None:
    if not isinstance(content, dict):
        return _invalid(f"Invalid value at '{where}': expected an object.")
    for name in content:
        if name not in _CONTENT_FIELDS:
            return _unknown_field(name, where)
    role = content.get("role")
    if role is not None and role not in roles:
        return _invalid(f"Please use a valid role: {', '.join(roles)}.")
    parts = content.get("parts")
    if not isinstance(parts, list) or not parts:
        return _invalid(
            f"* GenerateContentRequest.{where}.parts: contents.parts must not be empty."
        )
    for i, part in enumerate(parts):
        bad = _check_part(part, f"{where}.parts[{i}]")
        if bad is not None:
            return bad
    return None


def _check_body(body: Any, model: str) -> JSONResponse | None:
    if not isinstance(body, dict):
        return _invalid("Invalid JSON payload received. Expected an object.")
    for name in body:
        if name not in _REQUEST_FIELDS:
            return _unknown_field(name)
    contents = body.get("contents")
    if not isinstance(contents, list) or not contents:
        return _invalid("* GenerateContentRequest.contents: contents is not specified")
    for i, content in enumerate(contents):
        bad = _check_content(content, f"contents[{i}]", ("user", "model"))
        if bad is not None:
            return bad
    system = _first(body, "systemInstruction", "system_instruction")
    if system is not None:
        bad = _check_content(system, "system_instruction", ("user", "system"))
        if bad is not None:
            return bad
    config = _first(body, "generationConfig", "generation_config") or {}
    if not isinstance(config, dict):
        return _invalid("Invalid value at 'generation_config': expected an object.")
    for name in config:
        if name not in _GENERATION_FIELDS:
            return _unknown_field(name, "generation_config")
    temperature = config.get("temperature")
    if temperature is not None and not (
        isinstance(temperature, int | float) and 0 <= temperature <= 2
    ):
        return _invalid("* GenerateContentRequest.generation_config.temperature: must be in [0, 2]")
    modalities = [
        str(m).upper() for m in _first(config, "responseModalities", "response_modalities") or ()
    ]
    if any(m not in ("TEXT", "IMAGE", "AUDIO") for m in modalities):
        return _invalid("Invalid value at 'generation_config.response_modalities'.")
    if "IMAGE" in modalities and "image" not in model:
        return _invalid("Model does not support the requested response modalities: image")
    image_config = _first(config, "imageConfig", "image_config") or {}
    if not isinstance(image_config, dict):
        return _invalid("Invalid value at 'generation_config.image_config'.")
    for name in image_config:
        if name not in _IMAGE_CONFIG_FIELDS:
            return _unknown_field(name, "generation_config.image_config")
    ratio = _first(image_config, "aspectRatio", "aspect_ratio")
    if ratio is not None and ratio not in IMAGE_SIZES:
        return _invalid(
            f"Unsupported aspect ratio: {ratio}. Supported values are: {', '.join(IMAGE_SIZES)}."
        )
    size = _first(image_config, "imageSize", "image_size")
    if size is not None and size not in SCALES:
        return _invalid(f"Unsupported image size: {size}. Supported values are: 1K, 2K, 4K.")
    return None


# --- answers ---------------------------------------------------------------------------


def _last_user_text(contents: list[dict]) -> str:
    for content in reversed(contents):
        if content.get("role", "user") == "user":
            return "\n".join(p["text"] for p in content["parts"] if isinstance(p.get("text"), str))
    return ""


def _usage(prompt_tokens: int, answer_tokens: int, image: bool) -> dict:
    usage: dict[str, Any] = {
        "promptTokenCount": prompt_tokens,
        "candidatesTokenCount": answer_tokens,
        "totalTokenCount": prompt_tokens + answer_tokens,
        "promptTokensDetails": [{"modality": "TEXT", "tokenCount": prompt_tokens}],
    }
    if image:
        usage["candidatesTokensDetails"] = [{"modality": "IMAGE", "tokenCount": answer_tokens}]
    return usage


def _envelope(model: str, **fields: Any) -> dict:
    return {**fields, "modelVersion": model, "responseId": uuid.uuid4().hex[:22]}


def _refusal(state: Any, model: str, prompt_tokens: int) -> dict | None:
    usage = {"promptTokenCount": prompt_tokens, "totalTokenCount": prompt_tokens}
    if state.block_reason:
        return _envelope(
            model, promptFeedback={"blockReason": state.block_reason}, usageMetadata=usage
        )
    if state.finish_reason:
        candidate = {"finishReason": state.finish_reason, "index": 0}
        return _envelope(model, candidates=[candidate], usageMetadata=usage)
    return None


_IMAGE_PLACEHOLDER = "@@fake-image-b64@@"
_THOUGHT_PLACEHOLDER = "@@fake-thought-b64@@"


def _image_answer(state: Any, model: str, config: dict, prompt_tokens: int) -> bytes:
    """The JSON body of an image answer. The big base64 is spliced into the small
    pretty-printed skeleton, so the fake spends almost no CPU on it."""
    image_config = _first(config, "imageConfig", "image_config") or {}
    ratio = _first(image_config, "aspectRatio", "aspect_ratio") or "1:1"
    scale = SCALES[_first(image_config, "imageSize", "image_size") or "1K"]
    width, height = IMAGE_SIZES[ratio]
    state.serial += 1
    serial = state.serial
    image = fake_png(width * scale, height * scale, state.image_bytes)
    thought = fake_png(*THOUGHT_SIZE, 0)
    parts = [
        {"text": "Here is the page you asked for."},
        {"inlineData": {"mimeType": "image/png", "data": _THOUGHT_PLACEHOLDER}, "thought": True},
        {
            "inlineData": {"mimeType": "image/png", "data": _IMAGE_PLACEHOLDER},
            "thoughtSignature": "ZmFrZS1zaWduYXR1cmU=",
        },
    ]
    answer = _envelope(
        model,
        candidates=[
            {
                "content": {"parts": parts, "role": "model"},
                "finishReason": "STOP",
                "index": 0,
            }
        ],
        usageMetadata=_usage(prompt_tokens, 1290 * scale * scale, image=True),
    )
    skeleton = json.dumps(answer, indent=2).encode()
    skeleton = skeleton.replace(_THOUGHT_PLACEHOLDER.encode(), thought.b64(serial))
    return skeleton.replace(_IMAGE_PLACEHOLDER.encode(), image.b64(serial))


def _text_answer(model: str, text: str, prompt_tokens: int, finish: str | None) -> dict:
    candidate: dict[str, Any] = {"content": {"parts": [{"text": text}], "role": "model"}}
    if finish:
        candidate["finishReason"] = finish
    candidate["index"] = 0
    return _envelope(
        model,
        candidates=[candidate],
        usageMetadata=_usage(prompt_tokens, len(text) // 2, image=False),
    )


def _sse(data: dict | bytes) -> bytes:
    body = data if isinstance(data, bytes) else json.dumps(data, ensure_ascii=False).encode()
    return b"data: " + body.replace(b"\n", b"") + b"\r\n\r\n"


async def models_call(request: Request) -> Response:
    state = request.app.state
    target = request.path_params["target"]
    model, _, method = target.partition(":")
    raw = await request.body()
    try:
        body = json.loads(raw) if raw else None
    except ValueError:
        body = None
    state.requests.append(
        {
            "method": request.method,
            "path": request.url.path,
            "query": dict(request.query_params),
            "headers": {k.lower(): v for k, v in request.headers.items()},
            "json": body,
        }
    )
    if method not in ("generateContent", "streamGenerateContent"):
        return google_error(404, f"Method not found: {method or '(none)'}", "NOT_FOUND")
    state.calls += 1
    denied = _auth(request)
    if denied is not None:
        return denied
    if body is None:
        return _invalid("Invalid JSON payload received. Unexpected end of string.")
    bad = _check_body(body, model)
    if bad is not None:
        return bad
    failure = _injected(state)
    if failure is not None:
        return failure

    config = _first(body, "generationConfig", "generation_config") or {}
    modalities = [
        str(m).upper() for m in _first(config, "responseModalities", "response_modalities") or ()
    ]
    is_image = "IMAGE" in modalities
    prompt_text = _last_user_text(body["contents"])
    system = _first(body, "systemInstruction", "system_instruction") or {}
    system_text = "\n".join(
        str(part.get("text", "")) for part in system.get("parts", []) if isinstance(part, dict)
    )
    prompt_tokens = len(json.dumps(body["contents"], ensure_ascii=False)) // 4 + 1
    stream = method == "streamGenerateContent"
    if stream and request.query_params.get("alt") != "sse":
        return _invalid("fake Gemini: only alt=sse streaming is implemented")

    kind = "images" if is_image else "text"
    latency = float(state.image_latency if is_image else state.text_latency)
    refusal = _refusal(state, model, prompt_tokens)

    async def wait(seconds: float) -> None:
        setattr(state, f"{kind}_in_flight", getattr(state, f"{kind}_in_flight") + 1)
        peak = f"max_{kind}_in_flight"
        setattr(state, peak, max(getattr(state, peak), getattr(state, f"{kind}_in_flight")))
        try:
            await asyncio.sleep(seconds)
        finally:
            setattr(state, f"{kind}_in_flight", getattr(state, f"{kind}_in_flight") - 1)

    if not stream:
        await wait(latency)
        if refusal is not None:
            return JSONResponse(refusal)
        if is_image:
            content = _image_answer(state, model, config, prompt_tokens)
            return Response(content, media_type="application/json; charset=UTF-8")
        text = text_for(system_text, prompt_text, state)
        return JSONResponse(_text_answer(model, text, prompt_tokens, "STOP"))

    async def events() -> AsyncIterator[bytes]:
        if refusal is not None:
            await wait(latency)
            yield _sse(refusal)
            return
        if is_image:
            await wait(latency)
            yield _sse(_image_answer(state, model, config, prompt_tokens))
            return
        text = text_for(system_text, prompt_text, state)
        pieces = max(1, min(8, len(text) // 20))
        step = -(-len(text) // pieces)
        await wait(latency / 2)
        chunks = [text[i : i + step] for i in range(0, len(text), step)]
        for i, chunk in enumerate(chunks):
            await wait(latency / 2 / pieces)
            last = i == len(chunks) - 1
            yield _sse(_text_answer(model, chunk, prompt_tokens, "STOP" if last else None))

    return StreamingResponse(events(), media_type="text/event-stream")


async def health(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


# --- the app ---------------------------------------------------------------------------


MODELS = ("gemini-2.5-flash", "gemini-2.5-flash-image", "gemini-3-pro-image-preview")


async def models_list(request: Request) -> JSONResponse:
    """`models.list`, as Google answers it (first page only)."""
    denied = _auth(request)
    if denied is not None:
        return denied
    return JSONResponse(
        {
            "models": [
                {
                    "name": f"models/{name}",
                    "displayName": name,
                    "supportedGenerationMethods": ["generateContent", "countTokens"],
                }
                for name in MODELS
            ]
        }
    )


def create_fake_gemini(
    *,
    text_latency: float = 0.0,
    image_latency: float = 0.0,
    image_bytes: int = 0,
    api_key: str | None = DEFAULT_API_KEY,
    outline_pages: int = 8,
) -> Starlette:
    """A fresh fake Gemini API. `image_bytes` is the PNG size to aim for (0: a small image)."""
    app = Starlette(
        routes=[
            Route("/v1beta/models", models_list, methods=["GET"]),
            Route("/v1beta/models/{target}", models_call, methods=["POST"]),
            Route("/health", health, methods=["GET"]),
        ]
    )
    state = app.state
    state.api_key = api_key
    state.text_latency = text_latency
    state.image_latency = image_latency
    state.image_bytes = image_bytes
    state.outline_pages = outline_pages
    state.requests = []
    state.calls = 0
    state.serial = 0
    state.text_in_flight = 0
    state.max_text_in_flight = 0
    state.images_in_flight = 0
    state.max_images_in_flight = 0
    state.block_reason = None
    state.finish_reason = None
    state.fail_next = []
    state.retry_delay = "2s"
    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Run the fake Gemini API.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=18998)
    parser.add_argument("--text-latency", type=float, default=0.0, help="seconds per text call")
    parser.add_argument("--image-latency", type=float, default=0.0, help="seconds per image call")
    parser.add_argument("--image-bytes", type=int, default=0, help="PNG size to aim for")
    parser.add_argument("--outline-pages", type=int, default=8)
    parser.add_argument(
        "--api-key", default=DEFAULT_API_KEY, help="expected x-goog-api-key; '' disables the check"
    )
    parser.add_argument("--log-level", default="warning")
    args = parser.parse_args(argv)

    import uvicorn

    app = create_fake_gemini(
        text_latency=args.text_latency,
        image_latency=args.image_latency,
        image_bytes=args.image_bytes,
        api_key=args.api_key or None,
        outline_pages=args.outline_pages,
    )
    print(f"fake Gemini API on http://{args.host}:{args.port} (v1beta)", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, access_log=False)


if __name__ == "__main__":
    main()
