"""Kling (klingai.com): images and videos by submit, poll, download.

Every call carries `Authorization: Bearer <JWT>`: an HS256 JWT (header
`{"alg": "HS256", "typ": "JWT"}`, claims `iss` = access key, `exp` = now + 1800,
`nbf` = now - 5) signed with the secret key, made with the standard library (PyJWT is
not a dependency), reused and renewed `TOKEN_RENEW_MARGIN` seconds before it expires.

Answers are `{"code": 0, "message", "request_id", "data": {...}}`; an error comes with
an HTTP status and a `code` (1000-1004 authentication, 1100-1103 account, 1200-1203
parameters, 1300-1304 policy and limits, 5000-5002 server), mapped by `code_error`.

- Images: `POST /v1/images/generations` `{model_name, prompt, n, aspect_ratio,
  negative_prompt?, image?, image_reference?, image_fidelity?}` answers `data.task_id`;
  `GET /v1/images/generations/{task_id}` is polled every `poll_interval` until
  `data.task_status` is `succeed` (`data.task_result.images[].url`, downloaded) or
  `failed` (`data.task_status_msg`), or `deadline` passes.
- Videos: `POST /v1/videos/image2video` `{model_name, image, image_tail?, prompt?,
  negative_prompt?, cfg_scale?, mode, duration}` or `POST /v1/videos/text2video`
  (no images; `aspect_ratio`); `duration` is the string "5" or "10". The task id handed
  out is `"{kind}:{task_id}"` (kind `image2video` / `text2video`) because the poll path
  differs: `GET /v1/videos/{kind}/{task_id}`; `data.task_result.videos[]` has `url` and
  `duration`.

Images sent to Kling (reference image, first and last frame) are raw base64 without a
`data:` prefix and must be JPG or PNG, at most 10 MB, at least 300 px on each side, with
an aspect ratio between 1:2.5 and 2.5:1: `check_image` / `check_video_inputs` refuse
anything else with `InvalidRequest` before any upstream call.

Translation is in the module-level functions; `KlingProvider` only sends.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import hashlib
import hmac
import io
import json
import logging
import math
import re
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, TypeVar

import anyio
import httpx
from pydantic import Field, SecretStr, field_validator

from gateway.errors import (
    ContentPolicyViolation,
    GatewayError,
    InvalidRequest,
    NotFound,
    RateLimited,
    UpstreamError,
    UpstreamTimeout,
    upstream_status_error,
)
from providers.base import (
    ImageData,
    ImageProvider,
    ImageRequest,
    ProviderOptions,
    VideoProvider,
    VideoStatus,
)
from providers.http import LOGGED_BODY_CHARS, read_limited, upstream_call
from providers.registry import register

log = logging.getLogger("inkgate.providers.kling")

T = TypeVar("T")

DEFAULT_BASE_URL = "https://api-singapore.klingai.com"
IMAGE_PATH = "/v1/images/generations"
VIDEO_PATHS: dict[str, str] = {
    "image2video": "/v1/videos/image2video",
    "text2video": "/v1/videos/text2video",
}

TOKEN_LIFETIME = 1800  # seconds, as Kling's documentation signs them
TOKEN_NOT_BEFORE = 5  # nbf this many seconds in the past: clocks are never quite equal
TOKEN_RENEW_MARGIN = 300  # a new token this long before the cached one expires

IMAGE_ASPECT_RATIOS = ("16:9", "9:16", "1:1", "4:3", "3:4", "3:2", "2:3", "21:9")
VIDEO_ASPECT_RATIOS = ("16:9", "9:16", "1:1")
MODELS_WITHOUT_21_9 = frozenset({"kling-v1"})
MAX_IMAGE_BYTES = 10 * 1024 * 1024
MIN_IMAGE_SIDE = 300
MAX_IMAGE_RATIO = 2.5
MAX_PROMPT_CHARS = 2500
MAX_IMAGES = 9
DURATIONS = ("5", "10")
MODES = ("std", "pro")
STATUSES = {
    "submitted": "queued",
    "processing": "running",
    "succeed": "succeeded",
    "failed": "failed",
}

AUTH_CODES = frozenset({1000, 1001, 1002, 1003, 1004})
# 1103: no access to this resource; 1304: the caller's IP is not on the whitelist.
ACCESS_CODES = frozenset({1103, 1304})
QUOTA_CODES = frozenset({1100, 1101, 1102})
NOT_FOUND_CODES = frozenset({1202, 1203})
POLICY_CODES = frozenset({1300, 1301})
RATE_LIMIT_CODES = frozenset({1302, 1303})
_SAFETY_WORDS = ("risk", "safety", "content policy", "sensitive", "violat", "nsfw", "违规", "敏感")
_TASK_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")  # goes into a URL path: nothing else
_RATIO = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*[:x]\s*(\d+(?:\.\d+)?)\s*$", re.IGNORECASE)


class KlingOptions(ProviderOptions):
    """Options of a `kling` provider entry in the config file."""

    access_key: SecretStr = Field(description="The JWT's iss; never logged or shown.")
    secret_key: SecretStr = Field(description="Signs the JWT (HS256); never logged or shown.")
    base_url: str = Field(default=DEFAULT_BASE_URL, description="API root; /v1/... appended.")
    image_model: str = Field(default="kling-v1", min_length=1)
    video_model: str = Field(default="kling-v1", min_length=1)
    image_fidelity: float | None = Field(
        default=None, ge=0, le=1, description="Reference strength when an image is sent."
    )
    image_reference: Literal["subject", "face"] = Field(
        default="subject", description="Sent with a reference image to kling-v1-5."
    )
    negative_prompt: str | None = Field(
        default=None, max_length=MAX_PROMPT_CHARS, description="Sent with text-only images."
    )
    video_mode: Literal["std", "pro"] = "std"
    video_duration: Literal[5, 10] = 5
    poll_interval: float = Field(default=3.0, gt=0, description="Seconds between polls.")
    deadline: float = Field(default=300.0, gt=0, description="Seconds an image task may take.")
    video_deadline: float = Field(
        default=900.0, gt=0, description="Seconds `wait_video` waits for a video task."
    )
    timeout: float | None = Field(
        default=None, gt=0, description="Seconds per call; None keeps the gateway's default."
    )
    max_download_bytes: int = Field(default=30 * 1024 * 1024, gt=0)
    max_video_bytes: int = Field(default=200 * 1024 * 1024, gt=0)
    download_attempts: int = Field(default=3, ge=1, le=10)

    @field_validator("base_url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        value = value.strip().rstrip("/")
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value

    @field_validator("access_key", "secret_key")
    @classmethod
    def _not_empty(cls, value: SecretStr) -> SecretStr:
        if not value.get_secret_value().strip():
            raise ValueError("must not be empty")
        return value


# --- the token -------------------------------------------------------------------------


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _compact(value: dict) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def encode_jwt(access_key: str, secret_key: str, now: float) -> str:
    """Kling's API token: an HS256 JWT with `iss`, `exp` = now + 1800, `nbf` = now - 5."""
    header = {"alg": "HS256", "typ": "JWT"}
    claims = {
        "iss": access_key,
        "exp": int(now) + TOKEN_LIFETIME,
        "nbf": int(now) - TOKEN_NOT_BEFORE,
    }
    signing_input = f"{_b64url(_compact(header))}.{_b64url(_compact(claims))}"
    signature = hmac.new(secret_key.encode(), signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64url(signature)}"


