"""Google's Gemini API (generativelanguage.googleapis.com), native wire format: text and images.

    POST {base_url}/v1beta/models/{model}:generateContent
    POST {base_url}/v1beta/models/{model}:streamGenerateContent?alt=sse

The key goes in the `x-goog-api-key` header, never in the URL (URLs end up in logs).
Bodies use the camelCase field names of the REST reference (`systemInstruction`,
`inlineData`, `mimeType`, `generationConfig`, `responseModalities`, `imageConfig`).

Translation lives in the module-level functions (`build_contents`, `build_text_payload`,
`aspect_ratio_for`, `build_image_payload`, `parse_text_response`, `parse_stream_line`,
`parse_stream_chunk`, `pick_image_part`, `parse_image_response`, `image_from_body`,
`answer_error`, `parse_retry_delay`); `GeminiProvider` only sends.

Choices:

- An `image_url` part that is not a `data:` URL is left out (logged), not fetched: the
  contract says images in messages are data URLs, and a provider never fetches a
  client-supplied URL.
- Gemini draws one image per call, so `request.n` > 1 makes n concurrent calls with the
  same body; the first failure (in call order) is raised once all have finished.
- A refusal (`promptFeedback.blockReason`, or a blocking `finishReason` such as
  IMAGE_SAFETY or NO_IMAGE) is `GeminiBlocked`, a `ContentPolicyViolation`: never retried.
  A 200 answer with no image and no such reason is a non-retryable `UpstreamError`.
- Image answers are several MB of base64 inside JSON: the body is read once, then parsed
  and decoded in one worker thread (`image_from_body`); request bodies that carry images
  are serialised in a worker thread as well.
"""

from __future__ import annotations

import asyncio
import binascii
import contextlib
import json
import logging
import math
import re
from collections.abc import AsyncIterator
from typing import Any, ClassVar, Literal
from urllib.parse import unquote_to_bytes

import anyio
import httpx
import pybase64
from pydantic import Field, SecretStr, field_validator

from gateway.errors import (
    ContentPolicyViolation,
    GatewayError,
    InvalidRequest,
    RateLimited,
    UpstreamError,
)
from providers.base import (
    ImageData,
    ImageProvider,
    ImageRequest,
    ProviderOptions,
    TextProvider,
    decode_base64,
    message_text,
)
from providers.http import read_limited, upstream_call
from providers.registry import register

log = logging.getLogger("inkgate.providers.gemini")

DEFAULT_BASE_URL = "https://generativelanguage.googleapis.com"
DEFAULT_TEXT_MODEL = "gemini-2.5-flash"
DEFAULT_IMAGE_MODEL = "gemini-2.5-flash-image"

# What `imageConfig.aspectRatio` accepts.
SUPPORTED_ASPECT_RATIOS = (
    "1:1",
    "2:3",
    "3:2",
    "3:4",
    "4:3",
    "4:5",
    "5:4",
    "9:16",
    "16:9",
    "21:9",
)

# `finishReason` values that mean "refused" (no point in asking again), with a hint.
BLOCKING_FINISH_REASONS = {
    "SAFETY": "flagged by the safety filters",
    "PROHIBITED_CONTENT": "prohibited content",
    "BLOCKLIST": "contains a blocklisted term",
    "SPII": "contains sensitive personal information",
    "RECITATION": "too close to existing material",
    "IMAGE_SAFETY": "the image was flagged by the safety filters",
    "IMAGE_PROHIBITED_CONTENT": "the image has prohibited content",
    "IMAGE_RECITATION": "the image is too close to existing material",
    "IMAGE_OTHER": "image generation stopped for another reason",
    "NO_IMAGE": "the model drew no image for this prompt",
}

# An image answer is ~4/3 of the image plus a little JSON; a 4K PNG is ~25 MB.
MAX_ANSWER_BYTES = 96 * 1024 * 1024

_RATIO = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*:\s*(\d+(?:\.\d+)?)\s*$")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)s\s*$")
_RETRY_INFO = "type.googleapis.com/google.rpc.RetryInfo"
_ROLES = {"user": "user", "assistant": "model"}


