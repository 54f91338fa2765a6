"""A fake OpenAI-compatible upstream, for tests (in-process, via `httpx.ASGITransport`) and
for the benchmark (as a real process).

    python -m tests.fakes.openai_upstream --port 18999 --text-latency 1 \\
        --image-latency 2 --image-bytes 2000000

Speaks the real wire format: `chat.completion` / `chat.completion.chunk` objects (SSE
with `data: [DONE]`), the Images API answer `{"created", "data": [{"b64_json"} | {"url"}],
"usage"}` and OpenAI error bodies. `/images/edits` takes multipart (`image` / `image[]`)
or, with `Content-Type: application/json`, OpenAI's JSON edits body (`images: [{"image_url"}
| {"file_id"}]`), checked strictly: a wrong shape is a 400 OpenAI error.

A chat model whose name contains "image" (`gemini-2.5-flash-image`) is an image model:
`/chat/completions` answers one PNG (never streamed, whatever `stream` says), shaped by
`chat_image_style`, and checks that every `image_url` part of the request is an http(s) URL
or a data URL of a real image. The outline is in RedInk format: pages separated by a
`<page>` line, each starting `[封面]`, `[内容]` or `[总结]`; the page count comes from a
`Pages: exactly N` line in the last user message, else `outline_pages`.

Everything a test may look at or change lives in `app.state`:

- `requests`: every request, a dict with `method`, `path`, `headers` (lower-case keys),
  `json` (JSON bodies), `fields` and `files` (multipart: text fields; one dict per file
  part with `field`, `filename`, `content_type`, `size`, `mime` from the magic bytes).
- `images_in_flight`, `max_images_in_flight`, `text_in_flight`, `max_text_in_flight`,
  `image_requests`, `chat_requests`: counters.
- `text_latency`, `image_latency`, `outline_pages`, `api_key` (None: no auth check).
- Failure knobs: `fail_next_images` / `fail_next_chat` (lists of HTTP statuses, popped one
  per request, answered at once with an OpenAI error body; 429 carries `Retry-After:
  retry_after`), `content_policy` (image requests get a 400 `content_policy_violation`),
  `reject_response_format_for_gpt_image` (like OpenAI: 400 when a `gpt-image*` model is
  sent `response_format`; default True). `content_policy` also refuses chat image calls.
- `chat_image_style`, how a chat image model answers: `images_field` (OpenRouter:
  `message.images[{"type": "image_url", "image_url": {"url": "data:..."}}]`, the default),
  `content_parts` (a text part and an `image_url` part in `content`), `markdown_data`
  (`![image](data:image/png;base64,...)` in the text), `markdown_url` (`![image](http://.../
  files/img-N.png)`, served by `/files/`), `bare_data` (the data URL alone as content),
  `text_only` (no image: a refusal in words, `CHAT_IMAGE_REFUSAL`).
- `quality` is accepted on image requests when one of `QUALITIES`.

The PNG is built once per (width, height, size) and cached; each answer only varies a
small trailing tEXt chunk (a serial number), so every image is distinct while the fake
spends almost no CPU per request: the base64 of the big head is computed once.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import functools
import json
import os
import re
import struct
import time
import uuid
import zlib
from collections import OrderedDict
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

DEFAULT_API_KEY = "sk-fake-upstream"
MAX_STORED_FILES = 64  # URL answers kept for download (each may be ~2 MB)
CHAT_IMAGE_STYLES = (
    "images_field",
    "content_parts",
    "markdown_data",
    "markdown_url",
    "bare_data",
    "text_only",
)
CHAT_IMAGE_REFUSAL = "I can't draw that, but here is a description: a calm flat-lay in warm light."
QUALITIES = ("auto", "low", "medium", "high", "standard", "hd")
# OpenAI's JSON edits body; anything else is an unknown parameter.
_JSON_EDIT_FIELDS = frozenset(
    {
        "model", "prompt", "images", "mask", "n", "size", "quality", "response_format",
        "background", "input_fidelity", "moderation", "output_compression", "output_format",
        "partial_images", "stream", "user",
    }
)  # fmt: skip
_DATA_URL = re.compile(r"^data:(image/[\w.+-]+);base64,([A-Za-z0-9+/=]+)$")

_PAGES = re.compile(r"pages:\s*exactly\s*(\d+)", re.IGNORECASE)
_TOPIC = re.compile(r"(?:topic|主题)\s*[:：]\s*(.+)", re.IGNORECASE)


# --- the PNG ---------------------------------------------------------------------------


def _chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


_IEND = _chunk(b"IEND", b"")


class FakePng:
    """A PNG of a given size on disk, whose last tEXt chunk carries a serial number.

    `head` is everything before that chunk and its length is a multiple of 3, so
    base64(head + tail) == base64(head) + base64(tail): per image only the tail is encoded.
    """

    def __init__(self, width: int, height: int, target_bytes: int) -> None:
        self.width, self.height = width, height
        ihdr = _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
        row_len = 1 + 3 * width
        noise_rows = max(0, min(height, target_bytes // row_len)) if target_bytes else 0
        idat = _chunk(b"IDAT", self._pixels(noise_rows))
        if target_bytes and noise_rows < height:
            # One correction pass: the solid rows and zlib framing are not free.
            size = 8 + len(ihdr) + len(idat) + 60
            noise_rows = max(0, min(height, noise_rows + round((target_bytes - size) / row_len)))
            idat = _chunk(b"IDAT", self._pixels(noise_rows))
        head = b"\x89PNG\r\n\x1a\n" + ihdr + idat
        pad = (-(len(head) + 12 + 4)) % 3
        head += _chunk(b"tEXt", b"pad\x00" + b"." * pad)
        assert len(head) % 3 == 0
        self.head = head
        self.head_b64 = base64.b64encode(head)

    def _pixels(self, noise_rows: int) -> bytes:
        solid = b"\x00" + bytes((250, 228, 214)) * self.width
        top = (self.height - noise_rows) // 2
        rows = [solid] * top
        rows += [b"\x00" + os.urandom(3 * self.width) for _ in range(noise_rows)]
        rows += [solid] * (self.height - top - noise_rows)
        return zlib.compress(b"".join(rows), 1)

    @staticmethod
    def _tail(serial: int) -> bytes:
        return _chunk(b"tEXt", b"inkgate-serial\x00" + b"%012d" % serial) + _IEND

    def png(self, serial: int) -> bytes:
        return self.head + self._tail(serial)

    def tail_b64(self, serial: int) -> bytes:
        return base64.b64encode(self._tail(serial))

    def b64(self, serial: int) -> bytes:
        return self.head_b64 + self.tail_b64(serial)


@functools.lru_cache(maxsize=8)
def fake_png(width: int = 1080, height: int = 1440, target_bytes: int = 0) -> FakePng:
    """The cached `FakePng` (0 bytes: a small solid image)."""
    return FakePng(width, height, target_bytes)


# --- the outline -----------------------------------------------------------------------


def _message_text(message: dict) -> str:
    content = message.get("content")
    if isinstance(content, list):
        return "\n".join(
            str(p.get("text", ""))
            for p in content
            if isinstance(p, dict) and p.get("type") == "text"
        )
    return content if isinstance(content, str) else ""


def _last_user_text(messages: Any) -> str:
    for message in reversed(messages if isinstance(messages, list) else []):
        if isinstance(message, dict) and message.get("role") == "user":
            return _message_text(message)
    return ""


COPY_MARKER = "[inkgate:post_copy]"
EDIT_MARKER = "[inkgate:post_edit]"


def text_for(system: str, prompt: str, state: Any) -> str:
    """What a text model answers: InkGate's post copy and edit tasks (named by a marker
    in the system prompt) get JSON (`state.edit_answer` for edits), anything else an
    outline."""
    if COPY_MARKER in system:
        topic = prompt.split("\n", 1)[0].removeprefix("Topic:").strip()[:16] or "笔记"
        return json.dumps(
            {
                "titles": [f"{topic}｜一篇讲清", f"关于{topic}的 3 个真相"],
                "copywriting": f"今天聊聊{topic} ✨\n\n收藏起来慢慢看，评论区聊聊👇",
                "tags": [topic, "干货", "小红书"],
            },
            ensure_ascii=False,
        )
    if EDIT_MARKER in system:
        return getattr(state, "edit_answer", None) or '{"actions": []}'
    return outline_for(prompt, state.outline_pages)


def _system_text(messages: Any) -> str:
    return "\n".join(
        _message_text(m)
        for m in (messages if isinstance(messages, list) else [])
        if isinstance(m, dict) and m.get("role") in ("system", "developer")
    )


def outline_for(prompt: str, default_pages: int) -> str:
    """A RedInk outline for the topic in `prompt` (page count from `Pages: exactly N`)."""
    match = _PAGES.search(prompt)
    pages = max(1, min(int(match[1]), 50)) if match else default_pages
    topic_match = _TOPIC.search(prompt)
    if topic_match:
        topic = topic_match[1].strip()
    else:
        lines = [ln.strip() for ln in prompt.splitlines() if ln.strip()]
        lines = [ln for ln in lines if not _PAGES.search(ln)]
        topic = lines[0] if lines else "生活小技巧"
    topic = topic[:40]
    out = [
        f"[封面]\n标题：{topic}\n副标题：{max(pages - 2, 1)} 个要点，一次讲清\n"
        "背景：暖色渐变，大字标题"
    ]
    for i in range(1, pages - 1):
        out.append(
            f"[内容]\n第 {i} 点：{topic}的关键细节 {i}\n"
            f"- 要点一：先弄清楚为什么\n- 要点二：再动手试一次\n配图建议：简洁扁平插画 {i}"
        )
    if pages > 1:
        out.append(f"[总结]\n总结：{topic}，收藏起来慢慢看\n#干货 #{topic[:10]}")
    return "\n<page>\n".join(out)


# --- helpers ---------------------------------------------------------------------------

_ERRORS: dict[int, tuple[str, str, str | None]] = {
    400: ("Invalid request.", "invalid_request_error", "invalid_request"),
    401: ("Incorrect API key provided.", "invalid_request_error", "invalid_api_key"),
    403: ("You are not allowed to use this model.", "invalid_request_error", "permission_denied"),
    404: ("The model does not exist.", "invalid_request_error", "model_not_found"),
    429: ("Rate limit reached for requests.", "requests", "rate_limit_exceeded"),
    500: ("The server had an error while processing your request.", "server_error", None),
    502: ("Bad gateway.", "server_error", None),
    503: ("The engine is currently overloaded, please try again later.", "server_error", None),
}


def openai_error(
    status: int,
    message: str | None = None,
    *,
    type_: str | None = None,
    code: str | None = None,
    param: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    default_message, default_type, default_code = _ERRORS.get(
        status, ("Upstream error.", "server_error", None)
    )
    body = {
        "error": {
            "message": message or default_message,
            "type": type_ or default_type,
            "param": param,
            "code": code if code is not None else default_code,
        }
    }
    return JSONResponse(body, status_code=status, headers=headers)


def _injected(state: Any, queue: list[int]) -> JSONResponse | None:
    if not queue:
        return None
    status = queue.pop(0)
    headers = {"Retry-After": str(state.retry_after)} if status == 429 else None
    return openai_error(status, headers=headers)


def _unauthorized(request: Request) -> JSONResponse | None:
    key = request.app.state.api_key
    if key is None or request.headers.get("authorization") == f"Bearer {key}":
        return None
    return openai_error(401)


def _record(request: Request, **extra: Any) -> None:
    entry = {
        "method": request.method,
        "path": request.url.path,
        "headers": {k.lower(): v for k, v in request.headers.items()},
        "json": None,
        "fields": None,
        "files": None,
    }
    entry.update(extra)
    request.app.state.requests.append(entry)


async def _json_body(request: Request) -> tuple[Any, JSONResponse | None]:
    try:
        return json.loads(await request.body()), None
    except ValueError:
        return None, openai_error(400, "We could not parse the JSON body of your request.")


def _data_url_problem(url: Any) -> str | None:
    """Why `url` is not an http(s) URL or a base64 data URL of a PNG/JPEG/WebP, or None."""
    if not isinstance(url, str):
        return "must be a string"
    if url.startswith(("http://", "https://")):
        return None
    match = _DATA_URL.match(url)
    if match is None:
        return "must be an http(s) URL or a base64 data URL"
    try:
        data = base64.b64decode(match[2], validate=True)
    except ValueError:
        return "has invalid base64"
    if _mime(data) is None:
        return "is not a PNG, JPEG or WebP image"
    return None


def _mime(data: bytes) -> str | None:
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


# --- chat ------------------------------------------------------------------------------


def _completion_chunk(cid: str, created: int, model: str, delta: dict, finish: str | None) -> bytes:
    chunk = {
        "id": cid,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "system_fingerprint": "fp_fake",
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }
    return b"data: " + json.dumps(chunk, ensure_ascii=False).encode() + b"\n\n"


async def chat_completions(request: Request) -> Response:
    state = request.app.state
    body, bad = await _json_body(request)
    _record(request, json=body)
    state.chat_requests += 1
    denied = _unauthorized(request)
    if denied is not None:
        return denied
    if bad is not None:
        return bad
    failure = _injected(state, state.fail_next_chat)
    if failure is not None:
        return failure
    if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
        return openai_error(400, "'messages' is a required property", param="messages")
    model = str(body.get("model") or "gpt-4o-mini")
    if "image" in model.lower():
        return await _chat_image_answer(request, body, model)
    text = text_for(_system_text(body["messages"]), _last_user_text(body["messages"]), state)
    cid = f"chatcmpl-{uuid.uuid4().hex[:24]}"
    created = int(time.time())
    latency = float(state.text_latency)

    if body.get("stream"):
        pieces = max(1, min(8, len(text) // 20))
        step = -(-len(text) // pieces)

        async def events() -> AsyncIterator[bytes]:
            state.text_in_flight += 1
            state.max_text_in_flight = max(state.max_text_in_flight, state.text_in_flight)
            try:
                await asyncio.sleep(latency / 2)
                role = {"role": "assistant", "content": ""}
                yield _completion_chunk(cid, created, model, role, None)
                for start in range(0, len(text), step):
                    await asyncio.sleep(latency / 2 / pieces)
                    yield _completion_chunk(
                        cid, created, model, {"content": text[start : start + step]}, None
                    )
                yield _completion_chunk(cid, created, model, {}, "stop")
                yield b"data: [DONE]\n\n"
            finally:
                state.text_in_flight -= 1

        return StreamingResponse(events(), media_type="text/event-stream")

    state.text_in_flight += 1
    state.max_text_in_flight = max(state.max_text_in_flight, state.text_in_flight)
    try:
        await asyncio.sleep(latency)
    finally:
        state.text_in_flight -= 1
    prompt_tokens = sum(len(_message_text(m)) for m in body["messages"] if isinstance(m, dict))
    completion_tokens = len(text) // 2
    return JSONResponse(
        {
            "id": cid,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "system_fingerprint": "fp_fake",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text, "refusal": None},
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }
    )


def _chat_image_problem(body: dict) -> JSONResponse | None:
    modalities = body.get("modalities")
    if modalities is not None and (
        not isinstance(modalities, list) or not set(modalities) <= {"image", "text"}
    ):
        return openai_error(400, "'modalities' must be a list of 'image' and 'text'.")
    for i, message in enumerate(body["messages"]):
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str):
            continue
        if not isinstance(content, list):
            return openai_error(400, f"Invalid 'messages[{i}].content'.", param="messages")
        for j, part in enumerate(content):
            where = f"messages[{i}].content[{j}]"
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text" and isinstance(part.get("text"), str):
                continue
            if kind != "image_url" or not isinstance(part.get("image_url"), dict):
                return openai_error(400, f"Invalid '{where}'.", param="messages")
            problem = _data_url_problem(part["image_url"].get("url"))
            if problem is not None:
                return openai_error(400, f"'{where}.image_url.url' {problem}.", param="messages")
    return None


async def _chat_image_answer(request: Request, body: dict, model: str) -> Response:
    """An image model's chat answer, in the style `state.chat_image_style`."""
    state = request.app.state
    bad = _chat_image_problem(body)
    if bad is not None:
        return bad
    style = state.chat_image_style
    if style not in CHAT_IMAGE_STYLES:
        raise ValueError(f"unknown chat_image_style {style!r}")
    if state.content_policy:
        return openai_error(
            400,
            "The request was blocked by the safety system.",
            code="content_policy_violation",
        )
    state.images_in_flight += 1
    state.max_images_in_flight = max(state.max_images_in_flight, state.images_in_flight)
    try:
        await asyncio.sleep(float(state.image_latency))
    finally:
        state.images_in_flight -= 1

    png: FakePng = state.png
    state.serial += 1
    serial = state.serial
    # The big base64 goes in by bytes replacement, not through json.dumps.
    marker = "@@IMAGE@@"
    data_url = "data:image/png;base64," + marker
    message: dict[str, Any] = {"role": "assistant", "content": "Here is your image."}
    if style == "images_field":
        message["images"] = [{"type": "image_url", "image_url": {"url": data_url}}]
    elif style == "content_parts":
        message["content"] = [
            {"type": "text", "text": "Here is your image."},
            {"type": "image_url", "image_url": {"url": data_url}},
        ]
    elif style == "markdown_data":
        message["content"] = f"Here is your image:\n\n![image]({data_url})"
    elif style == "markdown_url":
        name = f"img-{serial}"
        state.files[name] = png.png(serial)
        while len(state.files) > MAX_STORED_FILES:
            state.files.popitem(last=False)
        url = f"{str(request.base_url).rstrip('/')}/files/{name}.png"
        message["content"] = f"Here is your image:\n\n![image]({url})"
    elif style == "bare_data":
        message["content"] = data_url
    else:  # text_only
        message["content"] = CHAT_IMAGE_REFUSAL
    answer = {
        "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 1290, "total_tokens": 1300},
    }
    content = json.dumps(answer, ensure_ascii=False).encode()
    return Response(
        content.replace(marker.encode(), png.b64(serial)), media_type="application/json"
    )


