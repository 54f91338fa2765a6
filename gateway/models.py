"""Which model a request names: a post model, its outline-only twin, an image model or a
video model."""

from __future__ import annotations

import math
from dataclasses import dataclass

from gateway.config import GatewayConfig, ImageModelConfig, PostModelConfig, VideoModelConfig
from gateway.errors import InvalidRequest, ModelNotFound

ASPECT_RATIOS = ("1:1", "3:4", "4:3", "2:3", "3:2", "9:16", "16:9")


@dataclass(frozen=True)
class ResolvedModel:
    name: str
    kind: str  # post | outline | image | video
    post: PostModelConfig | None = None
    image: ImageModelConfig | None = None
    post_name: str | None = None
    video: VideoModelConfig | None = None


def resolve_model(config: GatewayConfig, name: str) -> ResolvedModel:
    if name in config.post_models:
        return ResolvedModel(name, "post", post=config.post_models[name], post_name=name)
    # `X-plan` answers with the outline, drawn when the user says so; `X-outline` is its
    # older name, still accepted
    for suffix in ("-plan", "-outline"):
        base = name.removesuffix(suffix)
        if name.endswith(suffix) and base in config.post_models:
            return ResolvedModel(name, "outline", post=config.post_models[base], post_name=base)
    if name in config.image_models:
        return ResolvedModel(name, "image", image=config.image_models[name])
    if name in config.video_models:
        return ResolvedModel(name, "video", video=config.video_models[name])
    raise ModelNotFound(
        f"The model '{name}' does not exist. Available: {', '.join(config.model_ids())}.",
        param="model",
    )


def aspect_ratio_for_size(size: str | None, default: str) -> str:
    """The standard aspect ratio nearest to a "WxH" size ("auto"/None → default)."""
    if not size or size == "auto":
        return default
    try:
        w, h = (int(v) for v in size.lower().split("x"))
    except ValueError as exc:
        raise InvalidRequest(f"Invalid size {size!r}: use WIDTHxHEIGHT", param="size") from exc
    if w <= 0 or h <= 0:
        raise InvalidRequest(f"Invalid size {size!r}", param="size")
    ratio = math.log(w / h)

    def distance(candidate: str) -> float:
        a, b = (int(v) for v in candidate.split(":"))
        return abs(math.log(a / b) - ratio)

    return min(ASPECT_RATIOS, key=distance)