class GeminiBlocked(ContentPolicyViolation):
    """Gemini refused: `reason` is its enum string (`IMAGE_SAFETY`, `NO_IMAGE`, ...).

    A `ContentPolicyViolation` (HTTP 400, `content_policy_violation`), never retried.
    """

    def __init__(self, reason: str, *, what: str = "image", said: str = "") -> None:
        self.reason = reason
        message = f"Gemini refused the {what} ({reason})"
        hint = BLOCKING_FINISH_REASONS.get(reason)
        if hint:
            message += f": {hint}"
        if said:
            message += f"; the model said: {_short(said)}"
        super().__init__(message)


class GeminiOptions(ProviderOptions):
    """Options of a `gemini` provider entry in the config file."""

    base_url: str = Field(
        default=DEFAULT_BASE_URL,
        description="API root; /v1beta/models/... is appended (a trailing /v1beta is accepted).",
    )
    api_key: SecretStr | None = Field(
        default=None, description="Gemini API key, sent as the x-goog-api-key header."
    )
    text_model: str | None = Field(
        default=None, description=f"Model for chat and outlines; default {DEFAULT_TEXT_MODEL}."
    )
    image_model: str | None = Field(
        default=None, description=f"Model that draws the pages; default {DEFAULT_IMAGE_MODEL}."
    )
    temperature: float | None = Field(
        default=None,
        ge=0,
        le=2,
        description="Sampling temperature when the caller gives none; unset: Gemini's default.",
    )
    max_output_tokens: int | None = Field(
        default=None,
        gt=0,
        description="generationConfig.maxOutputTokens when the caller gives no max_tokens.",
    )
    image_size: Literal["1K", "2K", "4K"] | None = Field(
        default=None,
        description="imageConfig.imageSize (1K, 2K or 4K; models that support it); unset: 1K.",
    )
    timeout: float | None = Field(
        default=None, gt=0, description="Seconds per call; None keeps the gateway's default."
    )
    extra_headers: dict[str, str] = Field(
        default_factory=dict, description="Headers added to every call (e.g. for a relay)."
    )

    @field_validator("base_url")
    @classmethod
    def _check_base_url(cls, value: str) -> str:
        value = value.strip().rstrip("/")
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.removesuffix("/v1beta").rstrip("/")

    @field_validator("image_size", mode="before")
    @classmethod
    def _upper_image_size(cls, value: Any) -> Any:
        return value.strip().upper() if isinstance(value, str) else value


# --- translation: requests -------------------------------------------------------------