# --- images ----------------------------------------------------------------------------


async def images_generations(request: Request) -> Response:
    state = request.app.state
    body, bad = await _json_body(request)
    _record(request, json=body)
    state.image_requests += 1
    denied = _unauthorized(request)
    if denied is not None:
        return denied
    if bad is not None:
        return bad
    if not isinstance(body, dict):
        return openai_error(400, "The body must be a JSON object.")
    return await _images_answer(request, body)


def _json_edit_problem(body: Any) -> JSONResponse | None:
    """What is wrong with a JSON edits body, as OpenAI would say it, or None."""
    if not isinstance(body, dict):
        return openai_error(400, "The body must be a JSON object.")
    for key in body:
        if key not in _JSON_EDIT_FIELDS:
            hint = " JSON edits take 'images'." if key in ("image", "image[]") else ""
            return openai_error(
                400, f"Unknown parameter: '{key}'.{hint}", code="unknown_parameter", param=key
            )
    images = body.get("images")
    if not isinstance(images, list) or not 1 <= len(images) <= 16:
        return openai_error(400, "'images' must be a list of 1 to 16 images.", param="images")
    for i, ref in enumerate(images):
        where = f"images[{i}]"
        if not isinstance(ref, dict) or len(ref) != 1 or not {"image_url", "file_id"} & set(ref):
            message = f"'{where}' must be an object with exactly one of image_url or file_id."
            return openai_error(400, message, param=where)
        if "file_id" in ref:
            if not isinstance(ref["file_id"], str) or not ref["file_id"]:
                return openai_error(400, f"'{where}.file_id' must be a string.", param=where)
            continue
        problem = _data_url_problem(ref["image_url"])
        if problem is not None:
            return openai_error(400, f"'{where}.image_url' {problem}.", param=where)
    n = body.get("n", 1)
    if not isinstance(n, int) or isinstance(n, bool):
        return openai_error(400, "'n' must be an integer.", param="n")
    return None


