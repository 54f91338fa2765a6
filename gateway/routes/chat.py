"""`POST /v1/chat/completions`: posts as markdown, image models, OpenWebUI tasks."""

from __future__ import annotations

import json
import re
import secrets
import time
from collections.abc import AsyncIterator

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from gateway import usage
from gateway.auth import CurrentKey
from gateway.errors import GatewayError, InvalidRequest
from gateway.flow.commands import (
    Edit,
    build_edit_messages,
    check_edits,
    describe,
    parse_command,
    parse_edit_answer,
    sequential,
)
from gateway.flow.copy import PostCopy
from gateway.flow.editing import DRAWING_OPS, PageDraft, apply_edits, save_pages
from gateway.flow.outline import requested_page_count
from gateway.flow.render import TEXT, Piece, PostMarkdown, language_of, replay
from gateway.flow.runner import flow_event, load_post
from gateway.limits import check_image_quota, check_model, check_new_post
from gateway.models import ResolvedModel, resolve_model
from gateway.references import collect_edit_references, collect_references
from gateway.routes.common import (
    KEEPALIVE,
    AppState,
    own_image_loader,
    post_public,
    state_of,
    with_keepalive,
)
from gateway.routes.videos import chat_video_answer
from gateway.schemas import ChatCompletionRequest
from gateway.urls import base_url, image_url, signed_download_url
from providers.base import ImageRequest, message_text
from storage.tables import Page, Post

router = APIRouter()


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
    refs = await collect_references(
        messages,
        state.http,
        own_image_loader(state),
        allow_external=state.settings.fetch_external_images,
    )
    run = await state.runner.start(
        topic=topic,
        model=model.post_name,
        owner_key_id=key.key_id,
        page_count=requested_page_count(topic),
        references=refs,
        outline_only=model.kind == "outline",
    )
    holder["post_id"] = run.post_id
    md = _markdown(request, state, run.post_id, key.key_id, topic, model.kind == "outline")
    for piece in md.start():
        yield piece
    async for piece in _follow(state, md, run.post_id, run.after_seq):
        yield piece


def _markdown(
    request: Request, state: AppState, post_id: str, owner: str | None, text: str, plan: bool
) -> PostMarkdown:
    base = base_url(state.settings, request)
    return PostMarkdown(
        lang=language_of(text),
        image_url=lambda image_id, ext: image_url(base, image_id, ext),
        download_url=signed_download_url(state.settings, base, post_id, owner),
        outline_only=plan,
        post_id=post_id,
    )


async def _follow(
    state: AppState, md: PostMarkdown, post_id: str, after: int
) -> AsyncIterator[Piece]:
    """The post's stored events after `after` as markdown, until its job finishes
    (whichever process runs it: a resumed job streams the same way)."""
    async for stored in state.runner.follow(post_id, after):
        event = flow_event(stored)
        if event.kind == "error":
            raise event.data["error"]
        for piece in md.feed(event):
            yield piece
        if event.kind == "finished":
            return


_POST_LINK = re.compile(r"/v1/posts/(post_[A-Za-z0-9_-]{16,64})/download")


async def _conversation_post(
    state: AppState, key: CurrentKey, messages: list[dict]
) -> tuple[Post, list[Page]] | None:
    """The post the conversation is about: the latest one named in an assistant
    message (its download link), if it is the caller's."""
    for message in reversed(messages[:-1]):
        if message.get("role") != "assistant":
            continue
        found = _POST_LINK.findall(message_text(message))
        if not found:
            continue
        loaded = await load_post(state.db, found[-1])
        if loaded is None or not (key.is_master or loaded[0].owner_key_id == key.key_id):
            return None
        return loaded
    return None


async def _read_edits(
    state: AppState, post: Post, pages: list[Page], text: str, lang: str
) -> list[Edit]:
    """The edits a follow-up message asks for: a known command, else the text model's
    structured reading of it (JSON, validated)."""
    edits = parse_command(text)
    if edits is not None:
        return check_edits(edits, len(pages), lang=lang)
    config = state.config()
    cfg = config.post_models.get(post.model)
    if cfg is None:
        raise InvalidRequest(f"The post's model {post.model!r} is no longer configured")
    provider = config.text_provider(cfg.text_provider)
    messages = build_edit_messages(text, post.topic, [(p.type, p.text) for p in pages])

    async def call() -> str:
        async with state.runner.slots.slot(
            cfg.text_provider, config.provider_limits.get(cfg.text_provider)
        ):
            return await provider.chat(messages, model=cfg.text_model, temperature=0.2)

    answer = await state.runner.with_retries(call, what=f"edit of {post.id}")
    return parse_edit_answer(answer, len(pages), lang=lang)


