"""An OpenAI-compatible upstream: chat completions for text, the Images API for pages.

Works with api.openai.com and with the many relays that speak the same wire format.
`base_url` is the prefix in front of `/chat/completions` and `/images/...`, taken
as given (only a trailing `/` is dropped): `https://api.openai.com/v1`, but also
`https://relay.example.com/openai/v1` or a relay that has no `/v1` at all. Nothing is
appended, because relays differ in where they put the version.

Images come one of two ways (`image_endpoint`):

- `images`: the Images API, `/images/generations`, or `/images/edits` when there are
  reference images, sent as multipart files or (`edits_format: json`, the shape of
  OpenAI's JSON edits) as `images: [{"image_url": "data:..."}]`.
- `chat`: an image model behind `/chat/completions` (Gemini image models through
  OpenRouter or new-api/one-api relays). The prompt and the references go out as one
  user message; the image comes back in `message.images[]` (OpenRouter), as image parts
  of `message.content`, or as markdown / a bare data or http URL in the text (relays).
  `extract_chat_image` knows every shape. `n` > 1 makes n concurrent calls.

Translation lives in the module-level functions (`build_chat_payload`,
`parse_chat_response`, `parse_stream_line`, `size_for`, `build_generation_payload`,
`parse_images_response`, `build_chat_image_payload`, `extract_chat_image`, ...);
`OpenAIProvider` only sends.

Images arrive as base64 inside JSON (~2.7 MB for a 2 MB PNG) and the gateway's CPU
budget is 15 ms per stored image. So the body is read once (chunks joined here, not
by `aread()`), `parse_images_body` cuts the base64 strings out by byte search and gives
only the small rest to the JSON parser, and each image is decoded once straight from
the body: no Pillow, no intermediate copies (base64 with SIMD `pybase64`). Answers the byte
search does not recognise go through `json.loads`. The parse runs in a worker thread, never
on the event loop; `inkgate serve` sets glibc's malloc up so the thread's multi-MB buffers
do not cost page faults each time (see `gateway.cli.tune_allocator`, BENCHMARKS.md).
"""

from __future__ import annotations

import asyncio
import binascii
import contextlib
import functools
import json
import logging
import math
import re
from collections.abc import AsyncIterator
from typing import Any, ClassVar, Literal
from urllib.parse import unquote_to_bytes, urlsplit

import anyio
import httpx
import pybase64
from pydantic import Field, SecretStr, field_validator

from gateway.errors import (
    ContentPolicyViolation,
    GatewayError,
    InvalidRequest,
    UpstreamError,
)
from providers.base import (
    ImageData,
    ImageProvider,
    ImageRequest,
    ProviderOptions,
    TextProvider,
    decode_base64,
)
from providers.http import joined, read_limited, read_limited_parts, upstream_call
from providers.registry import register

log = logging.getLogger("inkgate.providers.openai")

DEFAULT_TEXT_MODEL = "gpt-4o-mini"
DEFAULT_IMAGE_MODEL = "gpt-image-1"

# OpenAI (and Azure) error codes that mean "the safety system refused this".
_POLICY_CODES = frozenset(
    {"content_policy_violation", "moderation_blocked", "content_filter", "safety_violation"}
)

_GPT_IMAGE_SIZES = {"portrait": "1024x1536", "landscape": "1536x1024", "square": "1024x1024"}
_DALL_E_3_SIZES = {"portrait": "1024x1792", "landscape": "1792x1024", "square": "1024x1024"}

_EXTENSIONS = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp", "image/gif": "gif"}

_RATIO = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*:\s*(\d+(?:\.\d+)?)\s*$")
_SIZE = re.compile(r"^\s*(\d+)\s*x\s*(\d+)\s*$", re.IGNORECASE)


