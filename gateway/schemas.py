"""Request bodies of the OpenAI routes (what clients send, validated)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[dict[str, Any]] | None = None


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")

    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    # Clients send many sampling fields (top_p, user, seed, ...): accept them.
    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1)
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(default=None, ge=0, le=2)
    max_tokens: int | None = Field(default=None, ge=1)
    n: int | None = Field(default=None, ge=1, le=1)


class ImageGenerationRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(min_length=1, max_length=32000)
    model: str | None = None
    n: int | None = Field(default=None, ge=1, le=18)
    size: str | None = Field(default=None, pattern=r"^(auto|\d{2,5}x\d{2,5})$")
    response_format: Literal["url", "b64_json"] | None = None
    quality: str | None = None
    style: str | None = None
    user: str | None = None
    background: str | None = None
    moderation: str | None = None
    output_format: str | None = None
    output_compression: int | None = None


class ImageEditRequest(BaseModel):
    """The fields of `/v1/images/edits` besides the images and mask (multipart or JSON)."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(min_length=1, max_length=32000)
    model: str | None = None
    n: int | None = Field(default=None, ge=1, le=18)
    size: str | None = Field(default=None, pattern=r"^(auto|\d{2,5}x\d{2,5})$")
    response_format: Literal["url", "b64_json"] | None = None
    quality: str | None = None
    user: str | None = None
    background: str | None = None
    input_fidelity: str | None = None
    output_format: str | None = None
    output_compression: int | None = None
