"""The provider contract: one small base class per capability.

A provider is built from its options (a pydantic model that forbids unknown
fields) and the gateway's shared `httpx.AsyncClient`. It never reads the
environment, never builds its own client and never writes files: it turns a
request into upstream calls and the answer into plain Python values. Translation
(building the upstream request, parsing its answer) is kept in pure functions so
it can be unit-tested without a network; sending happens in one place per module.

A class may implement several capabilities (the `local` provider is both a
`TextProvider` and an `ImageProvider`). Capabilities are declared by subclassing.

Example::

    class EchoOptions(ProviderOptions):
        prefix: str = ">"

    @register("echo")
    class Echo(TextProvider):
        Options = EchoOptions

        async def chat(self, messages, *, model=None, temperature=None, max_tokens=None):
            return self.options.prefix + last_user_text(messages)
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

import httpx
import pybase64
from pydantic import BaseModel, ConfigDict


class ProviderOptions(BaseModel):
    """Options of a provider, from the config file. Unknown fields are an error."""

    model_config = ConfigDict(extra="forbid")


def decode_base64(text: str | bytes | memoryview) -> bytes:
    """Base64 image data, decoded with pybase64's SIMD decoder.

    The strict decode comes first: on well-formed base64 (what every upstream sends)
    it measured ~0.17 ms for a 2.3 MB image, where the lenient one, which skips
    characters outside the alphabet (the line breaks some encoders add), took ~1 ms.
    That lenient decode is the fallback, so what decoded before still decodes.
    Raises `binascii.Error` or `ValueError` when neither can decode it.
    """
    try:
        return pybase64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return pybase64.b64decode(text, validate=False)


def mime_from_magic(data: bytes) -> str | None:
    """The image MIME type from the leading bytes, or None when unknown."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    return None


@dataclass(frozen=True)
class ImageData:
    """Image bytes with their real MIME type (taken from the bytes)."""

    data: bytes
    mime: str

    @classmethod
    def from_bytes(cls, data: bytes) -> ImageData:
        mime = mime_from_magic(data)
        if mime is None:
            raise ValueError("not a PNG, JPEG, WebP or GIF image")
        return cls(data, mime)

    def data_url(self) -> str:
        return f"data:{self.mime};base64,{base64.b64encode(self.data).decode()}"


@dataclass(frozen=True)
class ImageRequest:
    """What an image model is asked for.

    `aspect_ratio` is "W:H" (e.g. "3:4"); `size` an explicit "WxH" when the client
    gave one. `references` are style/content references, most important first
    (the flow puts the cover first). `model` overrides the provider's default.
    """

    prompt: str
    references: tuple[ImageData, ...] = ()
    aspect_ratio: str = "3:4"
    size: str | None = None
    n: int = 1
    model: str | None = None
    # An edit mask (transparent where the image may change), for `/v1/images/edits`;
    # providers that cannot use one raise `InvalidRequest` rather than ignore it.
    mask: ImageData | None = None
    # The client's `quality` / `style` (OpenAI Images API); providers without them ignore them.
    quality: str | None = None
    style: str | None = None
    # Free-form hints for providers that can use them (e.g. page title and body
    # for the offline card renderer). Upstream providers ignore them.
    hints: dict[str, Any] = field(default_factory=dict)


class Provider:
    """Base of every provider: a name, validated options and the shared client."""

    type: ClassVar[str] = ""
    Options: ClassVar[type[ProviderOptions]] = ProviderOptions
    # The option fields that hold secrets: never logged, shown or put in an error message
    # (the dashboard masks them). A provider whose secrets have other names overrides it.
    SECRET_FIELDS: ClassVar[tuple[str, ...]] = ("api_key",)

    def __init__(self, name: str, options: ProviderOptions, http: httpx.AsyncClient) -> None:
        self.name = name
        self.options = options
        self.http = http

    async def list_models(self) -> list[str] | None:
        """The model ids the upstream offers (a cheap credentials check), or None when the
        upstream has no such list. Raises `GatewayError` subclasses like every call."""
        return None

    def configured_models(self) -> dict[str, str]:
        """The models this provider's options name, by role ("text", "image")."""
        return {}


class TextProvider(Provider):
    """A chat model. Messages are in OpenAI form; images inside them are data URLs."""

    async def chat(
        self,
        messages: list[dict],
        *,
        model: str | None = None,
        temperature: float | None = None,
        max_tokens: int | None = None,
    ) -> str:
        """The whole answer text. Raises `GatewayError` subclasses on failure."""
        raise NotImplementedError

    async def stream_chat(
        self,
        messages: list[dict],
        *,
        model: str | None = None,
        temperature: float | None = None,
        max_tokens: int | None = None,
    ) -> AsyncIterator[str]:
        """Text deltas as they arrive. The default yields the whole answer once."""
        yield await self.chat(messages, model=model, temperature=temperature, max_tokens=max_tokens)


class ImageProvider(Provider):
    """An image model."""

    async def generate(self, request: ImageRequest) -> list[ImageData]:
        """`request.n` images (at least one), bytes with their real MIME type.

        Raises `GatewayError` subclasses: `ContentPolicyViolation` for a safety
        block (never retried), errors with `retryable=True` for transient trouble.
        """
        raise NotImplementedError


@dataclass(frozen=True)
class VideoStatus:
    """The state of a video job: `status` is queued | running | succeeded | failed.

    `result_url` (and `duration`, seconds, when the upstream says) are set once the job
    succeeded; `error` is the upstream's reason when it failed.
    """

    status: str
    progress: float | None = None
    result_url: str | None = None
    result: bytes | None = None
    error: str | None = None
    duration: float | None = None


class VideoProvider(Provider):
    """A submit-then-poll video model."""

    async def submit(
        self,
        prompt: str,
        *,
        first_frame: ImageData | None = None,
        last_frame: ImageData | None = None,
        external_id: str | None = None,
        **params: Any,
    ) -> str:
        """Start a job; returns a task id that `poll` understands (an opaque string).

        `first_frame` / `last_frame` make an image-to-video job; `params` are the
        provider's own (duration, mode, ...). `external_id` is the caller's own unique
        id for the job, handed to upstreams that can find jobs by it (`find`). Invalid
        inputs raise `InvalidRequest` before any upstream call; upstream failures raise
        `GatewayError` subclasses.
        """
        raise NotImplementedError

    async def find(self, external_id: str, *, from_image: bool) -> str | None:
        """The task id of the job submitted with `external_id`, or None when there is
        none. Lets a resumed job learn whether a submission whose answer was lost went
        through, instead of submitting (and paying) twice. The default: the upstream
        cannot look jobs up, None."""
        return None

    async def poll(self, task_id: str) -> VideoStatus:
        """The job's current status (one upstream call). Raises `GatewayError` subclasses."""
        raise NotImplementedError


def last_user_text(messages: list[dict]) -> str:
    """The text of the last user message (text parts joined)."""
    for message in reversed(messages):
        if message.get("role") == "user":
            return message_text(message)
    return ""


def message_text(message: dict) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            str(part.get("text", ""))
            for part in content
            if isinstance(part, dict) and part.get("type") == "text"
        )
    return ""