async def images_edits(request: Request) -> Response:
    state = request.app.state
    # Latency counts from arrival: this fake's pure-Python multipart parsing is far
    # slower than a real upstream's and must not be billed to the gateway.
    request.state.arrived = time.monotonic()
    if request.headers.get("content-type", "").lower().startswith("application/json"):
        body, bad = await _json_body(request)
        _record(request, json=body)
        state.image_requests += 1
        denied = _unauthorized(request)
        if denied is not None:
            return denied
        if bad is not None:
            return bad
        bad = _json_edit_problem(body)
        if bad is not None:
            return bad
        return await _images_answer(request, body)
    fields: dict[str, str] = {}
    files: list[dict] = []
    try:
        async with request.form() as form:
            for name, value in form.multi_items():
                if isinstance(value, UploadFile):
                    data = await value.read()
                    files.append(
                        {
                            "field": name,
                            "filename": value.filename,
                            "content_type": value.content_type,
                            "size": len(data),
                            "mime": _mime(data),
                        }
                    )
                else:
                    fields[name] = value
    except Exception:  # any parse failure is the client's fault here
        _record(request)
        state.image_requests += 1
        return openai_error(400, "Could not parse multipart form.")
    _record(request, fields=fields, files=files)
    state.image_requests += 1
    denied = _unauthorized(request)
    if denied is not None:
        return denied
    images = [f for f in files if f["field"] in ("image", "image[]")]
    masks = [f for f in files if f["field"] == "mask"]
    if not images or len(images) + len(masks) != len(files) or len(masks) > 1:
        return openai_error(400, "Expected image files in 'image' or 'image[]'.", param="image")
    if any(f["mime"] is None for f in images):
        return openai_error(400, "Invalid image file: use PNG, JPEG or WebP.", param="image")
    return await _images_answer(request, dict(fields))