class TokenSource:
    """The bearer token, made once and reused until `TOKEN_RENEW_MARGIN` seconds before it
    expires (or when the clock moved back before its `nbf`). `clock` is injectable."""

    def __init__(
        self, access_key: str, secret_key: str, clock: Callable[[], float] = time.time
    ) -> None:
        self._access_key = access_key
        self._secret_key = secret_key
        self._clock = clock
        self._token: str | None = None
        self._not_before = 0.0
        self._expires = 0.0

    def __repr__(self) -> str:
        return "TokenSource(...)"

    def token(self) -> str:
        now = self._clock()
        if (
            self._token is None
            or now >= self._expires - TOKEN_RENEW_MARGIN
            or now < self._not_before
        ):
            self._token = encode_jwt(self._access_key, self._secret_key, now)
            self._not_before = int(now) - TOKEN_NOT_BEFORE
            self._expires = int(now) + TOKEN_LIFETIME
        return self._token


# --- inputs: pure checks ---------------------------------------------------------------


def _image_bytes(image: ImageData | bytes) -> bytes:
    return image.data if isinstance(image, ImageData) else bytes(image)


def image_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from the image header (Pillow reads no pixels), or None."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as img:
            return img.size
    except (UnidentifiedImageError, OSError, ValueError):
        return None


def check_image(image: ImageData | bytes, param: str) -> tuple[int, int]:
    """(width, height) of an image Kling accepts; `InvalidRequest` (with `param`) when it is
    not JPG or PNG, larger than 10 MB, smaller than 300 px on a side, or outside 1:2.5 to
    2.5:1."""
    data = _image_bytes(image)
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        kind = "PNG"
    elif data.startswith(b"\xff\xd8\xff"):
        kind = "JPEG"
    else:
        raise InvalidRequest(f"{param} must be a JPG or PNG image", param=param)
    if len(data) > MAX_IMAGE_BYTES:
        raise InvalidRequest(
            f"{param} is {len(data) / 1048576:.1f} MB; Kling takes at most 10 MB", param=param
        )
    size = image_size(data)
    if size is None:
        raise InvalidRequest(f"{param} is not a readable {kind} image", param=param)
    width, height = size
    if min(width, height) < MIN_IMAGE_SIDE:
        raise InvalidRequest(
            f"{param} is {width}x{height} px; Kling needs at least {MIN_IMAGE_SIDE} px on "
            "each side",
            param=param,
        )
    if not 1 / MAX_IMAGE_RATIO <= width / height <= MAX_IMAGE_RATIO:
        raise InvalidRequest(
            f"{param} is {width}x{height} px; Kling needs an aspect ratio between 1:2.5 and 2.5:1",
            param=param,
        )
    return width, height


