"""Video requests checked before anything is stored or sent, and the errors a video job
ends with (gateway/flow/videos.py runs the jobs)."""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Any

import anyio

from gateway.config import VideoModelConfig
from gateway.errors import (
    ContentPolicyViolation,
    GatewayError,
    InvalidRequest,
    UpstreamError,
    UpstreamTimeout,
)
from providers.base import ImageData
from storage.video_tables import Video

# A nominal `size` for the video object when the request gave none (OpenAI's shape).
NOMINAL_SIZES = {"16:9": "1280x720", "9:16": "720x1280", "1:1": "720x720"}
_SAFETY_WORDS = ("risk", "safety", "content policy", "sensitive", "violat", "nsfw", "违规", "敏感")
# check_video_inputs names the provider's parameters; the API names them OpenAI's way
API_PARAMS = {
    "first_frame": "input_reference",
    "last_frame": "image_tail",
    "duration": "seconds",
    "aspect_ratio": "size",
}


@dataclass(frozen=True)
class VideoSpec:
    """A checked video request: what the row records and what `submit` gets.

    `params` are the provider's own `submit` parameters (`model`, `duration`, `mode`,
    `cfg_scale`, `negative_prompt`, `aspect_ratio`); `seconds` and `size` are what the
    video object shows.
    """

    model: str
    provider: str
    prompt: str
    seconds: str
    size: str
    params: dict[str, Any] = field(default_factory=dict)
    first_frame: ImageData | None = None
    last_frame: ImageData | None = None


def _as_png_or_jpeg(image: ImageData | None) -> ImageData | None:
    """WebP and GIF frames (our own images can be either) as PNG: upstream video APIs take
    JPG or PNG. Blocking (Pillow): call from a thread."""
    if image is None or image.mime in ("image/png", "image/jpeg"):
        return image
    from PIL import Image

    with Image.open(io.BytesIO(image.data)) as im:
        im.seek(0)
        frame = im.convert("RGBA" if "A" in im.getbands() or "transparency" in im.info else "RGB")
        out = io.BytesIO()
        frame.save(out, "PNG")
    return ImageData(out.getvalue(), "image/png")


def _frame_size(image: ImageData) -> str:
    """The nominal size of an image-to-video job: the first frame's shape at 720 px on
    its shorter side (the frame sets the video's shape)."""
    from PIL import Image

    with Image.open(io.BytesIO(image.data)) as im:
        width, height = im.size
    scale = 720 / min(width, height)
    return f"{round(width * scale / 2) * 2}x{round(height * scale / 2) * 2}"


def _check(
    model_name: str,
    config: VideoModelConfig,
    prompt: str,
    first_frame: ImageData | None,
    last_frame: ImageData | None,
    seconds: Any,
    size: str | None,
    mode: str | None,
    cfg_scale: Any,
    negative_prompt: str | None,
) -> VideoSpec:
    # Kling is the one video upstream so far: its rules are the gateway's (pure checks,
    # no call); another provider would bring its own checker.
    from providers.kling import check_video_inputs

    first = _as_png_or_jpeg(first_frame)
    last = _as_png_or_jpeg(last_frame)
    try:
        inputs = check_video_inputs(
            prompt,
            first_frame=first,
            last_frame=last,
            duration=config.seconds if seconds is None or seconds == "" else seconds,
            mode=mode or config.mode or "std",
            cfg_scale=cfg_scale,
            negative_prompt=negative_prompt,
            aspect_ratio=size or config.aspect_ratio,
        )
    except InvalidRequest as exc:
        renamed = API_PARAMS.get(exc.param or "", exc.param)
        if renamed != exc.param:
            exc.message = exc.message.replace(str(exc.param), str(renamed), 1)
            exc.args = (exc.message,)
            exc.param = renamed
        raise
    if size:
        shown = size
    elif inputs.first_frame is not None:
        shown = _frame_size(inputs.first_frame)
    else:
        shown = NOMINAL_SIZES.get(inputs.aspect_ratio or "", "")
    params = {
        "model": config.model,
        "duration": int(inputs.duration),
        "mode": mode or config.mode,  # None: the provider's own default
        "cfg_scale": inputs.cfg_scale,
        "negative_prompt": inputs.negative_prompt,
        "aspect_ratio": inputs.aspect_ratio,
    }
    return VideoSpec(
        model=model_name,
        provider=config.provider,
        prompt=inputs.prompt,
        seconds=inputs.duration,
        size=shown,
        params={k: v for k, v in params.items() if v is not None},
        first_frame=inputs.first_frame,
        last_frame=inputs.last_frame,
    )


async def check_video_request(
    model_name: str,
    config: VideoModelConfig,
    prompt: str,
    *,
    first_frame: ImageData | None = None,
    last_frame: ImageData | None = None,
    seconds: Any = None,
    size: str | None = None,
    mode: str | None = None,
    cfg_scale: Any = None,
    negative_prompt: str | None = None,
) -> VideoSpec:
    """The request checked before anything is stored or sent: `InvalidRequest` naming the
    API's parameter (`input_reference`, `image_tail`, `seconds`, `size`, `mode`, ...).
    `seconds` and `mode` default to the model's; `size` ("WxH") picks a text-to-video
    job's aspect ratio (the first frame sets an image-to-video job's shape)."""
    if size is not None and size != "":
        parts = size.lower().split("x")
        if len(parts) != 2 or not all(p.isdigit() and int(p) > 0 for p in parts):
            raise InvalidRequest(f"Invalid size {size!r}: use WIDTHxHEIGHT", param="size")
    return await anyio.to_thread.run_sync(
        _check, model_name, config, prompt, first_frame, last_frame, seconds, size or None,
        mode, cfg_scale, negative_prompt,
    )  # fmt: skip


# --- errors -----------------------------------------------------------------------------


def upstream_failed(provider: str, reason: str | None) -> GatewayError:
    """The error of an upstream job whose status is failed: a refusal is a content-policy
    violation."""
    reason = (reason or "no reason given").strip()[:300]
    low = reason.lower()
    if any(word in low for word in _SAFETY_WORDS):
        return ContentPolicyViolation(
            f"Upstream provider '{provider}' refused to make the video: {reason}"
        )
    return UpstreamError(
        f"Upstream provider '{provider}': the video task failed: {reason}",
        code="upstream_job_failed",
        retryable=False,
    )


def stored_error(row: Video) -> GatewayError:
    """A failed video's error as an exception (chat answers raise it)."""
    message = row.error_message or "The video could not be made"
    code = row.error_code or "upstream_error"
    if code == "content_policy_violation":
        return ContentPolicyViolation(message)
    if code in ("upstream_job_timeout", "upstream_timeout"):
        return UpstreamTimeout(message, code=code, retryable=False)
    if code == "internal_error":
        return GatewayError(message)
    return UpstreamError(message, code=code, retryable=False)