async def _images_answer(request: Request, params: dict) -> Response:
    state = request.app.state
    failure = _injected(state, state.fail_next_images)
    if failure is not None:
        return failure
    model = str(params.get("model") or "dall-e-2")
    prompt = params.get("prompt")
    if not isinstance(prompt, str) or not prompt:
        return openai_error(400, "'prompt' is a required property", param="prompt")
    try:
        n = int(params.get("n") or 1)
    except (TypeError, ValueError):
        n = 0
    if not 1 <= n <= 10:
        return openai_error(400, "'n' must be between 1 and 10", param="n")
    response_format = params.get("response_format")
    if response_format is not None and "gpt-image" in model.lower():
        if state.reject_response_format_for_gpt_image:
            return openai_error(
                400,
                "Unknown parameter: 'response_format'.",
                code="unknown_parameter",
                param="response_format",
            )
    if response_format not in (None, "b64_json", "url"):
        return openai_error(400, "Invalid 'response_format'.", param="response_format")
    quality = params.get("quality")
    if quality is not None and quality not in QUALITIES:
        message = f"Invalid 'quality': expected one of {', '.join(QUALITIES)}."
        return openai_error(400, message, param="quality")
    if state.content_policy:
        return openai_error(
            400,
            "Your request was rejected as a result of our safety system. Your prompt may "
            "contain text that is not allowed by our safety system.",
            code="content_policy_violation",
            param=None,
        )

    state.images_in_flight += 1
    state.max_images_in_flight = max(state.max_images_in_flight, state.images_in_flight)
    try:
        arrived = getattr(request.state, "arrived", None) or time.monotonic()
        await asyncio.sleep(max(0.0, float(state.image_latency) - (time.monotonic() - arrived)))
    finally:
        state.images_in_flight -= 1

    png: FakePng = state.png
    # The body in pieces: the base64 of the image's fixed head is one shared bytes object,
    # so an answer costs no multi-megabyte copy here (the fake shares the benchmark
    # machine with the gateway; a real upstream does not).
    parts: list[bytes] = [b'{"created":%d,"data":[' % int(time.time())]
    for i in range(n):
        state.serial += 1
        serial = state.serial
        if i:
            parts.append(b",")
        if response_format == "url":
            name = f"img-{serial}"
            state.files[name] = png.png(serial)
            while len(state.files) > MAX_STORED_FILES:
                state.files.popitem(last=False)
            url = f"{str(request.base_url).rstrip('/')}/files/{name}.png"
            parts.append(b'{"url":' + json.dumps(url).encode() + b"}")
        else:
            parts += (b'{"b64_json":"', png.head_b64, png.tail_b64(serial) + b'"}')
    tokens = len(prompt) // 4 + 1
    usage = {
        "total_tokens": tokens + 1056 * n,
        "input_tokens": tokens,
        "output_tokens": 1056 * n,
        "input_tokens_details": {"text_tokens": tokens, "image_tokens": 0},
    }
    parts += (b'],"usage":', json.dumps(usage).encode(), b"}")
    return PiecesResponse(parts, media_type="application/json")