class OpenAIOptions(ProviderOptions):
    """Options of an `openai` provider entry in the config file."""

    base_url: str = Field(
        default="https://api.openai.com/v1",
        description="Prefix in front of /chat/completions, used as given (no /v1 is appended).",
    )
    api_key: SecretStr | None = Field(default=None, description="Sent as a Bearer token.")
    text_model: str | None = Field(default=None, description=f"Default {DEFAULT_TEXT_MODEL}.")
    image_model: str | None = Field(default=None, description=f"Default {DEFAULT_IMAGE_MODEL}.")
    image_endpoint: Literal["images", "chat"] = Field(
        default="images",
        description="images: the Images API (/images/generations, /images/edits with "
        "references); chat: an image model behind /chat/completions.",
    )
    edits_format: Literal["multipart", "json"] = Field(
        default="multipart",
        description="How /images/edits gets references: multipart files, or JSON "
        "images[].image_url data URLs.",
    )
    chat_modalities: bool = Field(
        default=False,
        description='Chat-image mode: also send modalities ["image", "text"] (OpenRouter).',
    )
    quality: str | None = Field(
        default=None, description="Sent as quality on Images API requests when set."
    )
    response_format: Literal["b64_json", "url"] | None = Field(
        default=None,
        description="None: b64_json, except for gpt-image models, which reject the field.",
    )
    image_size: str | None = Field(
        default=None,
        description="Send this size whatever the aspect ratio (for upstreams with one size).",
    )
    temperature: float | None = Field(
        default=None, ge=0, le=2, description="Default temperature of text calls that give none."
    )
    max_tokens: int | None = Field(
        default=None, gt=0, description="Default max_tokens of text calls that give none."
    )
    extra_headers: dict[str, str] = Field(
        default_factory=dict, description="Sent with every upstream call."
    )
    timeout: float | None = Field(
        default=None, gt=0, description="Seconds per call; None keeps the gateway's default."
    )
    max_download_bytes: int = Field(
        default=30 * 1024 * 1024, gt=0, description="Largest image accepted, per image."
    )

    @field_validator("base_url")
    @classmethod
    def _check_base_url(cls, value: str) -> str:
        value = value.strip().rstrip("/")
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value


# --- translation: pure functions -------------------------------------------------------


def build_chat_payload(
    messages: list[dict],
    model: str,
    temperature: float | None = None,
    max_tokens: int | None = None,
    stream: bool = False,
) -> dict:
    """The JSON body of `POST /chat/completions`. Unset sampling options are left out."""
    payload: dict[str, Any] = {"model": model, "messages": messages, "stream": stream}
    if temperature is not None:
        payload["temperature"] = temperature
    if max_tokens is not None:
        payload["max_tokens"] = max_tokens
    return payload


def answer_error(data: Any, provider: str = "upstream") -> GatewayError | None:
    """The gateway error for an OpenAI error object (`{"error": {...}}`) in `data`, else None.

    A safety refusal becomes `ContentPolicyViolation`, anything else `UpstreamError`.
    """
    err = data.get("error") if isinstance(data, dict) else None
    if not err:
        return None
    code = kind = ""
    if isinstance(err, dict):
        code = str(err.get("code") or "")
        kind = str(err.get("type") or "")
        message = str(err.get("message") or code or kind or "unknown error")
    else:
        message = str(err)
    message = message[:300]
    if code in _POLICY_CODES or kind in _POLICY_CODES:
        return _refused(provider, f": {message}")
    return UpstreamError(f"Upstream provider '{provider}' returned an error: {message}")


def _refused(provider: str, detail: str) -> ContentPolicyViolation:
    return ContentPolicyViolation(f"Upstream provider '{provider}' refused the prompt{detail}")