def _ratio(text: str) -> float | None:
    match = _RATIO.match(text or "")
    if match is None or float(match[1]) <= 0 or float(match[2]) <= 0:
        return None
    return float(match[1]) / float(match[2])


def _nearest(ratio: float, choices: tuple[str, ...]) -> str:
    return min(choices, key=lambda name: abs(math.log(ratio / (_ratio(name) or 1.0))))


def aspect_ratio_for(
    aspect_ratio: str,
    size: str | None = None,
    *,
    model: str | None = None,
    choices: tuple[str, ...] = IMAGE_ASPECT_RATIOS,
    param: str = "aspect_ratio",
) -> str:
    """The Kling aspect ratio nearest (by log-ratio) to the request's size or ratio; 21:9
    only for models that draw it. A ratio that is not offered is logged."""
    source = size or aspect_ratio
    ratio = _ratio(source)
    if ratio is None:
        raise InvalidRequest(
            f"Invalid aspect ratio {source!r}; expected W:H such as 3:4",
            param="size" if size else param,
        )
    if model in MODELS_WITHOUT_21_9:
        choices = tuple(c for c in choices if c != "21:9")
    name = _nearest(ratio, choices)
    if not math.isclose(ratio, _ratio(name) or 0.0):
        log.info("kling: %s drawn as the nearest aspect ratio %s", source, name)
    return name


@dataclass(frozen=True)
class VideoInputs:
    """A checked video job: `kind` is image2video (a first frame) or text2video."""

    kind: str
    prompt: str
    first_frame: ImageData | None
    last_frame: ImageData | None
    duration: str
    mode: str
    cfg_scale: float | None
    negative_prompt: str | None
    aspect_ratio: str | None


def _duration(value: Any) -> str:
    if isinstance(value, bool):
        value = None
    elif isinstance(value, float) and value.is_integer():
        value = int(value)
    text = str(value).strip() if isinstance(value, int | str) else ""
    if text not in DURATIONS:
        raise InvalidRequest(f"duration must be 5 or 10 (seconds), not {value!r}", param="duration")
    return text


