"""`POST /v1/chat/completions`: posts as markdown, image models, OpenWebUI tasks."""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from gateway.auth import CurrentKey
from gateway.errors import GatewayError, InvalidRequest
from gateway.flow.outline import requested_page_count
from gateway.flow.render import Piece, PostMarkdown, language_of
from gateway.flow.runner import load_post
from gateway.models import ResolvedModel, resolve_model
from gateway.references import collect_references
from gateway.routes.common import AppState, own_image_loader, post_public, state_of
from gateway.schemas import ChatCompletionRequest
from gateway.urls import base_url, image_url, signed_download_url
from providers.base import ImageRequest, message_text

router = APIRouter()

_KEEPALIVE = object()
_END = object()


def _chunk(cid: str, created: int, model: str, delta: dict, finish: str | None = None) -> str:
    body = {
        "id": cid,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "system_fingerprint": None,
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }
    return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"


def _usage(prompt_text: str, answer: str) -> dict:
    # An estimate (about 4 characters a token): the gateway does not tokenize.
    p, c = max(1, len(prompt_text) // 4), max(1, len(answer) // 4)
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}


async def _with_keepalive(pieces: AsyncIterator[Piece], seconds: float) -> AsyncIterator[Any]:
    """The pieces, with `_KEEPALIVE` whenever `seconds` pass without one."""
    queue: asyncio.Queue = asyncio.Queue()

    async def pump() -> None:
        try:
            async for piece in pieces:
                queue.put_nowait(piece)
            queue.put_nowait(_END)
        except Exception as exc:  # delivered to the consumer, which raises it
            queue.put_nowait(exc)

    task = asyncio.create_task(pump())
    try:
        while True:
            try:
                item = await asyncio.wait_for(queue.get(), seconds)
            except TimeoutError:
                yield _KEEPALIVE
                continue
            if item is _END:
                return
            if isinstance(item, Exception):
                raise item
            yield item
    finally:
        task.cancel()


def _is_task_prompt(text: str) -> bool:
    # OpenWebUI's housekeeping (title, tags, follow-ups, ...) prompts start so.
    return text.lstrip().startswith("### Task:")


async def _task_answer(
    state: AppState, model: ResolvedModel, messages: list[dict]
) -> AsyncIterator[Piece]:
    config = state.config()
    if model.post is not None:
        provider, text_model = config.text_provider(model.post.text_provider), model.post.text_model
    else:
        provider, text_model = config.text_provider("local"), None
    async for delta in provider.stream_chat(messages, model=text_model):
        yield Piece(delta)


async def _post_answer(
    request: Request,
    state: AppState,
    key: CurrentKey,
    model: ResolvedModel,
    topic: str,
    messages: list[dict],
    holder: dict,
) -> AsyncIterator[Piece]:
    refs = await collect_references(messages, state.http, own_image_loader(state))
    run = await state.runner.start(
        topic=topic,
        model=model.post_name,
        owner_key_id=key.key_id,
        page_count=requested_page_count(topic),
        references=refs,
        outline_only=model.kind == "outline",
    )
    holder["post_id"] = run.post_id
    base = base_url(state.settings, request)
    md = PostMarkdown(
        lang=language_of(topic),
        image_url=lambda image_id, ext: image_url(base, image_id, ext),
        download_url=signed_download_url(state.settings, base, run.post_id, key.key_id),
        outline_only=model.kind == "outline",
    )
    for piece in md.start():
        yield piece
    while True:
        event = await run.events.get()
        if event.kind == "error":
            raise event.data["error"]
        for piece in md.feed(event):
            yield piece
        if event.kind == "finished":
            return


async def _image_answer(
    request: Request,
    state: AppState,
    key: CurrentKey,
    model: ResolvedModel,
    prompt: str,
    messages: list[dict],
) -> AsyncIterator[Piece]:
    assert model.image is not None
    refs = await collect_references(messages, state.http, own_image_loader(state))
    yield Piece("⏳ …\n\n", progress=True)
    images = await state.runner.generate_image(
        model.image.provider,
        ImageRequest(
            prompt=prompt,
            references=refs,
            aspect_ratio=model.image.aspect_ratio,
            model=model.image.model,
        ),
    )
    base = base_url(state.settings, request)
    for i, image in enumerate(images):
        row = await state.images.put(image.data, owner_key_id=key.key_id)
        yield Piece(f"![image {i + 1}]({image_url(base, row.id, row.ext)})\n\n")


@router.post("/v1/chat/completions")
async def chat_completions(body: ChatCompletionRequest, request: Request, key: CurrentKey):
    state = state_of(request)
    model = resolve_model(state.config(), body.model)
    messages = [m.model_dump(exclude_none=True) for m in body.messages]
    last_user = next((m for m in reversed(messages) if m.get("role") == "user"), None)
    if last_user is None:
        raise InvalidRequest("The messages need at least one user message", param="messages")
    text = message_text(last_user).strip()
    holder: dict = {}
    if _is_task_prompt(text):
        pieces = _task_answer(state, model, messages)
    elif not text:
        raise InvalidRequest("The last user message has no text (the topic)", param="messages")
    elif model.kind == "image":
        pieces = _image_answer(request, state, key, model, text, messages)
    else:
        pieces = _post_answer(request, state, key, model, text, messages, holder)

    cid = "chatcmpl-" + secrets.token_hex(12)
    created = int(time.time())
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return StreamingResponse(
            _sse(pieces, state, cid, created, body.model, text, include_usage),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
    content = "".join([p.text async for p in pieces if not p.progress])
    answer: dict = {
        "id": cid,
        "object": "chat.completion",
        "created": created,
        "model": body.model,
        "system_fingerprint": None,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content, "refusal": None},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": _usage(text, content),
    }
    if holder.get("post_id"):
        loaded = await load_post(state.db, holder["post_id"])
        if loaded:
            answer["post"] = await post_public(request, state, *loaded)
    return JSONResponse(answer)


async def _sse(
    pieces: AsyncIterator[Piece],
    state: AppState,
    cid: str,
    created: int,
    model: str,
    prompt_text: str,
    include_usage: bool,
) -> AsyncIterator[str]:
    yield _chunk(cid, created, model, {"role": "assistant", "content": ""})
    answer: list[str] = []
    try:
        async for item in _with_keepalive(pieces, state.settings.keepalive_seconds):
            if item is _KEEPALIVE:
                yield ": keep-alive\n\n"
                continue
            answer.append(item.text)
            yield _chunk(cid, created, model, {"content": item.text})
    except GatewayError as exc:
        yield f"data: {json.dumps(exc.body(), ensure_ascii=False)}\n\n"
        yield "data: [DONE]\n\n"
        return
    yield _chunk(cid, created, model, {}, finish="stop")
    if include_usage:
        usage = {
            "id": cid,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [],
            "usage": _usage(prompt_text, "".join(answer)),
        }
        yield f"data: {json.dumps(usage)}\n\n"
    yield "data: [DONE]\n\n"