async def _followup_answer(
    request: Request,
    state: AppState,
    key: CurrentKey,
    model: ResolvedModel,
    loaded: tuple[Post, list[Page]],
    text: str,
    messages: list[dict],
    holder: dict,
) -> AsyncIterator[Piece]:
    """A later turn of a conversation about a post: apply the edit, draw what it
    changed, then show the whole post. A post still generating is followed instead."""
    post, pages = loaded
    lang = language_of(post.topic)
    t = TEXT[lang]
    holder["post_id"] = post.id
    if await state.runner.is_active(post.id):
        md = _markdown(request, state, post.id, post.owner_key_id, post.topic, False)
        yield from_pieces(md.link())
        yield Piece(t["still"] + "\n\n", progress=True)
        async for piece in _progress(
            state, md, post.id, await state.runner.events.last_seq(post.id)
        ):
            yield piece
        async for piece in _whole_post(request, state, post.id, lang, plan=False):
            yield piece
        return
    try:
        edits = await _read_edits(state, post, pages, text, lang)
    except ValueError as exc:
        yield Piece(f"⚠️ {exc}\n\n{t['edit_hint']}\n")
        return
    fresh = next((e for e in edits if e.op == "new_post"), None)
    if fresh is not None:
        async for piece in _post_answer(
            request, state, key, model, fresh.text or text, messages, holder
        ):
            yield piece
        return
    draft = post.status == "draft"
    wants_drawing = any(e.op in DRAWING_OPS for e in edits)
    if draft:  # an outline being planned: text edits stay text until "generate"
        wants_drawing = any(e.op in ("generate", "regenerate", "cover", "retry") for e in edits)
    try:
        # the user numbers pages as they were; apply_edits applies one edit at a time
        ordered = sequential(
            edits, len(pages), last_is_summary=bool(pages) and pages[-1].type == "summary"
        )
        new_pages = apply_edits(
            [PageDraft.of(p) for p in pages], ordered, draw=wants_drawing or not draft
        )
    except ValueError as exc:
        yield Piece(f"⚠️ {exc}\n")
        return
    if wants_drawing and draft:
        new_pages = [p.redraw() if p.status != "done" else p for p in new_pages]
    await save_pages(state.db, post.id, new_pages)
    md = _markdown(request, state, post.id, post.owner_key_id, post.topic, False)
    yield from_pieces(md.link())
    yield Piece(describe(edits, lang) + "\n\n")
    plan = draft and not wants_drawing
    if not plan and any(p.status == "pending" for p in new_pages):
        run = await state.runner.submit(post.id)
        if run is not None:
            yield Piece(t["drawing"] + "\n\n", progress=True)
            async for piece in _progress(state, md, post.id, run.after_seq):
                yield piece
    async for piece in _whole_post(request, state, post.id, lang, plan=plan):
        yield piece


def from_pieces(pieces: list[Piece]) -> Piece:
    return Piece("".join(p.text for p in pieces), progress=any(p.progress for p in pieces))


async def _progress(
    state: AppState, md: PostMarkdown, post_id: str, after: int
) -> AsyncIterator[Piece]:
    """Progress lines (streams only) until the post's job finishes."""
    t = TEXT[md.lang]
    async for stored in state.runner.follow(post_id, after):
        if stored.kind == "page_done" and stored.page is not None:
            yield Piece(t["page_ready"].format(n=stored.page + 1) + "\n\n", progress=True)
        elif stored.kind == "finished":
            error = flow_event(stored).data.get("error")
            if error is not None:
                raise error
            return


async def _whole_post(
    request: Request, state: AppState, post_id: str, lang: str, *, plan: bool
) -> AsyncIterator[Piece]:
    loaded = await load_post(state.db, post_id)
    if loaded is None:
        return
    post, pages = loaded
    md = _markdown(request, state, post.id, post.owner_key_id, post.topic, plan)
    md.lang = lang
    if post.copy_json:
        md.copy = PostCopy.from_json(post.copy_json)
    rows = await state.images.get_many([p.image_id for p in pages if p.image_id])
    images = {image_id: row.ext for image_id, row in rows.items()}
    for piece in replay(md, pages, images, post.status):
        yield piece
    if not plan:
        yield Piece("\n" + TEXT[lang]["edit_hint"] + "\n")


async def _image_answer(
    request: Request,
    state: AppState,
    key: CurrentKey,
    model: ResolvedModel,
    prompt: str,
    messages: list[dict],
) -> AsyncIterator[Piece]:
    assert model.image is not None
    # Editing over several turns: the picture of the previous answer goes back up.
    refs = await collect_edit_references(
        messages,
        state.http,
        own_image_loader(state),
        allow_external=state.settings.fetch_external_images,
    )
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
        usage.add_images(request, 1)
        yield Piece(f"![image {i + 1}]({image_url(base, row.id, row.ext)})\n\n")


@router.post("/v1/chat/completions")
async def chat_completions(body: ChatCompletionRequest, request: Request, key: CurrentKey):
    state = state_of(request)
    model = resolve_model(state.config(), body.model)
    usage.note(request, model=model.name)
    check_model(key, model)
    messages = [m.model_dump(exclude_none=True) for m in body.messages]
    last_user = next((m for m in reversed(messages) if m.get("role") == "user"), None)
    if last_user is None:
        raise InvalidRequest("The messages need at least one user message", param="messages")
    text = message_text(last_user).strip()
    # the usage row's notes: `post_id` lands there once the post exists
    holder: dict = request.scope.setdefault("state", {}).setdefault(usage.NOTE, {})
    if _is_task_prompt(text):
        pieces = _task_answer(state, model, messages)
    elif not text:
        raise InvalidRequest("The last user message has no text (the topic)", param="messages")
    elif model.kind == "image":
        await check_image_quota(state.db, key)
        pieces = _image_answer(request, state, key, model, text, messages)
    elif model.kind == "video":  # checked and started here; the pieces follow the job
        pieces = await chat_video_answer(request, state, key, model, text, messages)
    elif (loaded := await _conversation_post(state, key, messages)) is not None:
        await check_image_quota(state.db, key)  # an edit may redraw pages
        pieces = _followup_answer(request, state, key, model, loaded, text, messages, holder)
    else:
        await check_new_post(state.db, key, draws=model.kind == "post")
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
        async for item in with_keepalive(pieces, state.settings.keepalive_seconds):
            if item is KEEPALIVE:
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