def _text(value: Any, param: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidRequest(f"{param} must be a string", param=param)
    if len(value) > MAX_PROMPT_CHARS:
        raise InvalidRequest(
            f"{param} is {len(value)} characters; Kling takes at most {MAX_PROMPT_CHARS}",
            param=param,
        )
    return value or None


def check_video_inputs(
    prompt: str | None,
    *,
    first_frame: ImageData | bytes | None = None,
    last_frame: ImageData | bytes | None = None,
    duration: int | str = 5,
    mode: str = "std",
    cfg_scale: float | None = None,
    negative_prompt: str | None = None,
    aspect_ratio: str | None = None,
) -> VideoInputs:
    """The inputs of a video job, checked as Kling checks them, before any upstream call.

    Raises `InvalidRequest` with `param` set (`prompt`, `first_frame`, `last_frame`,
    `duration`, `mode`, `cfg_scale`, `negative_prompt`, `aspect_ratio`): frames must pass
    `check_image`; a last frame needs a first frame and duration 5; duration is 5 or 10;
    mode std or pro; cfg_scale in [0, 1]; a text-to-video job needs a prompt. With a first
    frame the job is image2video (the frame sets the shape, `aspect_ratio` is not sent);
    without, text2video, its aspect ratio the nearest of 16:9, 9:16, 1:1 (default 16:9).
    """
    prompt = _text(prompt, "prompt") or ""
    negative_prompt = _text(negative_prompt, "negative_prompt")
    seconds = _duration(duration)
    if mode not in MODES:
        raise InvalidRequest(f"mode must be std or pro, not {mode!r}", param="mode")
    if cfg_scale is not None:
        if isinstance(cfg_scale, bool) or not isinstance(cfg_scale, int | float):
            raise InvalidRequest("cfg_scale must be a number from 0 to 1", param="cfg_scale")
        if not 0 <= cfg_scale <= 1:
            raise InvalidRequest(
                f"cfg_scale must be from 0 to 1, not {cfg_scale}", param="cfg_scale"
            )
        cfg_scale = float(cfg_scale)
    first = _as_image(first_frame, "first_frame")
    last = _as_image(last_frame, "last_frame")
    if last is not None:
        if first is None:
            raise InvalidRequest(
                "last_frame needs a first_frame (Kling animates from the first to the last)",
                param="last_frame",
            )
        if seconds != "5":
            raise InvalidRequest(
                "last_frame works only with duration 5; Kling refuses it for 10 s videos",
                param="last_frame",
            )
    if first is None:
        if not prompt.strip():
            raise InvalidRequest("A text-to-video job needs a prompt", param="prompt")
        ratio = aspect_ratio_for(aspect_ratio or "16:9", choices=VIDEO_ASPECT_RATIOS)
        return VideoInputs(
            "text2video", prompt, None, None, seconds, mode, cfg_scale, negative_prompt, ratio
        )
    return VideoInputs(
        "image2video", prompt, first, last, seconds, mode, cfg_scale, negative_prompt, None
    )


def _as_image(image: ImageData | bytes | None, param: str) -> ImageData | None:
    if image is None:
        return None
    check_image(image, param)
    if isinstance(image, ImageData):
        return image
    return ImageData.from_bytes(bytes(image))


# --- requests and answers: pure functions ----------------------------------------------


def raw_base64(image: ImageData) -> str:
    """The image as Kling wants it: plain base64, no `data:` prefix."""
    return base64.b64encode(image.data).decode()


def build_image_payload(
    request: ImageRequest,
    model: str,
    *,
    image_fidelity: float | None = None,
    image_reference: str = "subject",
    negative_prompt: str | None = None,
) -> dict:
    """The body of `POST /v1/images/generations`. The first reference image (checked by
    `check_image`) is sent as `image`; Kling takes no negative prompt with one."""
    if request.mask is not None:
        raise InvalidRequest("Kling takes no edit mask", param="mask")
    n = request.n
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_IMAGES:
        raise InvalidRequest(f"n must be from 1 to {MAX_IMAGES} for Kling, not {n!r}", param="n")
    prompt = request.prompt
    if not prompt or not prompt.strip():
        raise InvalidRequest("A prompt is required", param="prompt")
    if len(prompt) > MAX_PROMPT_CHARS:
        # A post's page prompts can be long: `short_prompt` on the post model sends less.
        raise InvalidRequest(
            f"The prompt is {len(prompt)} characters; Kling takes at most "
            f"{MAX_PROMPT_CHARS} (for a post model, set short_prompt: true)",
            param="prompt",
        )
    payload: dict[str, Any] = {
        "model_name": model,
        "prompt": prompt,
        "n": n,
        "aspect_ratio": aspect_ratio_for(request.aspect_ratio, request.size, model=model),
    }
    if request.references:
        reference = request.references[0]
        check_image(reference, "image")
        if len(request.references) > 1:
            log.debug("kling: %d reference images, the first is sent", len(request.references))
        payload["image"] = raw_base64(reference)
        if model == "kling-v1-5":  # the one model that needs the reference type
            payload["image_reference"] = image_reference
        if image_fidelity is not None:
            payload["image_fidelity"] = image_fidelity
    elif negative_prompt:
        payload["negative_prompt"] = negative_prompt
    return payload


def build_video_payload(inputs: VideoInputs, model: str) -> dict:
    """The body of `POST /v1/videos/{inputs.kind}`. `cfg_scale` is left out for the
    kling-v2 models, which do not take it."""
    payload: dict[str, Any] = {
        "model_name": model,
        "mode": inputs.mode,
        "duration": inputs.duration,
    }
    if inputs.prompt:
        payload["prompt"] = inputs.prompt
    if inputs.negative_prompt:
        payload["negative_prompt"] = inputs.negative_prompt
    if inputs.cfg_scale is not None:
        if model.startswith("kling-v2"):
            log.debug("kling: cfg_scale not sent to %s", model)
        else:
            payload["cfg_scale"] = inputs.cfg_scale
    if inputs.first_frame is not None:
        payload["image"] = raw_base64(inputs.first_frame)
    if inputs.last_frame is not None:
        payload["image_tail"] = raw_base64(inputs.last_frame)
    if inputs.aspect_ratio is not None:
        payload["aspect_ratio"] = inputs.aspect_ratio
    return payload


def _looks_like_safety(text: str) -> bool:
    low = text.lower()
    return any(word in low for word in _SAFETY_WORDS)


def code_error(
    provider: str,
    code: Any,
    message: str,
    *,
    http_status: int | None = None,
    retry_after: float | None = None,
) -> GatewayError:
    """The gateway error for a Kling answer whose `code` is not 0.

    1000-1004 (or HTTP 401), 1103, 1304 → 502 `upstream_auth_failed`: the gateway's Kling
    keys or account are wrong, never the client's key; 1100-1102 → 502
    `upstream_quota_exceeded` (the Kling account is out of resources), not retried;
    1200/1201 → 400 `upstream_invalid_request`; 1202/1203 → 404; 1300/1301 →
    `content_policy_violation`, never retried; 1302/1303 → 429, retried with backoff;
    5000-5999 → 502 (5002: 504), retried. Other codes follow the HTTP status.
    """
    message = message.strip()[:300] or "no message"
    try:
        number = int(code)
    except (TypeError, ValueError):
        number = 0
    said = f"code {code}: {message}"
    if number in AUTH_CODES or number in ACCESS_CODES or http_status in (401, 403):
        return UpstreamError(
            f"Upstream provider '{provider}' (Kling) rejected the gateway's credentials "
            f"({said}); your API key is fine, the gateway's Kling access_key / secret_key "
            "or account is not",
            code="upstream_auth_failed",
            retryable=False,
        )
    if number in QUOTA_CODES:
        return UpstreamError(
            f"Upstream provider '{provider}' (Kling) has no resources left ({said}); the "
            "gateway's Kling account needs its resource pack or balance topped up",
            code="upstream_quota_exceeded",
            retryable=False,
        )
    if number in POLICY_CODES:
        return ContentPolicyViolation(
            f"Upstream provider '{provider}' (Kling) refused the request under its content "
            f"policy ({said})"
        )
    if number in RATE_LIMIT_CODES or http_status == 429:
        what = "concurrency limit" if number == 1303 else "rate limit"
        return RateLimited(
            f"Upstream provider '{provider}' (Kling) is over its {what} ({said})",
            retry_after=retry_after,
        )
    if number in NOT_FOUND_CODES:
        return NotFound(
            f"Upstream provider '{provider}' (Kling) found no such resource ({said})",
            code="upstream_not_found",
        )
    if 1200 <= number < 1300:
        return InvalidRequest(
            f"Upstream provider '{provider}' (Kling) rejected the request parameters ({said})",
            code="upstream_invalid_request",
        )
    if number == 5002:
        return UpstreamTimeout(f"Upstream provider '{provider}' (Kling) timed out ({said})")
    if 5000 <= number < 6000 or (http_status or 0) >= 500:
        return UpstreamError(f"Upstream provider '{provider}' (Kling) is unavailable ({said})")
    return UpstreamError(
        f"Upstream provider '{provider}' (Kling) returned {said}",
        code="upstream_bad_request",
        retryable=False,
    )


def answer_data(
    provider: str, body: Any, *, http_status: int = 200, retry_after: float | None = None
) -> dict:
    """`data` of a successful answer (`code` 0); raises `code_error` for any other."""
    if not isinstance(body, dict) or "code" not in body:
        raise UpstreamError(f"Upstream provider '{provider}' (Kling) answered an unexpected body")
    code = body.get("code")
    if str(code) != "0" or http_status >= 400:
        raise code_error(
            provider,
            code,
            str(body.get("message") or body.get("msg") or ""),
            http_status=http_status,
            retry_after=retry_after,
        )
    data = body.get("data")
    return data if isinstance(data, dict) else {}


def parse_task_id(provider: str, data: dict) -> str:
    """The task id of a submit answer's `data`."""
    task_id = data.get("task_id")
    if not task_id:
        raise UpstreamError(
            f"Upstream provider '{provider}' (Kling) accepted the task without a task_id"
        )
    return str(task_id)


def task_status(data: dict) -> str:
    """The task's status in VideoStatus terms (queued | running | succeeded | failed);
    an unknown upstream status counts as running."""
    raw = str(data.get("task_status") or "").lower()
    status = STATUSES.get(raw)
    if status is None:
        log.debug("kling: unknown task_status %r counted as running", raw)
        return "running"
    return status


def failure_reason(data: dict) -> str:
    return str(data.get("task_status_msg") or "no reason given")[:300]


def job_failed(provider: str, data: dict) -> GatewayError:
    """The error for a failed image task: a refusal is a content-policy violation."""
    reason = failure_reason(data)
    if _looks_like_safety(reason):
        return ContentPolicyViolation(
            f"Upstream provider '{provider}' (Kling) refused the prompt: {reason}"
        )
    return UpstreamError(
        f"Upstream provider '{provider}' (Kling): the task failed: {reason}",
        code="upstream_job_failed",
        retryable=False,
    )


def _results(data: dict, key: str) -> list[dict]:
    result = data.get("task_result")
    items = result.get(key) if isinstance(result, dict) else None
    if not isinstance(items, list):
        return []
    return [item for item in items if isinstance(item, dict) and item.get("url")]


def image_urls(provider: str, data: dict) -> list[str]:
    """The result image URLs of a succeeded task, in `index` order."""
    items = _results(data, "images")
    if not items:
        raise UpstreamError(
            f"Upstream provider '{provider}' (Kling) finished the task without images",
            retryable=False,
        )
    items.sort(key=lambda item: item.get("index") if isinstance(item.get("index"), int) else 0)
    return [str(item["url"]) for item in items]


def video_status(provider: str, data: dict) -> VideoStatus:
    """A poll answer's `data` as a `VideoStatus` (the first video's URL and duration)."""
    status = task_status(data)
    if status == "failed":
        return VideoStatus("failed", error=failure_reason(data))
    if status != "succeeded":
        return VideoStatus(status)
    videos = _results(data, "videos")
    if not videos:
        raise UpstreamError(
            f"Upstream provider '{provider}' (Kling) finished the task without a video",
            retryable=False,
        )
    duration: float | None = None
    with contextlib.suppress(TypeError, ValueError):
        duration = float(videos[0].get("duration"))
    return VideoStatus(
        "succeeded", progress=1.0, result_url=str(videos[0]["url"]), duration=duration
    )


def video_task_id(kind: str, task_id: str) -> str:
    """The id `submit` hands out: the kind first, so `poll` knows the path."""
    return f"{kind}:{task_id}"


def split_task_id(task_id: str) -> tuple[str, str]:
    """(kind, Kling's task id) of an id from `video_task_id`; `NotFound` otherwise."""
    kind, _, upstream_id = (task_id or "").partition(":")
    if kind not in VIDEO_PATHS or not _TASK_ID.fullmatch(upstream_id):
        raise NotFound(
            f"No Kling video task {task_id!r}; expected image2video:<id> or text2video:<id>",
            param="task_id",
        )
    return kind, upstream_id


def _redact(text: str, secrets_sent: tuple[str, ...]) -> str:
    for value in secrets_sent:
        if value:
            text = text.replace(value, "[redacted]")
    return text


def _retry_after(response: httpx.Response) -> float | None:
    with contextlib.suppress(ValueError):
        value = float(response.headers.get("retry-after", ""))
        return value if value > 0 else None
    return None


def _is_mp4(data: bytes) -> bool:
    return data[4:8] == b"ftyp"


# --- the provider ----------------------------------------------------------------------


@register("kling")
class KlingProvider(ImageProvider, VideoProvider):
    """Kling images (`generate`) and videos (`submit`, `poll`, `wait_video`, `fetch_video`).

    `clock` (seconds, like `time.time`) dates the JWT; tests inject a frozen one.
    """

    Options: ClassVar[type[ProviderOptions]] = KlingOptions
    SECRET_FIELDS: ClassVar[tuple[str, ...]] = ("access_key", "secret_key")
    options: KlingOptions

    def __init__(
        self,
        name: str,
        options: ProviderOptions,
        http: httpx.AsyncClient,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(name, options, http)
        assert isinstance(options, KlingOptions)
        access_key = options.access_key.get_secret_value()
        secret_key = options.secret_key.get_secret_value()
        self._secrets = (secret_key, access_key)
        self._tokens = TokenSource(access_key, secret_key, clock)
        self._timeout: Any = (
            options.timeout if options.timeout is not None else httpx.USE_CLIENT_DEFAULT
        )

    def configured_models(self) -> dict[str, str]:
        return {"image": self.options.image_model, "video": self.options.video_model}

    async def list_models(self) -> list[str] | None:
        """Kling has no model list: None, after a cheap signed call (the first page of the
        image task list) so a probe still finds out whether the keys are accepted."""
        await self._call("GET", IMAGE_PATH, params={"pageNum": 1, "pageSize": 1})
        return None

    # -- sending -----------------------------------------------------------------------

    @contextlib.contextmanager
    def _upstream(self, secrets_sent: tuple[str, ...] = ()) -> Iterator[None]:
        """`upstream_call` (secret key redacted), and neither key nor token in a message."""
        secrets_sent = (*secrets_sent, *self._secrets)
        try:
            with upstream_call(self.name, self._secrets[0]):
                yield
        except GatewayError as exc:
            redacted = _redact(exc.message, secrets_sent)
            if redacted != exc.message:
                exc.message = redacted
                exc.args = (redacted,)
            raise

    async def _call(
        self,
        method: str,
        path: str,
        *,
        json: dict | None = None,
        params: dict | None = None,
    ) -> dict:
        """One signed call; the answer's `data`. Error answers are mapped by `code_error`,
        with any echo of the keys or the token cut out first."""
        token = self._tokens.token()
        secrets_sent = (token, *self._secrets)
        with self._upstream(secrets_sent):
            response = await self.http.request(
                method,
                f"{self.options.base_url}{path}",
                json=json,
                params=params,
                headers={"Authorization": f"Bearer {token}"},
                timeout=self._timeout,
            )
            body: Any = None
            with contextlib.suppress(ValueError):
                body = response.json()
            has_code = isinstance(body, dict) and "code" in body
            if not response.is_success or (has_code and str(body.get("code")) != "0"):
                # For the operator; an upstream may echo the token or a key: cut out first.
                log.warning(
                    "upstream %s answered %s on %s %s: %s",
                    self.name, response.status_code, method, path,
                    _redact(response.text[:LOGGED_BODY_CHARS], secrets_sent),
                )  # fmt: skip
            if has_code:
                message = _redact(str(body.get("message") or ""), secrets_sent)
                return answer_data(
                    self.name,
                    {**body, "message": message},
                    http_status=response.status_code,
                    retry_after=_retry_after(response),
                )
            if not response.is_success:
                raise upstream_status_error(self.name, response)
            raise UpstreamError(
                f"Upstream provider '{self.name}' (Kling) answered {method} {path} with an "
                "unexpected body"
            )

    async def _wait(
        self,
        task_id: str,
        started: float,
        poll_once: Callable[[], Awaitable[T | None]],
        seconds: float | None = None,
    ) -> T:
        """`poll_once()` every `poll_interval` until it gives a result (None: not done).

        Transient poll errors are tolerated until `deadline` seconds after `started` (the
        task keeps running upstream); past it, `UpstreamTimeout` `upstream_job_timeout`,
        not retried: the task may still be running, and billed, upstream. `seconds`
        defaults to the `deadline` option."""
        seconds = self.options.deadline if seconds is None else seconds
        deadline = started + seconds
        last_problem = ""
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise UpstreamTimeout(
                    f"Upstream provider '{self.name}' (Kling): task {task_id} did not finish "
                    f"within {seconds:g} s{last_problem}",
                    code="upstream_job_timeout",
                    retryable=False,
                )
            await anyio.sleep(min(self.options.poll_interval, remaining))
            try:
                result = await poll_once()
            except GatewayError as exc:
                if not exc.retryable:
                    raise
                log.warning("provider %s: poll of task %s failed: %s", self.name, task_id, exc)
                last_problem = f" (last poll: {exc.message})"
                continue
            if result is not None:
                return result

    async def _image_task_done(self, task_id: str) -> dict | None:
        """The task's `data` once it succeeded, None while it runs; raises when it failed."""
        data = await self._call("GET", f"{IMAGE_PATH}/{task_id}")
        status = task_status(data)
        if status == "failed":
            raise job_failed(self.name, data)
        return data if status == "succeeded" else None

    # -- images ------------------------------------------------------------------------

    async def generate(self, request: ImageRequest) -> list[ImageData]:
        model = request.model or self.options.image_model
        build = build_image_payload
        kwargs = {
            "image_fidelity": self.options.image_fidelity,
            "image_reference": self.options.image_reference,
            "negative_prompt": self.options.negative_prompt,
        }
        if request.references:  # megabytes of base64: off the event loop
            payload = await anyio.to_thread.run_sync(lambda: build(request, model, **kwargs))
        else:
            payload = build(request, model, **kwargs)
        started = time.monotonic()
        task_id = parse_task_id(self.name, await self._call("POST", IMAGE_PATH, json=payload))
        log.debug("provider %s: image task %s submitted", self.name, task_id)
        data = await self._wait(task_id, started, functools.partial(self._image_task_done, task_id))
        urls = image_urls(self.name, data)[: request.n]
        tasks = [asyncio.ensure_future(self._image(url)) for url in urls]
        try:
            return list(await asyncio.gather(*tasks))
        except BaseException:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise

    async def _image(self, url: str) -> ImageData:
        data = await self._download(
            url,
            limit=self.options.max_download_bytes,
            what="image",
            limit_option="max_download_bytes",
            accept=lambda content_type: content_type.startswith("image/"),
        )
        try:
            return ImageData.from_bytes(data)
        except ValueError:
            raise UpstreamError(
                f"Upstream provider '{self.name}' (Kling) returned data that is not a PNG, "
                "JPEG, WebP or GIF image",
                retryable=False,
            ) from None

    # -- videos ------------------------------------------------------------------------

    async def submit(
        self,
        prompt: str,
        *,
        first_frame: ImageData | None = None,
        last_frame: ImageData | None = None,
        external_id: str | None = None,
        **params: Any,
    ) -> str:
        """Start an image2video job (with `first_frame`) or a text2video job; returns
        `"image2video:<id>"` / `"text2video:<id>"` for `poll`. `external_id` is sent as
        Kling's `external_task_id` (unique within the account), for `find`.

        `params`: `model` (default `video_model`), `duration` (5 | 10, default
        `video_duration`), `mode` (std | pro, default `video_mode`), `cfg_scale` (0-1),
        `negative_prompt`, `aspect_ratio` (text2video). Inputs are checked by
        `check_video_inputs` before any upstream call.
        """

        def take(name: str, default: Any = None) -> Any:
            value = params.pop(name, None)
            return default if value is None else value

        model = take("model") or self.options.video_model
        checked = {
            "duration": take("duration", self.options.video_duration),
            "mode": take("mode", self.options.video_mode),
            "cfg_scale": take("cfg_scale"),
            "negative_prompt": take("negative_prompt"),
            "aspect_ratio": take("aspect_ratio"),
        }
        if params:
            name = sorted(params)[0]
            raise InvalidRequest(f"Kling videos take no {name!r}", param=name)

        def prepare() -> dict:
            inputs = check_video_inputs(
                prompt, first_frame=first_frame, last_frame=last_frame, **checked
            )
            return {"kind": inputs.kind, "payload": build_video_payload(inputs, model)}

        if first_frame is not None:  # megabytes of base64: off the event loop
            prepared = await anyio.to_thread.run_sync(prepare)
        else:
            prepared = prepare()
        kind = prepared["kind"]
        if external_id is not None:
            prepared["payload"]["external_task_id"] = external_id
        data = await self._call("POST", VIDEO_PATHS[kind], json=prepared["payload"])
        task_id = video_task_id(kind, parse_task_id(self.name, data))
        log.debug("provider %s: video task %s submitted", self.name, task_id)
        return task_id

    async def find(self, external_id: str, *, from_image: bool) -> str | None:
        """Kling's query path takes a task id or an `external_task_id`: the job's task
        id, or None when Kling has no job by that id (code 1203)."""
        kind = "image2video" if from_image else "text2video"
        try:
            data = await self._call("GET", f"{VIDEO_PATHS[kind]}/{external_id}")
        except NotFound:
            return None
        return video_task_id(kind, parse_task_id(self.name, data))

    async def poll(self, task_id: str) -> VideoStatus:
        kind, upstream_id = split_task_id(task_id)
        data = await self._call("GET", f"{VIDEO_PATHS[kind]}/{upstream_id}")
        return video_status(self.name, data)

    async def wait_video(self, task_id: str) -> VideoStatus:
        """Poll every `poll_interval` until the job succeeded or failed (returned as its
        status); `UpstreamTimeout` (`upstream_job_timeout`) past `video_deadline`. Transient
        poll errors are tolerated until then."""
        split_task_id(task_id)

        async def finished() -> VideoStatus | None:
            status = await self.poll(task_id)
            return status if status.status in ("succeeded", "failed") else None

        return await self._wait(task_id, time.monotonic(), finished, self.options.video_deadline)

    async def fetch_video(self, url: str) -> bytes:
        """The MP4 at a succeeded job's `result_url` (at most `max_video_bytes`, retried
        on transient errors like image downloads)."""
        data = await self._download(
            url,
            limit=self.options.max_video_bytes,
            what="video",
            limit_option="max_video_bytes",
            accept=lambda t: t.startswith(("video/", "application/octet-stream")),
        )
        if not _is_mp4(data):
            raise UpstreamError(
                f"Upstream provider '{self.name}' (Kling) returned a video that is not an MP4",
                retryable=False,
            )
        return data

    # -- downloads ---------------------------------------------------------------------

    async def _download(
        self,
        url: str,
        *,
        limit: int,
        what: str,
        limit_option: str,
        accept: Callable[[str], bool],
    ) -> bytes:
        """A result file, retried on transient trouble (`download_attempts` in all). The
        URL is Kling's CDN: no token goes with it."""
        if not url.startswith(("http://", "https://")):
            raise UpstreamError(
                f"Upstream provider '{self.name}' (Kling) returned an unusable {what} URL",
                retryable=False,
            )
        attempts = self.options.download_attempts
        for attempt in range(1, attempts + 1):
            try:
                with self._upstream():
                    return await self._fetch(url, limit, what, limit_option, accept)
            except GatewayError as exc:
                if not exc.retryable or attempt == attempts:
                    raise
                log.warning(
                    "provider %s: %s download failed (%s), attempt %d of %d",
                    self.name, what, exc.message, attempt, attempts,
                )  # fmt: skip
                await anyio.sleep(min(self.options.poll_interval, 0.5 * attempt))
        raise AssertionError("unreachable")

    async def _fetch(
        self, url: str, limit: int, what: str, limit_option: str, accept: Callable[[str], bool]
    ) -> bytes:
        async with self.http.stream("GET", url, timeout=self._timeout) as response:
            if not response.is_success:
                await response.aread()  # the error mapping reads the body
                response.raise_for_status()
            content_type = response.headers.get("content-type", "").lower()
            if not accept(content_type):
                raise UpstreamError(
                    f"Upstream provider '{self.name}' (Kling): the generated {what} URL served "
                    f"{content_type.split(';')[0] or 'no content type'}, not a {what}",
                    retryable=False,
                )
            return await read_limited(
                response,
                limit,
                f"Upstream provider '{self.name}' (Kling): the generated {what} is larger than "
                f"the limit ({limit} bytes, from {limit_option})",
            )