def _content_text(content: Any) -> str:
    """Message or delta content as text: a string, or a list of text parts (some relays)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            str(part.get("text") or "")
            for part in content
            if isinstance(part, dict) and part.get("type") in ("text", "output_text")
        )
    return ""


def parse_chat_response(data: Any, provider: str = "upstream") -> str:
    """The answer text of a `chat.completion` object."""
    error = answer_error(data, provider)
    if error is not None:
        raise error
    try:
        choice = data["choices"][0]
        message = choice["message"]
    except (KeyError, IndexError, TypeError):
        raise UpstreamError(
            f"Upstream provider '{provider}' returned a chat answer without choices[0].message"
        ) from None
    text = _content_text(message.get("content")) if isinstance(message, dict) else ""
    if not text:
        refusal = message.get("refusal") if isinstance(message, dict) else None
        if refusal or choice.get("finish_reason") == "content_filter":
            detail = f": {str(refusal)[:300]}" if refusal else ""
            raise _refused(provider, detail)
        raise UpstreamError(f"Upstream provider '{provider}' returned an empty chat answer")
    return text


def parse_stream_line(line: str, provider: str = "upstream") -> str | None:
    """The text delta carried by one SSE line of a streamed chat answer.

    Returns "" for lines without text (blank separators, comments, `event:` lines, the
    role-only first chunk, the final `finish_reason` chunk) and None at `data: [DONE]`.
    """
    if not line.startswith("data:"):
        return ""
    body = line[5:].strip()
    if not body:
        return ""
    if body == "[DONE]":
        return None
    try:
        data = json.loads(body)
    except ValueError:
        raise UpstreamError(
            f"Upstream provider '{provider}' sent a malformed stream chunk"
        ) from None
    error = answer_error(data, provider)
    if error is not None:
        raise error
    choices = data.get("choices") if isinstance(data, dict) else None
    if not choices or not isinstance(choices[0], dict):
        return ""  # e.g. the trailing usage-only chunk
    choice = choices[0]
    if choice.get("finish_reason") == "content_filter":
        raise _refused(provider, " (content filter stopped the answer)")
    delta = choice.get("delta")
    return _content_text(delta.get("content")) if isinstance(delta, dict) else ""


def _model_name(model: str) -> str:
    """The bare model name: relays often prefix a vendor (`openai/gpt-image-1`)."""
    return model.rsplit("/", 1)[-1].lower()


def _is_gpt_image(model: str) -> bool:
    return "gpt-image" in _model_name(model)


def _parse_ratio(aspect_ratio: str) -> float:
    match = _RATIO.match(aspect_ratio or "")
    width, height = (float(match[1]), float(match[2])) if match else (0.0, 0.0)
    if width <= 0 or height <= 0:
        raise InvalidRequest(
            f"Invalid aspect ratio {aspect_ratio!r}; expected W:H such as 3:4",
            param="aspect_ratio",
        )
    return width / height


def _size_ratio(size: str) -> float:
    match = _SIZE.match(size)
    assert match is not None
    return int(match[1]) / int(match[2])


def size_for(model: str, aspect_ratio: str, explicit_size: str | None = None) -> str:
    """The `size` to ask `model` for.

    An explicit size wins. gpt-image and dall-e-3 get their size by orientation
    (portrait, landscape, square); dall-e-2 only knows squares; any other model gets
    the gpt-image size whose ratio is nearest.
    """
    if explicit_size:
        return explicit_size
    ratio = _parse_ratio(aspect_ratio)
    name = _model_name(model)
    if "dall-e-2" in name:
        return "1024x1024"
    if "gpt-image" in name or "dall-e-3" in name:
        sizes = _DALL_E_3_SIZES if "dall-e-3" in name else _GPT_IMAGE_SIZES
        if math.isclose(ratio, 1.0):
            return sizes["square"]
        return sizes["portrait"] if ratio < 1 else sizes["landscape"]
    return min(_GPT_IMAGE_SIZES.values(), key=lambda size: abs(math.log(ratio / _size_ratio(size))))


def response_format_for(model: str, configured: str | None) -> str | None:
    """The `response_format` to send, or None to leave the field out.

    gpt-image models always answer base64 and reject the field, so by default it is
    only sent to other models (as `b64_json`, which saves a download).
    """
    if configured is not None:
        return configured
    return None if _is_gpt_image(model) else "b64_json"


def build_generation_payload(request: ImageRequest, model: str, options: OpenAIOptions) -> dict:
    """The body of `POST /images/generations` (and the fields of `/images/edits`).

    `options.image_size` (an operator override for upstreams that accept one size)
    wins over the client's `request.size`, which wins over the aspect ratio.
    """
    payload: dict[str, Any] = {
        "model": model,
        "prompt": request.prompt,
        "n": request.n,
        "size": size_for(model, request.aspect_ratio, options.image_size or request.size),
    }
    # the client's choice wins over the operator's default
    quality = request.quality or options.quality
    if quality:
        payload["quality"] = quality
    if request.style and model.lower().startswith("dall-e-3"):  # only dall-e-3 has styles
        payload["style"] = request.style
    response_format = response_format_for(model, options.response_format)
    if response_format is not None:
        payload["response_format"] = response_format
    return payload


def build_edit_files(
    references: tuple[ImageData, ...] | list[ImageData], mask: ImageData | None = None
) -> list[tuple]:
    """The multipart file parts of `POST /images/edits`: `image` for one, `image[]` for
    several, and `mask` when there is one."""
    field = "image" if len(references) == 1 else "image[]"
    files = [
        (field, (f"ref{i}.{_EXTENSIONS.get(ref.mime, 'png')}", ref.data, ref.mime))
        for i, ref in enumerate(references)
    ]
    if mask is not None:
        files.append(("mask", (f"mask.{_EXTENSIONS.get(mask.mime, 'png')}", mask.data, mask.mime)))
    return files


def build_edit_fields(payload: dict) -> dict[str, str]:
    """The multipart text fields of `POST /images/edits`, from a generation payload."""
    return {key: str(value) for key, value in payload.items()}


def data_url(image: ImageData) -> str:
    """`image` as a `data:` URL (pybase64: several times faster than `base64`)."""
    return f"data:{image.mime};base64,{pybase64.b64encode(image.data).decode('ascii')}"


def build_edit_json(
    payload: dict,
    references: tuple[ImageData, ...] | list[ImageData],
    mask: ImageData | None = None,
) -> dict:
    """The JSON body of `POST /images/edits` (`edits_format: json`), from a generation payload.

    OpenAI's JSON edits take `images`, a list of image references `{"image_url": URL}` or
    `{"file_id": ...}`, where the URL may be a `data:` URL; not the multipart `image` field.
    """
    body = {**payload, "images": [{"image_url": data_url(ref)} for ref in references]}
    if mask is not None:
        body["mask"] = {"image_url": data_url(mask)}
    return body


def encode_json(body: dict) -> bytes:
    """A request body as compact JSON bytes (may hold megabytes of base64: run in a thread)."""
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()


def _encode_edit_json(
    payload: dict, references: tuple[ImageData, ...], mask: ImageData | None
) -> bytes:
    return encode_json(build_edit_json(payload, references, mask))


def chat_image_prompt(request: ImageRequest, explicit_size: str | None = None) -> str:
    """The text sent to a chat image model: the prompt plus the aspect ratio (and size).

    Chat image models take no `size` field, so the shape is asked for in words.
    """
    _parse_ratio(request.aspect_ratio)  # reject a malformed ratio like the Images API path
    hint = f"\n\nAspect ratio: {request.aspect_ratio.strip()}"
    size = explicit_size or request.size
    if size:
        hint += f"\nSize: {size.strip()}"
    return request.prompt + hint


def build_chat_image_payload(request: ImageRequest, model: str, options: OpenAIOptions) -> dict:
    """The body of `POST /chat/completions` for a chat image model.

    One user message: the prompt with the aspect-ratio hint as a text part, then one
    `image_url` part (a data URL) per reference, most important first. `modalities` is
    only sent when `chat_modalities` is on: OpenRouter needs it, some relays reject it.
    """
    content: list[dict] = [{"type": "text", "text": chat_image_prompt(request, options.image_size)}]
    content += [
        {"type": "image_url", "image_url": {"url": data_url(ref)}} for ref in request.references
    ]
    payload: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "user", "content": content}],
        "stream": False,
    }
    if options.chat_modalities:
        payload["modalities"] = ["image", "text"]
    return payload


_IMAGE_PART_TYPES = frozenset({"image_url", "output_image", "image"})
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".gif")
_MD_IMAGE = re.compile(
    r"!\[[^\]\n]{0,1000}\]\(\s*<?(data:image/[\w.+-]+;base64,[A-Za-z0-9+/=_-]+|https?://[^\s)>]+)"
)
_BARE_DATA = re.compile(r"data:image/[\w.+-]+;base64,[A-Za-z0-9+/=_-]{16,}")
_BARE_URL = re.compile(r"https?://[^\s<>\"'()\[\]]+")
# Gemini finish reasons passed through by relays, and OpenAI's, that mean a safety block.
_SAFETY_FINISH = frozenset(
    {"content_filter", "safety", "image_safety", "prohibited_content", "blocklist", "spii"}
)


def _usable_url(value: Any) -> str | None:
    if isinstance(value, dict):
        value = value.get("url")
    if isinstance(value, str):
        value = value.strip()
        if value.startswith(("data:", "http://", "https://")):
            return value
    return None


def _image_item_url(item: Any) -> str | None:
    """The URL of one image item or content part: a string, `{"image_url": {"url"}}`,
    `{"image_url": "..."}`, `{"url": "..."}` or `{"b64_json": ...}`."""
    if not isinstance(item, dict):
        return _usable_url(item)
    url = _usable_url(item.get("image_url")) or _usable_url(item.get("url"))
    if url is None and isinstance(item.get("b64_json"), str) and item["b64_json"]:
        mime = item.get("mime_type") or item.get("media_type") or "image/png"
        url = f"data:{mime};base64,{item['b64_json']}"
    return url


def _images_in_text(text: str) -> list[str]:
    """Image URLs in answer text, best kind first: markdown data URLs, markdown http URLs,
    bare data URLs, bare http URLs that end in an image extension or fill their line."""
    if "data:" not in text and "http" not in text:
        return []
    markdown = _MD_IMAGE.findall(text)
    for found in (
        [u for u in markdown if u.startswith("data:")],
        [u for u in markdown if not u.startswith("data:")],
        _BARE_DATA.findall(text),
    ):
        if found:
            return found
    lines = {line.strip() for line in text.splitlines()}
    found = []
    for match in _BARE_URL.findall(text):
        url = match.rstrip(".,;:!?")
        if urlsplit(url).path.lower().endswith(_IMAGE_SUFFIXES) or url in lines:
            found.append(url)
    return found


def extract_chat_image(message: dict) -> list[str]:
    """The images of a chat answer's `message`, as data URLs or http(s) URLs.

    The first place that has any wins: `message.images[]` (OpenRouter), then image parts
    of a list `content` (`image_url`, `output_image`, `image`, with `image_url` or
    `b64_json`), then the text: markdown `![..](data:...)`, markdown `![..](https://...)`,
    a bare `data:image/...;base64,...`, a bare http(s) URL. Empty when there is none.
    """
    if not isinstance(message, dict):
        return []
    images = message.get("images")
    if isinstance(images, list):
        found = [url for url in map(_image_item_url, images) if url]
        if found:
            return found
    content = message.get("content")
    if isinstance(content, list):
        found = [
            url
            for part in content
            if isinstance(part, dict) and part.get("type") in _IMAGE_PART_TYPES
            if (url := _image_item_url(part))
        ]
        if found:
            return found
    return _images_in_text(_content_text(content))


def decode_data_url(url: str, provider: str = "upstream") -> bytes:
    """The bytes of a `data:` URL (base64 or percent-encoded)."""
    header, _, payload = url.partition(",")
    if ";base64" in header.lower():
        return _b64decode(payload, provider)
    return unquote_to_bytes(payload)


def parse_chat_image_response(data: Any, provider: str = "upstream") -> list[str | bytes]:
    """The images of a chat image model's answer: bytes for data URLs, http URLs (str)
    to download.

    No image: `ContentPolicyViolation` for a refusal or a safety finish reason, else a
    non-retryable `UpstreamError` quoting the start of what the model said instead.
    """
    error = answer_error(data, provider)
    if error is not None:
        raise error
    try:
        choice = data["choices"][0]
        message = choice["message"]
    except (KeyError, IndexError, TypeError):
        raise UpstreamError(
            f"Upstream provider '{provider}' returned a chat answer without choices[0].message"
        ) from None
    urls = extract_chat_image(message) if isinstance(message, dict) else []
    if urls:
        return [decode_data_url(u, provider) if u.startswith("data:") else u for u in urls]
    text = _content_text(message.get("content")) if isinstance(message, dict) else ""
    refusal = message.get("refusal") if isinstance(message, dict) else None
    finish = str(choice.get("finish_reason") or "").lower() if isinstance(choice, dict) else ""
    if refusal or finish in _SAFETY_FINISH:
        raise _refused(provider, f": {str(refusal or text or finish)[:200]}")
    said = " ".join(text.split())[:200]
    detail = f"; it said: {said}" if said else " and without text"
    raise UpstreamError(
        f"Upstream provider '{provider}' answered without an image{detail}",
        code="upstream_no_image",
        retryable=False,
    )


def parse_chat_image_body(content: bytes, provider: str = "upstream") -> list[str | bytes]:
    """`parse_chat_image_response` on the raw body."""
    return parse_chat_image_response(_parse_json(content, provider, "chat answer"), provider)


def parse_images_response(data: Any, provider: str = "upstream") -> list[str | bytes]:
    """The images of an Images API answer: bytes for `b64_json`, a URL (str) to download.

    A `data:` URL in the `url` field (some relays do that) is decoded as well.
    """
    error = answer_error(data, provider)
    if error is not None:
        raise error
    items = data.get("data") if isinstance(data, dict) else None
    images: list[str | bytes] = []
    for item in items if isinstance(items, list) else ():
        if not isinstance(item, dict):
            continue
        b64 = item.get("b64_json")
        url = item.get("url")
        if isinstance(b64, bytes) and b64:  # decoded already (`parse_images_body`)
            images.append(b64)
        elif isinstance(b64, str) and b64:
            images.append(_b64decode(b64, provider))
        elif isinstance(url, str) and url.startswith("data:"):
            images.append(_b64decode(url.partition(",")[2], provider))
        elif isinstance(url, str) and url:
            images.append(url)
    if not images:
        raise UpstreamError(
            f"Upstream provider '{provider}' answered without an image "
            "(no data[].b64_json or data[].url)"
        )
    return images


def _b64decode(text: str, provider: str) -> bytes:
    try:
        return decode_base64(text)
    except (binascii.Error, ValueError):
        message = f"Upstream provider '{provider}' sent invalid base64 image data"
        raise UpstreamError(message) from None


def _parse_json(content: bytes, provider: str, what: str) -> Any:
    try:
        return json.loads(content)
    except ValueError:
        message = f"Upstream provider '{provider}' returned malformed JSON ({what})"
        raise UpstreamError(message) from None


# Chat answers smaller than this (no inline image) are parsed on the event loop.
_INLINE_PARSE_BYTES = 64 * 1024

_B64_KEY = b'"b64_json"'
_JSON_SPACE = b" \t\r\n"


def cut_b64_values(content: bytes) -> tuple[bytes, list[memoryview]] | None:
    """Cut the `b64_json` strings out of a raw Images API answer.

    Returns the JSON with the i-th value replaced by the string "i", and views of the
    values (no copy), as they are in the body: a value with escapes (`\\/`) keeps them
    (`_restore_b64_values` then gives up). None when there is none.
    """
    view = memoryview(content)
    parts: list[bytes | memoryview] = []
    values: list[memoryview] = []
    pos, size = 0, len(content)
    while (key := content.find(_B64_KEY, pos)) >= 0:
        i = key + len(_B64_KEY)
        while i < size and content[i] in _JSON_SPACE:
            i += 1
        if i >= size or content[i] != ord(":"):
            pos = i  # the text "b64_json" as a value, not a key
            continue
        i += 1
        while i < size and content[i] in _JSON_SPACE:
            i += 1
        if i >= size or content[i] != ord('"'):
            return None
        start = i + 1
        end = content.find(b'"', start)  # at an escaped quote, the decode below fails
        if end < 0:
            return None
        parts += (view[pos:start], b"%d" % len(values))
        values.append(view[start:end])
        pos = end
    if not values:
        return None
    parts.append(view[pos:])
    return b"".join(parts), values


def parse_images_body(content: bytes, provider: str = "upstream") -> list[str | bytes]:
    """`parse_images_response` on the raw body, without running the JSON parser over base64."""
    cut = cut_b64_values(content)
    if cut is not None:
        skeleton, values = cut
        data = _restore_b64_values(skeleton, values)
        if data is not None:
            return parse_images_response(data, provider)
    return parse_images_response(_parse_json(content, provider, "images answer"), provider)


def _decode_raw_value(value: memoryview) -> bytes | None:
    """A `b64_json` value as it is in the body, decoded; None when it has JSON escapes.

    Strict first (`decode_base64`): a value with a backslash never decodes strictly,
    so only when that fails is it searched for one (a 3 MB scan less per image)."""
    try:
        return pybase64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        pass
    if b"\\" in bytes(value):  # a copy, on this rare path only
        return None  # escapes: the JSON parser reads the value
    try:
        return decode_base64(value)  # e.g. raw line breaks: skipped
    except (binascii.Error, ValueError):
        return None  # the whole body's parse reports it


def _parse_images_parts(parts: list[bytes], provider: str) -> list[str | bytes]:
    return parse_images_body(joined(parts), provider)


def _parse_chat_image_parts(parts: list[bytes], provider: str) -> list[str | bytes]:
    return parse_chat_image_body(joined(parts), provider)


def _restore_b64_values(skeleton: bytes, values: list[memoryview]) -> dict | None:
    """The parsed skeleton with each placeholder swapped for its decoded value; None
    unless every value was found, in order, at `data[].b64_json`, and decoded (anything
    else: parse the whole body)."""
    try:
        data = json.loads(skeleton)
    except ValueError:
        return None
    items = data.get("data") if isinstance(data, dict) else None
    found = 0
    for item in items if isinstance(items, list) else ():
        if isinstance(item, dict) and "b64_json" in item:
            if item["b64_json"] != str(found) or found >= len(values):
                return None
            decoded = _decode_raw_value(values[found])
            if decoded is None:
                return None
            item["b64_json"] = decoded
            found += 1
    return data if found == len(values) else None


# --- sending ---------------------------------------------------------------------------


@register("openai")
class OpenAIProvider(TextProvider, ImageProvider):
    """Chat completions and the Images API of an OpenAI-compatible upstream."""

    Options: ClassVar[type[ProviderOptions]] = OpenAIOptions
    options: OpenAIOptions

    def __init__(self, name: str, options: ProviderOptions, http: httpx.AsyncClient) -> None:
        super().__init__(name, options, http)
        assert isinstance(options, OpenAIOptions)
        key = options.api_key.get_secret_value() if options.api_key else ""
        self._secret = key
        self._headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._headers.update(options.extra_headers)
        self._timeout: Any = (
            options.timeout if options.timeout is not None else httpx.USE_CLIENT_DEFAULT
        )
        self._origin = httpx.URL(options.base_url).copy_with(path="/", query=None, fragment=None)
        self._urls: dict[str, httpx.URL] = {}

    def _url(self, path: str) -> httpx.URL:
        """`{base_url}{path}`, parsed once per path (httpx parses a string on every call)."""
        url = self._urls.get(path)
        if url is None:
            url = self._urls[path] = httpx.URL(f"{self.options.base_url}{path}")
        return url

    async def list_models(self) -> list[str] | None:
        """`GET {base}/models`: the ids the API (or relay) offers."""
        with self._upstream():
            response = await self.http.get(
                self._url("/models"), headers=self._headers, timeout=self._timeout
            )
            response.raise_for_status()
        try:
            return [str(item["id"]) for item in response.json().get("data", [])]
        except (ValueError, TypeError, KeyError, AttributeError):
            raise UpstreamError(
                f"Upstream provider '{self.name}' answered /models with an unexpected body",
                retryable=False,
            ) from None

    def configured_models(self) -> dict[str, str]:
        return {
            "text": self.options.text_model or DEFAULT_TEXT_MODEL,
            "image": self.options.image_model or DEFAULT_IMAGE_MODEL,
        }

    def _upstream(self) -> contextlib.AbstractContextManager[None]:
        return upstream_call(self.name, self._secret)

    def _check_answer(self, response: httpx.Response) -> None:
        """Raise for an error answer; needs the body read. Safety refusals by code first."""
        if response.is_success:
            return
        if response.status_code < 500 and response.content[:1] == b"{":
            with contextlib.suppress(ValueError):
                error = answer_error(response.json(), self.name)
                if isinstance(error, ContentPolicyViolation):
                    raise error
        response.raise_for_status()

    def _sampling(
        self, temperature: float | None, max_tokens: int | None
    ) -> tuple[float | None, int | None]:
        """The caller's sampling options, else the configured defaults."""
        if temperature is None:
            temperature = self.options.temperature
        if max_tokens is None:
            max_tokens = self.options.max_tokens
        return temperature, max_tokens

    async def chat(
        self,
        messages: list[dict],
        *,
        model: str | None = None,
        temperature: float | None = None,
        max_tokens: int | None = None,
    ) -> str:
        model = model or self.options.text_model or DEFAULT_TEXT_MODEL
        temperature, max_tokens = self._sampling(temperature, max_tokens)
        payload = build_chat_payload(messages, model, temperature, max_tokens, stream=False)
        with self._upstream():
            response = await self.http.post(
                self._url("/chat/completions"),
                json=payload,
                headers=self._headers,
                timeout=self._timeout,
            )
            self._check_answer(response)
            data = _parse_json(response.content, self.name, "chat completion")
            return parse_chat_response(data, self.name)

    async def stream_chat(
        self,
        messages: list[dict],
        *,
        model: str | None = None,
        temperature: float | None = None,
        max_tokens: int | None = None,
    ) -> AsyncIterator[str]:
        model = model or self.options.text_model or DEFAULT_TEXT_MODEL
        temperature, max_tokens = self._sampling(temperature, max_tokens)
        payload = build_chat_payload(messages, model, temperature, max_tokens, stream=True)
        with self._upstream():
            async with self.http.stream(
                "POST",
                self._url("/chat/completions"),
                json=payload,
                headers=self._headers,
                timeout=self._timeout,
            ) as response:
                if not response.is_success:
                    await response.aread()
                    self._check_answer(response)
                if response.headers.get("content-type", "").startswith("application/json"):
                    # A relay that ignores `stream: true` answers one chat.completion.
                    await response.aread()
                    data = _parse_json(response.content, self.name, "chat completion")
                    yield parse_chat_response(data, self.name)
                    return
                async for line in response.aiter_lines():
                    delta = parse_stream_line(line, self.name)
                    if delta is None:
                        break
                    if delta:
                        yield delta

    async def generate(self, request: ImageRequest) -> list[ImageData]:
        model = request.model or self.options.image_model or DEFAULT_IMAGE_MODEL
        n = max(1, request.n)
        if self.options.image_endpoint == "chat":
            items = await self._generate_by_chat(request, model)
        else:
            items = await self._generate_by_images_api(request, model)
        with self._upstream():
            images = [
                self._image(item if isinstance(item, bytes) else await self._download(item))
                for item in items[:n]
            ]
        log.debug("provider %s: %d image(s) from %s", self.name, len(images), model)
        return images

    async def _generate_by_images_api(self, request: ImageRequest, model: str) -> list[str | bytes]:
        payload = build_generation_payload(request, model, self.options)
        body: dict[str, Any]
        if not request.references:
            path, body = "/images/generations", {"json": payload}
        elif self.options.edits_format == "json":
            # The reference data URLs are megabytes of base64: built off the event loop.
            path = "/images/edits"
            encode = functools.partial(_encode_edit_json, payload, request.references, request.mask)
            body = {"content": await anyio.to_thread.run_sync(encode)}
        else:
            path = "/images/edits"
            body = {
                "data": build_edit_fields(payload),
                "files": build_edit_files(request.references, request.mask),
            }
        # base64 is 4/3 of the image, plus room for the JSON around it.
        limit = max(1, request.n) * (self.options.max_download_bytes * 4 // 3) + (1 << 20)
        parts = await self._post_for_images(path, body, limit, "images answer")
        with self._upstream():
            # base64 of several MB: joined and decoded in a worker thread, never on the loop
            return await anyio.to_thread.run_sync(_parse_images_parts, parts, self.name)

    async def _generate_by_chat(self, request: ImageRequest, model: str) -> list[str | bytes]:
        """`n` calls at once (a chat answer holds one image); their images in call order."""
        if request.mask is not None:
            raise InvalidRequest(
                f"Provider '{self.name}' reaches its image model through chat, which takes "
                "no mask; describe the change in the prompt instead",
                param="mask",
            )

        def build() -> bytes:
            return encode_json(build_chat_image_payload(request, model, self.options))

        body = await anyio.to_thread.run_sync(build) if request.references else build()
        limit = self.options.max_download_bytes * 4 // 3 + (1 << 20)

        async def call() -> list[str | bytes]:
            parts = await self._post_for_images(
                "/chat/completions", {"content": body}, limit, "chat image answer"
            )
            with self._upstream():
                if sum(map(len, parts)) < _INLINE_PARSE_BYTES:
                    return parse_chat_image_body(joined(parts), self.name)
                return await anyio.to_thread.run_sync(_parse_chat_image_parts, parts, self.name)

        if request.n <= 1:
            return await call()
        tasks = [asyncio.ensure_future(call()) for _ in range(request.n)]
        try:
            results = await asyncio.gather(*tasks)
        except BaseException:
            # One failure fails the request: stop the other calls instead of paying for them.
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        return [item for items in results for item in items]

    async def _post_for_images(
        self, path: str, body: dict[str, Any], limit: int, what: str
    ) -> list[bytes]:
        """POST an image request and return the raw answer (at most `limit` bytes), in
        the pieces it was received in."""
        headers = self._headers
        if "content" in body:  # pre-encoded JSON
            headers = {"Content-Type": "application/json", **self._headers}
        with self._upstream():
            async with self.http.stream(
                "POST", self._url(path), headers=headers, timeout=self._timeout, **body
            ) as response:
                if not response.is_success:
                    await response.aread()
                    self._check_answer(response)
                return await read_limited_parts(response, limit, self._too_large(what, limit))

    async def _read_body(self, response: httpx.Response, limit: int, what: str) -> bytes:
        return await read_limited(response, limit, self._too_large(what, limit))

    def _image(self, data: bytes) -> ImageData:
        try:
            return ImageData.from_bytes(data)
        except ValueError:
            raise UpstreamError(
                f"Upstream provider '{self.name}' returned data that is not a PNG, JPEG, WebP "
                "or GIF image"
            ) from None

    async def _download(self, url: str) -> bytes:
        """Fetch an image URL from an answer, refusing non-images and oversize bodies."""
        target = self._origin.join(url)
        if target.scheme not in ("http", "https"):
            raise UpstreamError(f"Upstream provider '{self.name}' returned an unusable image URL")
        # The API key only goes back to the upstream itself, never to a CDN.
        same_origin = (target.scheme, target.host, target.port) == (
            self._origin.scheme,
            self._origin.host,
            self._origin.port,
        )
        headers = self._headers if same_origin else None
        async with self.http.stream("GET", target, headers=headers, timeout=self._timeout) as resp:
            if not resp.is_success:
                raise UpstreamError(
                    f"Upstream provider '{self.name}': downloading the generated image failed "
                    f"({resp.status_code})"
                )
            content_type = resp.headers.get("content-type", "")
            if not content_type.lower().startswith("image/"):
                raise UpstreamError(
                    f"Upstream provider '{self.name}': the generated image URL served "
                    f"{content_type.split(';')[0] or 'no content type'}, not an image"
                )
            return await self._read_body(resp, self.options.max_download_bytes, "generated image")

    def _too_large(self, what: str, limit: int) -> str:
        return (
            f"Upstream provider '{self.name}': the {what} is larger than the limit "
            f"({limit} bytes, from max_download_bytes)"
        )