def _short(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def data_url_part(url: str) -> dict | None:
    """The `inlineData` part for a `data:` URL, or None when `url` is not one.

    Base64 payloads are passed through untouched (no decode, no copy of the bytes).
    """
    if not url.startswith("data:"):
        return None
    header, sep, payload = url[5:].partition(",")
    if not sep:
        return None
    mime, _, params = header.partition(";")
    if ";base64" in f";{params}":
        data = payload
    else:
        data = pybase64.b64encode(unquote_to_bytes(payload)).decode("ascii")
    return {"inlineData": {"mimeType": mime or "application/octet-stream", "data": data}}


def _parts(content: Any) -> list[dict]:
    """Gemini parts for OpenAI message content (a string or a list of parts)."""
    if isinstance(content, str):
        return [{"text": content}] if content else []
    parts: list[dict] = []
    for item in content if isinstance(content, list) else ():
        if not isinstance(item, dict):
            continue
        kind = item.get("type")
        if kind == "text":
            text = str(item.get("text") or "")
            if text:
                parts.append({"text": text})
        elif kind == "image_url":
            image_url = item.get("image_url")
            url = image_url.get("url") if isinstance(image_url, dict) else image_url
            part = data_url_part(url) if isinstance(url, str) else None
            if part is None:
                # The gateway resolves references to data URLs before calling a provider;
                # anything else is not fetched from here.
                log.warning("gemini: leaving out an image part that is not a data: URL")
            else:
                parts.append(part)
        else:
            log.debug("gemini: leaving out a %r content part", kind)
    return parts


def build_contents(messages: list[dict]) -> tuple[dict | None, list[dict]]:
    """(`systemInstruction` or None, `contents`) for OpenAI-form messages.

    `system` and `developer` messages become the system instruction; `user` and
    `assistant` become `user` and `model` turns, consecutive turns of one role merged
    (Gemini wants them to alternate). Other roles (tools) are left out.
    """
    system: list[dict] = []
    contents: list[dict] = []
    for message in messages:
        role = message.get("role")
        if role in ("system", "developer"):
            text = message_text(message)
            if text:
                system.append({"text": text})
            continue
        gemini_role = _ROLES.get(str(role))
        if gemini_role is None:
            log.debug("gemini: leaving out a %r message", role)
            continue
        parts = _parts(message.get("content"))
        if not parts:
            continue
        if contents and contents[-1]["role"] == gemini_role:
            contents[-1]["parts"].extend(parts)
        else:
            contents.append({"role": gemini_role, "parts": parts})
    return ({"parts": system} if system else None), contents


def _generation_config(temperature: float | None, max_output_tokens: int | None) -> dict:
    config: dict[str, Any] = {}
    if temperature is not None:
        config["temperature"] = temperature
    if max_output_tokens is not None:
        config["maxOutputTokens"] = max_output_tokens
    return config


def build_text_payload(
    messages: list[dict],
    temperature: float | None = None,
    max_output_tokens: int | None = None,
) -> dict:
    """The body of `generateContent` / `streamGenerateContent` for a chat. Unset options are
    left out. Raises `InvalidRequest` when no user or assistant message has content."""
    system, contents = build_contents(messages)
    if not contents:
        raise InvalidRequest("The messages have no user or assistant content", param="messages")
    payload: dict[str, Any] = {"contents": contents}
    if system is not None:
        payload["systemInstruction"] = system
    config = _generation_config(temperature, max_output_tokens)
    if config:
        payload["generationConfig"] = config
    return payload


def aspect_ratio_for(aspect_ratio: str) -> str:
    """The `imageConfig.aspectRatio` for a "W:H" ratio: itself when Gemini supports it,
    else the nearest supported one (logged). Raises `InvalidRequest` for a bad ratio."""
    match = _RATIO.match(aspect_ratio or "")
    width, height = (float(match[1]), float(match[2])) if match else (0.0, 0.0)
    if width <= 0 or height <= 0:
        raise InvalidRequest(
            f"Invalid aspect ratio {aspect_ratio!r}; expected W:H such as 3:4",
            param="aspect_ratio",
        )
    wanted = math.log(width / height)

    def distance(candidate: str) -> float:
        w, h = candidate.split(":")
        return abs(math.log(int(w) / int(h)) - wanted)

    nearest = min(SUPPORTED_ASPECT_RATIOS, key=distance)
    if distance(nearest) > 1e-9:
        log.info("gemini: aspect ratio %s is not supported, using %s", aspect_ratio, nearest)
    return nearest


def _image_size(configured: str | None, requested: str | None) -> str | None:
    """The operator's `image_size` wins; a request size of 1K/2K/4K is used otherwise."""
    if configured:
        return configured
    candidate = (requested or "").strip().upper()
    return candidate if candidate in ("1K", "2K", "4K") else None


def build_image_payload(request: ImageRequest, image_size: str | None = None) -> dict:
    """The body of `generateContent` for one image: the references as `inlineData` parts
    first (most important first), then the prompt; `responseModalities` TEXT and IMAGE;
    `imageConfig` with the aspect ratio and, when set, the size. A "WxH" `request.size`
    is not used: the aspect ratio already says the shape."""
    parts: list[dict] = [
        {
            "inlineData": {
                "mimeType": ref.mime,
                "data": pybase64.b64encode(ref.data).decode("ascii"),
            }
        }
        for ref in request.references
    ]
    parts.append({"text": request.prompt})
    image_config: dict[str, Any] = {"aspectRatio": aspect_ratio_for(request.aspect_ratio)}
    size = _image_size(image_size, request.size)
    if size:
        image_config["imageSize"] = size
    return {
        "contents": [{"role": "user", "parts": parts}],
        "generationConfig": {"responseModalities": ["TEXT", "IMAGE"], "imageConfig": image_config},
    }


def json_bytes(payload: Any) -> bytes:
    """The compact UTF-8 JSON of a request body."""
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()


def _has_inline_data(payload: dict) -> bool:
    return any("inlineData" in part for content in payload["contents"] for part in content["parts"])


# --- translation: answers --------------------------------------------------------------


def _candidate(data: Any) -> dict | None:
    candidates = data.get("candidates") if isinstance(data, dict) else None
    if isinstance(candidates, list) and candidates and isinstance(candidates[0], dict):
        return candidates[0]
    return None


def _answer_parts(data: Any) -> list[dict]:
    candidate = _candidate(data)
    content = candidate.get("content") if candidate else None
    parts = content.get("parts") if isinstance(content, dict) else None
    return [p for p in parts if isinstance(p, dict)] if isinstance(parts, list) else []


def answer_text(data: Any) -> str:
    """The text of `candidates[0]`: its text parts joined, thought parts skipped."""
    return "".join(
        str(part["text"])
        for part in _answer_parts(data)
        if "text" in part and not part.get("thought")
    )


def refusal(data: Any) -> tuple[str, str] | None:
    """(reason, what) when the answer is a refusal: `promptFeedback.blockReason` (the
    prompt), or a blocking `candidates[0].finishReason` (the answer). Else None."""
    feedback = data.get("promptFeedback") if isinstance(data, dict) else None
    block = feedback.get("blockReason") if isinstance(feedback, dict) else None
    if block and block != "BLOCK_REASON_UNSPECIFIED":
        return str(block), "prompt"
    candidate = _candidate(data)
    finish = candidate.get("finishReason") if candidate else None
    if finish in BLOCKING_FINISH_REASONS:
        return str(finish), "answer"
    return None


def _raise_refusal(data: Any, answer_kind: str) -> None:
    found = refusal(data)
    if found is not None:
        reason, what = found
        raise GeminiBlocked(
            reason, what="prompt" if what == "prompt" else answer_kind, said=answer_text(data)
        )


def parse_text_response(data: Any, provider: str = "upstream") -> str:
    """The answer text of a `GenerateContentResponse`.

    Raises `GeminiBlocked` for a refusal (even after some text: the answer is cut) and
    `UpstreamError` for an answer without text (not retryable when cut by MAX_TOKENS).
    """
    error = answer_error(None, data, provider)
    if error is not None:
        raise error
    _raise_refusal(data, "answer")
    text = answer_text(data)
    if not text:
        candidate = _candidate(data) or {}
        finish = candidate.get("finishReason")
        detail = f" (finishReason {finish})" if finish else ""
        if finish == "MAX_TOKENS":
            detail += "; raise max_output_tokens (thinking models spend tokens before answering)"
        # Cut by the token limit, the same call gives the same; anything else may pass.
        raise UpstreamError(
            f"Upstream provider '{provider}' returned an empty answer{detail}",
            retryable=finish != "MAX_TOKENS",
        )
    return text


def parse_stream_line(line: str, provider: str = "upstream") -> str:
    """The text delta carried by one SSE line of `streamGenerateContent?alt=sse`.

    Each `data:` line is a whole `GenerateContentResponse`; other lines (blank
    separators, comments) give "". Raises like `parse_text_response`, except that a
    chunk without text is not an error.
    """
    if not line.startswith("data:"):
        return ""
    body = line[5:].strip()
    if not body:
        return ""
    try:
        data = json.loads(body)
    except ValueError:
        raise UpstreamError(
            f"Upstream provider '{provider}' sent a malformed stream chunk"
        ) from None
    return parse_stream_chunk(data, provider)


def parse_stream_chunk(data: Any, provider: str = "upstream") -> str:
    """The text delta of one parsed stream chunk (see `parse_stream_line`)."""
    error = answer_error(None, data, provider)
    if error is not None:
        raise error
    _raise_refusal(data, "answer")
    return answer_text(data)


def pick_image_part(data: Any) -> dict | None:
    """The `inlineData` of the image to keep: the LAST inline image part that is not a
    thought (thinking image models send draft images marked `thought: true` first)."""
    for part in reversed(_answer_parts(data)):
        inline = part.get("inlineData") or part.get("inline_data")
        if isinstance(inline, dict) and inline.get("data") and not part.get("thought"):
            return inline
    return None


def parse_image_response(data: Any, provider: str = "upstream") -> str:
    """The base64 image of a `GenerateContentResponse` asked for an image.

    Raises `GeminiBlocked` for a refusal, a non-retryable `UpstreamError` when there is
    no image and no reason (with what the model said instead).
    """
    error = answer_error(None, data, provider)
    if error is not None:
        raise error
    _raise_refusal(data, "image")
    inline = pick_image_part(data)
    if inline is None:
        said = answer_text(data)
        candidate = _candidate(data) or {}
        finish = candidate.get("finishReason")
        message = f"Upstream provider '{provider}' returned no image in the answer"
        if finish and finish != "STOP":
            message += f" (finishReason {finish})"
        if said:
            message += f"; the model said: {_short(said)}"
        raise UpstreamError(message, retryable=False)
    return inline["data"]


def decode_image(b64: str, provider: str = "upstream") -> ImageData:
    """The image bytes of a base64 `inlineData.data`, with the MIME type from the bytes."""
    try:
        data = decode_base64(b64)
    except (binascii.Error, ValueError):
        raise UpstreamError(
            f"Upstream provider '{provider}' sent invalid base64 image data", retryable=False
        ) from None
    try:
        return ImageData.from_bytes(data)
    except ValueError:
        raise UpstreamError(
            f"Upstream provider '{provider}' returned data that is not a PNG, JPEG, WebP "
            "or GIF image",
            retryable=False,
        ) from None


def _parse_json(content: bytes, provider: str, what: str) -> Any:
    try:
        return json.loads(content)
    except ValueError:
        message = f"Upstream provider '{provider}' returned malformed JSON ({what})"
        raise UpstreamError(message) from None


def image_from_body(content: bytes, provider: str = "upstream") -> ImageData:
    """The image of a raw `generateContent` answer: one JSON parse, one base64 decode.
    Blocking (MBs of base64): call it in a worker thread."""
    data = _parse_json(content, provider, "image answer")
    return decode_image(parse_image_response(data, provider), provider)


# --- translation: errors ---------------------------------------------------------------


def parse_retry_delay(value: Any) -> float | None:
    """Seconds of a protobuf Duration in JSON form ("37s", "1.5s"), or None."""
    match = _DURATION.match(value) if isinstance(value, str) else None
    return float(match[1]) if match else None


def _error_object(data: Any) -> dict | None:
    if isinstance(data, list) and data:  # `alt=json` streams wrap errors in a list
        data = data[0]
    err = data.get("error") if isinstance(data, dict) else None
    return err if isinstance(err, dict) else None


def _auth_failed(provider: str, why: str) -> UpstreamError:
    return UpstreamError(
        f"Upstream provider '{provider}' rejected the gateway's credentials ({why}); "
        "your API key is fine, the gateway's upstream configuration is not",
        code="upstream_auth_failed",
        retryable=False,
    )


def answer_error(status: int | None, data: Any, provider: str = "upstream") -> GatewayError | None:
    """The gateway error for a Google error body (`{"error": {code, message, status,
    details}}`) when Gemini needs its own reading, else None (then `upstream_status_error`
    decides, from the HTTP status).

    - 429 RESOURCE_EXHAUSTED with a RetryInfo detail: `RateLimited` after `retryDelay`.
    - A rejected key (400 INVALID_ARGUMENT, reason API_KEY_INVALID) or 401/403: 502
      `upstream_auth_failed`, like any upstream refusing the gateway's credentials.
    - `status` None (an error object inside a 200 answer or stream): an `UpstreamError`
      for anything else, since no HTTP status is left to decide.
    """
    err = _error_object(data)
    if err is None:
        return None
    code = status if status is not None else err.get("code")
    google_status = str(err.get("status") or "")
    message = _short(str(err.get("message") or google_status or "unknown error"), 300)
    details = [d for d in err.get("details") or () if isinstance(d, dict)]
    if code == 429 or google_status == "RESOURCE_EXHAUSTED":
        delays = [parse_retry_delay(d.get("retryDelay")) for d in details]
        delays = [d for d in delays if d is not None]
        if delays:
            return RateLimited(
                f"Upstream provider '{provider}' is rate limiting: {message}",
                retry_after=max(delays),
            )
    elif any(d.get("reason") == "API_KEY_INVALID" for d in details) or (
        google_status == "INVALID_ARGUMENT" and "api key" in message.lower()
    ):
        return _auth_failed(provider, f"{code} API_KEY_INVALID")
    elif code in (401, 403) or google_status in ("UNAUTHENTICATED", "PERMISSION_DENIED"):
        return _auth_failed(provider, f"{code} {google_status}".strip())
    if status is None:
        if code == 429 or google_status == "RESOURCE_EXHAUSTED":
            return RateLimited(
                f"Upstream provider '{provider}' is rate limiting: {message}", retry_after=5
            )
        return UpstreamError(f"Upstream provider '{provider}' returned an error: {message}")
    return None


# --- sending ---------------------------------------------------------------------------


def _model_id(model: str) -> str:
    return model.strip().removeprefix("models/")


@register("gemini")
class GeminiProvider(TextProvider, ImageProvider):
    """Gemini's `generateContent` for text (also streamed) and for images."""

    Options: ClassVar[type[ProviderOptions]] = GeminiOptions
    options: GeminiOptions

    def __init__(self, name: str, options: ProviderOptions, http: httpx.AsyncClient) -> None:
        super().__init__(name, options, http)
        assert isinstance(options, GeminiOptions)
        key = options.api_key.get_secret_value() if options.api_key else ""
        self._secret = key
        self._headers = {"Content-Type": "application/json"}
        if key:
            self._headers["x-goog-api-key"] = key
        self._headers.update(options.extra_headers)
        self._timeout: Any = (
            options.timeout if options.timeout is not None else httpx.USE_CLIENT_DEFAULT
        )

    def _url(self, model: str, method: str) -> str:
        return f"{self.options.base_url}/v1beta/models/{_model_id(model)}:{method}"

    async def list_models(self) -> list[str] | None:
        """`GET {base}/v1beta/models`: the model ids (without the `models/` prefix)."""
        with self._upstream():
            response = await self.http.get(
                f"{self.options.base_url}/v1beta/models",
                params={"pageSize": 1000},
                headers=self._headers,
                timeout=self._timeout,
            )
            self._raise_for_answer(response)
        try:
            return [_model_id(str(m["name"])) for m in response.json().get("models", [])]
        except (ValueError, TypeError, KeyError, AttributeError):
            raise UpstreamError(
                f"Upstream provider '{self.name}' answered models.list with an unexpected body",
                retryable=False,
            ) from None

    def configured_models(self) -> dict[str, str]:
        return {
            "text": self.options.text_model or DEFAULT_TEXT_MODEL,
            "image": self.options.image_model or DEFAULT_IMAGE_MODEL,
        }

    def _upstream(self) -> contextlib.AbstractContextManager[None]:
        # Google quotes the key in some errors, e.g. "Consumer 'api_key:...' suspended".
        return upstream_call(self.name, self._secret)

    def _raise_for_answer(self, response: httpx.Response) -> None:
        """Raise for an error answer (body read): Gemini's own cases first."""
        if response.is_success:
            return
        if response.content[:1] in (b"{", b"["):
            with contextlib.suppress(ValueError):
                error = answer_error(response.status_code, response.json(), self.name)
                if error is not None:
                    raise error
        response.raise_for_status()

    async def _body(self, payload: dict) -> bytes:
        if _has_inline_data(payload):  # MBs of base64 to serialise: not on the event loop
            return await anyio.to_thread.run_sync(json_bytes, payload)
        return json_bytes(payload)

    async def _send(self, model: str, body: bytes) -> bytes:
        """POST `generateContent` and return the whole answer body. The one sending place
        for non-streamed calls."""
        with self._upstream():
            async with self.http.stream(
                "POST",
                self._url(model, "generateContent"),
                content=body,
                headers=self._headers,
                timeout=self._timeout,
            ) as response:
                if not response.is_success:
                    await response.aread()
                    self._raise_for_answer(response)
                return await self._read_body(response)

    async def _read_body(self, response: httpx.Response) -> bytes:
        too_large = (
            f"Upstream provider '{self.name}' sent an answer larger than {MAX_ANSWER_BYTES} bytes"
        )
        return await read_limited(response, MAX_ANSWER_BYTES, too_large)

    def _text_payload(
        self, messages: list[dict], temperature: float | None, max_tokens: int | None
    ) -> dict:
        return build_text_payload(
            messages,
            temperature if temperature is not None else self.options.temperature,
            max_tokens if max_tokens is not None else self.options.max_output_tokens,
        )

    async def chat(
        self,
        messages: list[dict],
        *,
        model: str | None = None,
        temperature: float | None = None,
        max_tokens: int | None = None,
    ) -> str:
        model = model or self.options.text_model or DEFAULT_TEXT_MODEL
        body = await self._body(self._text_payload(messages, temperature, max_tokens))
        content = await self._send(model, body)
        with self._upstream():
            data = _parse_json(content, self.name, "chat answer")
            return parse_text_response(data, self.name)

    async def stream_chat(
        self,
        messages: list[dict],
        *,
        model: str | None = None,
        temperature: float | None = None,
        max_tokens: int | None = None,
    ) -> AsyncIterator[str]:
        model = model or self.options.text_model or DEFAULT_TEXT_MODEL
        body = await self._body(self._text_payload(messages, temperature, max_tokens))
        with self._upstream():
            async with self.http.stream(
                "POST",
                self._url(model, "streamGenerateContent"),
                params={"alt": "sse"},
                content=body,
                headers=self._headers,
                timeout=self._timeout,
            ) as response:
                if not response.is_success:
                    await response.aread()
                    self._raise_for_answer(response)
                if response.headers.get("content-type", "").startswith("application/json"):
                    # A relay that drops `alt=sse` answers a JSON array of responses.
                    await response.aread()
                    data = _parse_json(response.content, self.name, "streamed answer")
                    for item in data if isinstance(data, list) else [data]:
                        if text := parse_stream_chunk(item, self.name):
                            yield text
                    return
                async for line in response.aiter_lines():
                    if delta := parse_stream_line(line, self.name):
                        yield delta

    async def generate(self, request: ImageRequest) -> list[ImageData]:
        if request.mask is not None:
            raise InvalidRequest(
                "Gemini image models take no mask; describe the change in the prompt instead",
                param="mask",
            )
        model = request.model or self.options.image_model or DEFAULT_IMAGE_MODEL
        # Base64 of the references and the JSON around it: built in a worker thread.
        body = await anyio.to_thread.run_sync(
            lambda: json_bytes(build_image_payload(request, self.options.image_size))
        )
        n = max(1, request.n)
        if n == 1:
            images = [await self._one_image(model, body)]
        else:
            results = await asyncio.gather(
                *(self._one_image(model, body) for _ in range(n)), return_exceptions=True
            )
            for result in results:
                if isinstance(result, BaseException):
                    raise result
            images = [r for r in results if isinstance(r, ImageData)]
        log.debug("provider %s: %d image(s) from %s", self.name, len(images), model)
        return images

    async def _one_image(self, model: str, body: bytes) -> ImageData:
        content = await self._send(model, body)
        with self._upstream():
            return await anyio.to_thread.run_sync(image_from_body, content, self.name)