class PiecesResponse(Response):
    """A body sent as the pieces it is made of, with its Content-Length."""

    def __init__(self, pieces: list[bytes], media_type: str) -> None:
        super().__init__(b"", media_type=media_type)
        self.pieces = pieces
        self.headers["content-length"] = str(sum(map(len, pieces)))

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        for i, piece in enumerate(self.pieces):
            more = i < len(self.pieces) - 1
            await send({"type": "http.response.body", "body": piece, "more_body": more})


async def files(request: Request) -> Response:
    name = request.path_params["name"].removesuffix(".png")
    data = request.app.state.files.get(name)
    if data is None:
        return openai_error(404, "No such file.", code="not_found")
    return Response(data, media_type="image/png")


async def models(request: Request) -> Response:
    denied = _unauthorized(request)
    if denied is not None:
        return denied
    ids = ["gpt-4o-mini", "gpt-image-1", "dall-e-3"]
    return JSONResponse(
        {
            "object": "list",
            "data": [{"id": i, "object": "model", "created": 0, "owned_by": "fake"} for i in ids],
        }
    )


async def health(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


# --- the app ---------------------------------------------------------------------------


def create_fake_openai(
    *,
    text_latency: float = 0.0,
    image_latency: float = 0.0,
    image_bytes: int = 0,
    api_key: str | None = DEFAULT_API_KEY,
    outline_pages: int = 8,
    image_width: int = 1080,
    image_height: int = 1440,
) -> Starlette:
    """A fresh fake upstream. `image_bytes` is the PNG size to aim for (0: a small image)."""
    app = Starlette(
        routes=[
            Route("/v1/chat/completions", chat_completions, methods=["POST"]),
            Route("/v1/images/generations", images_generations, methods=["POST"]),
            Route("/v1/images/edits", images_edits, methods=["POST"]),
            Route("/v1/models", models, methods=["GET"]),
            Route("/files/{name}", files, methods=["GET"]),
            Route("/health", health, methods=["GET"]),
        ]
    )
    state = app.state
    state.api_key = api_key
    state.text_latency = text_latency
    state.image_latency = image_latency
    state.outline_pages = outline_pages
    state.edit_answer = None
    state.png = fake_png(image_width, image_height, image_bytes)
    state.requests = []
    state.chat_requests = 0
    state.image_requests = 0
    state.text_in_flight = 0
    state.max_text_in_flight = 0
    state.images_in_flight = 0
    state.max_images_in_flight = 0
    state.fail_next_images = []
    state.fail_next_chat = []
    state.retry_after = 1
    state.content_policy = False
    state.reject_response_format_for_gpt_image = True
    state.chat_image_style = "images_field"
    state.serial = 0
    state.files = OrderedDict()
    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Run the fake OpenAI-compatible upstream.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=18999)
    parser.add_argument("--text-latency", type=float, default=0.0, help="seconds per chat call")
    parser.add_argument("--image-latency", type=float, default=0.0, help="seconds per image call")
    parser.add_argument("--image-bytes", type=int, default=0, help="PNG size to aim for")
    parser.add_argument("--image-width", type=int, default=1080)
    parser.add_argument("--image-height", type=int, default=1440)
    parser.add_argument("--outline-pages", type=int, default=8)
    parser.add_argument(
        "--api-key", default=DEFAULT_API_KEY, help="expected Bearer key; '' disables the check"
    )
    parser.add_argument("--log-level", default="warning")
    args = parser.parse_args(argv)

    import uvicorn

    app = create_fake_openai(
        text_latency=args.text_latency,
        image_latency=args.image_latency,
        image_bytes=args.image_bytes,
        api_key=args.api_key or None,
        outline_pages=args.outline_pages,
        image_width=args.image_width,
        image_height=args.image_height,
    )
    print(
        f"fake OpenAI upstream on http://{args.host}:{args.port}/v1 "
        f"(PNG {len(app.state.png.png(0))} bytes)",
        flush=True,
    )
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, access_log=False)


if __name__ == "__main__":
    main()
