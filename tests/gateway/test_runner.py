"""The flow runner against in-process fake providers: order, references, limits, rows."""

from __future__ import annotations

import asyncio
import functools
import io
import json
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx
import pytest
import yaml
from PIL import Image as PILImage
from sqlmodel import select

from gateway.errors import ContentPolicyViolation, UpstreamError
from gateway.flow.commands import EDIT_TASK_MARKER
from gateway.flow.copy import COPY_TASK_MARKER
from gateway.flow.prompts import COVER_REFERENCE_RULE
from gateway.flow.runner import FlowEvent, PostRun
from gateway.settings import Settings
from providers import registry
from providers.base import (
    ImageData,
    ImageProvider,
    ImageRequest,
    ProviderOptions,
    TextProvider,
)
from providers.registry import register
from storage.tables import Image, Page, Post

CONCURRENCY = 3


@functools.cache  # tiny, and made once: no Pillow work on the event loop per call
def png(colour: tuple[int, int, int], size: tuple[int, int] = (24, 32)) -> bytes:
    buffer = io.BytesIO()
    PILImage.new("RGB", size, colour).save(buffer, "PNG")
    return buffer.getvalue()


@functools.cache
def noise_png() -> bytes:
    buffer = io.BytesIO()
    PILImage.frombytes("RGB", (1080, 1440), secrets.token_bytes(1080 * 1440 * 3)).save(
        buffer, "PNG", compress_level=1
    )
    return buffer.getvalue()


def fake_outline(pages: int) -> str:
    parts = ["[封面]\n标题：测试封面\n副标题：副标题"]
    parts += [f"[内容]\n第{i + 1}页标题\n- 要点 {i + 1}" for i in range(1, pages - 1)]
    parts.append("[总结]\n总结一下\n- 收藏")
    return "\n<page>\n".join(parts[:pages])


@dataclass
class ImageCall:
    page_index: int
    references: tuple[ImageData, ...]
    hints: dict
    prompt: str


@dataclass
class Script:
    """What the fake providers do in one test, and what they saw."""

    key: str
    outline_pages: int = 4
    outline_error: Exception | None = None
    outline_failures: int = 0  # retryable failures before the outline succeeds
    delay: float = 0.0
    transient: dict[int, int] = field(default_factory=dict)  # page → failures, then success
    policy: set[int] = field(default_factory=set)  # pages always refused
    same_bytes: bool = False
    big_cover: bool = False  # page 0 answers a ~4.6 MB 1080x1440 PNG
    not_an_image: set[int] = field(default_factory=set)  # pages answered with junk bytes
    text_calls: list[list[dict]] = field(default_factory=list)
    copy_calls: list[list[dict]] = field(default_factory=list)
    edit_calls: list[list[dict]] = field(default_factory=list)
    edit_answer: str = '{"actions": []}'
    image_calls: list[ImageCall] = field(default_factory=list)
    log: list[tuple[str, int]] = field(default_factory=list)  # ("start" | "end", page)
    in_flight: int = 0
    max_in_flight: int = 0

    def calls_for(self, page: int) -> list[ImageCall]:
        return [c for c in self.image_calls if c.page_index == page]


SCRIPTS: dict[str, Script] = {}
COPY_ANSWER = {"titles": ["秋天去哪喝咖啡"], "copywriting": "正文", "tags": ["咖啡", "探店"]}


class FakeOptions(ProviderOptions):
    script: str


class FakeText(TextProvider):
    Options = FakeOptions
    options: FakeOptions

    async def chat(self, messages, *, model=None, temperature=None, max_tokens=None) -> str:
        script = SCRIPTS[self.options.script]
        if COPY_TASK_MARKER in str(messages[0].get("content")):
            script.copy_calls.append(messages)
            return json.dumps(COPY_ANSWER, ensure_ascii=False)
        if EDIT_TASK_MARKER in str(messages[0].get("content")):
            script.edit_calls.append(messages)
            return script.edit_answer
        script.text_calls.append(messages)
        if script.outline_error is not None:
            raise script.outline_error
        if len(script.text_calls) <= script.outline_failures:
            raise UpstreamError("text model hiccup")
        return fake_outline(script.outline_pages)


class FakeImage(ImageProvider):
    Options = FakeOptions
    options: FakeOptions

    async def generate(self, request: ImageRequest) -> list[ImageData]:
        script = SCRIPTS[self.options.script]
        index = request.hints.get("page_index", 0)  # plain image models send no hints
        script.image_calls.append(
            ImageCall(index, request.references, dict(request.hints), request.prompt)
        )
        script.log.append(("start", index))
        script.in_flight += 1
        script.max_in_flight = max(script.max_in_flight, script.in_flight)
        try:
            await asyncio.sleep(script.delay)
            if index in script.policy:
                raise ContentPolicyViolation(f"page {index} refused by the safety system")
            if len(script.calls_for(index)) <= script.transient.get(index, 0):
                raise UpstreamError(f"page {index}: upstream 503")
            if index in script.not_an_image:
                return [ImageData(b"<html>not an image</html>", "image/png")]
            if index == 0 and script.big_cover:
                return [ImageData(noise_png(), "image/png")]
            colour = (200, 100, 50) if script.same_bytes else (index * 20 % 256, 80, 160)
            return [ImageData(png(colour), "image/png")]
        finally:
            script.in_flight -= 1
            script.log.append(("end", index))


@pytest.fixture
def fake_types(monkeypatch: pytest.MonkeyPatch) -> None:
    """Register the fakes for one test only: tests/test_docs.py walks every registered type."""
    registry.provider_types()  # built-ins first, so the copy below keeps them
    monkeypatch.setattr(registry, "_TYPES", dict(registry._TYPES))
    register("runner-fake-text")(FakeText)
    register("runner-fake-image")(FakeImage)


@pytest.fixture
def script() -> Iterator[Script]:
    script = Script(secrets.token_hex(6))
    SCRIPTS[script.key] = script
    yield script
    del SCRIPTS[script.key]


@pytest.fixture
def settings(settings: Settings, script: Script, fake_types: None) -> Settings:
    """The shared settings, with an inkgate.yaml using the fakes written before the app starts."""
    config = {
        "providers": {
            "t": {"type": "runner-fake-text", "script": script.key},
            "i": {"type": "runner-fake-image", "script": script.key},
        },
        "models": {
            "redink": {
                "type": "redink",
                "text_provider": "t",
                "image_provider": "i",
                "concurrency": CONCURRENCY,
            }
        },
    }
    assert settings.config_path is not None
    settings.config_path.parent.mkdir(parents=True, exist_ok=True)
    settings.config_path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return settings


async def drain(run: PostRun, timeout: float = 20) -> list[FlowEvent]:
    """Every event of a run up to `finished` or `error`, then the run's task ends."""
    events: list[FlowEvent] = []
    async with asyncio.timeout(timeout):
        while True:
            event = await run.events.get()
            events.append(event)
            if event.kind in ("finished", "error"):
                break
        assert run.task is not None
        await run.task
    return events


async def start(services, topic: str = "秋天的咖啡馆探店", **kwargs) -> PostRun:
    kwargs.setdefault("model", "redink")
    kwargs.setdefault("owner_key_id", None)
    return await services.runner.start(topic=topic, **kwargs)


async def post_rows(services, post_id: str) -> tuple[Post, list[Page], list[Image]]:
    async with services.db.session() as session:
        post = await session.get(Post, post_id)
        pages = (
            await session.exec(
                select(Page).where(Page.post_id == post_id).order_by(Page.page_index)
            )
        ).all()
        images = (await session.exec(select(Image).where(Image.post_id == post_id))).all()
    return post, list(pages), list(images)


async def image_bytes(services, image_id: str) -> bytes:
    row = await services.images.get(image_id)
    assert row is not None
    return await services.images.read(row)


# -- order and references ---------------------------------------------------------


async def test_cover_first_alone_then_cover_is_first_reference(services, script: Script) -> None:
    script.outline_pages = 5
    script.delay = 0.02
    run = await start(services)
    events = await drain(run)

    # the cover is drawn first and alone: nothing else starts before it ends
    assert script.log[:2] == [("start", 0), ("end", 0)]
    assert sorted(c.page_index for c in script.image_calls) == [0, 1, 2, 3, 4]
    kinds = [(e.kind, e.page) for e in events]
    assert kinds[:4] == [("outline", None), ("page_started", 0), ("page_done", 0), kinds[3]]
    assert kinds[3][0] == "page_started" and kinds[3][1] != 0

    _, pages, _ = await post_rows(services, run.post_id)
    cover = await image_bytes(services, pages[0].image_id)
    assert script.calls_for(0)[0].references == ()
    for call in script.image_calls:
        if call.page_index == 0:
            continue
        assert len(call.references) == 1
        assert call.references[0].data == cover
        assert call.references[0].mime == "image/png"
        assert call.hints["page_count"] == 5


async def test_a_large_cover_goes_to_the_other_pages_compacted(services, script: Script) -> None:
    script.outline_pages = 3
    script.big_cover = True
    run = await start(services)
    await drain(run)
    _, pages, _ = await post_rows(services, run.post_id)
    assert await image_bytes(services, pages[0].image_id) == noise_png()  # stored as drawn
    for page in (1, 2):
        ref = script.calls_for(page)[0].references[0]
        assert ref.mime == "image/jpeg" and len(ref.data) < len(noise_png()) // 4
        with PILImage.open(io.BytesIO(ref.data)) as im:
            assert im.size == (768, 1024)


async def test_user_references_follow_the_cover_everywhere(services, script: Script) -> None:
    script.outline_pages = 3
    refs = (ImageData(png((10, 20, 30)), "image/png"), ImageData(png((40, 50, 60)), "image/png"))
    run = await start(services, references=refs)
    events = await drain(run)
    assert events[-1].data["status"] == "completed"

    # the outline call sees them as data URLs in the user message
    (messages,) = script.text_calls
    user = messages[-1]
    assert user["role"] == "user"
    urls = [p["image_url"]["url"] for p in user["content"] if p["type"] == "image_url"]
    assert urls == [r.data_url() for r in refs]
    assert urls[0].startswith("data:image/png;base64,")

    _, pages, _ = await post_rows(services, run.post_id)
    cover = await image_bytes(services, pages[0].image_id)
    assert script.calls_for(0)[0].references == refs
    for page in (1, 2):
        (call,) = script.calls_for(page)
        assert call.references[0].data == cover
        assert call.references[1:] == refs


async def test_failed_cover_leaves_only_user_references(services, script: Script) -> None:
    script.outline_pages = 3
    script.policy = {0}
    refs = (ImageData(png((1, 2, 3)), "image/png"),)
    run = await start(services, references=refs)
    events = await drain(run)
    assert events[-1].data == {"status": "partial", "failed": [0]}
    for page in (1, 2):
        (call,) = script.calls_for(page)
        assert call.references == refs


async def test_only_pages_after_a_drawn_cover_are_told_about_it(services, script: Script) -> None:
    script.outline_pages = 3
    await drain(await start(services))
    assert COVER_REFERENCE_RULE not in script.calls_for(0)[0].prompt
    assert all(COVER_REFERENCE_RULE in script.calls_for(p)[0].prompt for p in (1, 2))


async def test_a_user_reference_is_not_called_the_cover(services, script: Script) -> None:
    script.outline_pages = 3
    script.policy = {0}
    refs = (ImageData(png((1, 2, 3)), "image/png"),)
    await drain(await start(services, references=refs))
    for page in (1, 2):
        (call,) = script.calls_for(page)
        assert call.references == refs
        assert COVER_REFERENCE_RULE not in call.prompt


# -- concurrency and retries -------------------------------------------------------


async def test_pages_run_concurrently_up_to_the_model_limit(services, script: Script) -> None:
    script.outline_pages = 8
    script.delay = 0.05
    events = await drain(await start(services, page_count=8))
    assert events[-1].data == {"status": "completed", "failed": []}
    assert len(script.image_calls) == 8
    assert script.max_in_flight == CONCURRENCY


async def test_transient_failures_are_retried(services, script: Script) -> None:
    script.outline_pages = 4
    script.transient = {2: 2}
    run = await start(services)
    events = await drain(run)
    assert events[-1].data == {"status": "completed", "failed": []}
    assert not [e for e in events if e.kind == "page_failed"]
    assert len(script.calls_for(2)) == 3
    _, pages, _ = await post_rows(services, run.post_id)
    assert [p.attempts for p in pages] == [1, 1, 3, 1]
    assert all(p.status == "done" and p.error is None and p.image_id for p in pages)


async def test_transient_failures_past_the_retry_budget_fail_the_page(
    services, script: Script
) -> None:
    script.outline_pages = 3
    script.transient = {1: services.settings.page_retries}
    run = await start(services)
    events = await drain(run)
    assert events[-1].data == {"status": "partial", "failed": [1]}
    (failed,) = [e for e in events if e.kind == "page_failed"]
    assert failed.page == 1 and failed.data["retryable"] is True
    _, pages, _ = await post_rows(services, run.post_id)
    assert pages[1].status == "failed" and pages[1].attempts == services.settings.page_retries
    assert "503" in pages[1].error


async def test_content_policy_page_fails_without_retry(services, script: Script) -> None:
    script.outline_pages = 4
    script.policy = {2}
    run = await start(services)
    events = await drain(run)

    assert len(script.calls_for(2)) == 1
    (failed,) = [e for e in events if e.kind == "page_failed"]
    assert failed.page == 2 and failed.data["retryable"] is False
    assert "refused" in failed.data["reason"]
    assert events[-1].kind == "finished"
    assert events[-1].data == {"status": "partial", "failed": [2]}

    post, pages, images = await post_rows(services, run.post_id)
    assert post.status == "partial"
    assert [p.status for p in pages] == ["done", "done", "failed", "done"]
    assert pages[2].image_id is None and "refused" in pages[2].error
    assert pages[2].attempts == 1
    assert len(images) == 3


async def test_all_pages_failing_fails_the_post(services, script: Script) -> None:
    script.outline_pages = 3
    script.policy = {0, 1, 2}
    run = await start(services)
    events = await drain(run)
    assert events[-1].data == {"status": "failed", "failed": [0, 1, 2]}
    post, pages, images = await post_rows(services, run.post_id)
    assert post.status == "failed"
    assert all(p.status == "failed" for p in pages) and images == []


async def test_outline_failure_is_an_error_event(services, script: Script) -> None:
    script.outline_error = UpstreamError("the text model is down", retryable=False)
    run = await start(services)
    events = await drain(run)

    assert [e.kind for e in events] == ["error"]
    assert events[0].data["error"] is script.outline_error
    assert len(script.text_calls) == 1  # not retryable: asked once
    assert script.image_calls == []
    post, pages, _ = await post_rows(services, run.post_id)
    assert post.status == "failed" and post.error == "the text model is down"
    assert pages == []


async def test_outline_crash_is_an_error_event(services, script: Script) -> None:
    script.outline_error = KeyError("choices")  # a provider bug, not a mapped error
    run = await start(services)
    try:
        events = await drain(run, timeout=1)
    finally:
        if run.task is not None and run.task.done() and not run.task.cancelled():
            run.task.exception()  # retrieved: no "never retrieved" noise
    assert [e.kind for e in events] == ["error"]
    post, _, _ = await post_rows(services, run.post_id)
    assert post.status == "failed"


async def test_transient_outline_failure_is_retried(services, script: Script) -> None:
    script.outline_failures = 1
    script.outline_pages = 2
    events = await drain(await start(services))
    assert events[-1].data == {"status": "completed", "failed": []}
    assert len(script.text_calls) == 2


async def test_junk_bytes_fail_only_their_page(services, script: Script) -> None:
    script.outline_pages = 3
    script.not_an_image = {1}
    run = await start(services)
    events = await drain(run)
    assert events[-1].data == {"status": "partial", "failed": [1]}
    _, pages, images = await post_rows(services, run.post_id)
    assert [p.status for p in pages] == ["done", "failed", "done"]
    assert "could not store the image" in pages[1].error
    assert len(images) == 2


async def test_outline_only_draws_nothing(services, script: Script) -> None:
    script.outline_pages = 3
    run = await start(services, outline_only=True)
    events = await drain(run)
    assert [e.kind for e in events] == ["outline", "finished"]
    assert events[-1].data == {"status": "draft", "failed": []}
    assert script.image_calls == []
    post, pages, _ = await post_rows(services, run.post_id)
    assert post.status == "draft" and [p.status for p in pages] == ["pending"] * 3


# -- rows ------------------------------------------------------------------------


async def test_rows_as_the_post_progresses(services, script: Script) -> None:
    owner, _ = await services.keys.create("runner-test")
    script.outline_pages = 4
    script.delay = 0.2
    run = await start(services, owner_key_id=owner.id)

    first = await asyncio.wait_for(run.events.get(), 10)
    assert first.kind == "outline"
    post, pages, images = await post_rows(services, run.post_id)
    assert post.status == "generating" and post.owner_key_id == owner.id
    assert post.outline and post.outline.startswith("[封面]")
    assert [p.page_index for p in pages] == [0, 1, 2, 3]
    assert [p.type for p in pages] == ["cover", "content", "content", "summary"]
    assert {p.status for p in pages} <= {"pending", "generating"}
    assert {p.status for p in pages[1:]} == {"pending"}  # the cover comes first
    assert images == []

    while (event := await asyncio.wait_for(run.events.get(), 10)).kind != "page_done":
        pass
    assert event.page == 0
    _, pages, images = await post_rows(services, run.post_id)
    assert pages[0].status == "done" and pages[0].image_id == event.data["image_id"]
    assert {p.status for p in pages[1:]} <= {"pending", "generating"}
    assert [i.id for i in images] == [pages[0].image_id]

    events = await drain(run)
    assert events[-1].data["status"] == "completed"
    post, pages, images = await post_rows(services, run.post_id)
    assert post.status == "completed" and post.error is None
    assert all(p.status == "done" for p in pages)
    assert sorted(i.id for i in images) == sorted(p.image_id for p in pages)
    for image in images:
        assert image.post_id == run.post_id and image.owner_key_id == owner.id
        assert (image.mime, image.ext, image.width, image.height) == ("image/png", "png", 24, 32)


async def test_same_bytes_are_stored_once(services, script: Script) -> None:
    script.outline_pages = 3
    script.same_bytes = True
    run = await start(services)
    await drain(run)
    _, pages, images = await post_rows(services, run.post_id)
    assert len({i.id for i in images}) == 3
    assert len({i.sha256 for i in images}) == 1
    files = [p for p in (services.settings.data_dir / "blobs").rglob("*") if p.is_file()]
    assert files == [services.images.path(images[0])]
    assert files[0].read_bytes() == png((200, 100, 50))


# -- the requested page count ---------------------------------------------------


async def test_requested_page_count_reaches_the_text_model_and_clamps(
    client: httpx.AsyncClient, services, script: Script
) -> None:
    script.outline_pages = 7
    r = await client.post(
        "/v1/chat/completions",
        json={"model": "redink", "messages": [{"role": "user", "content": "秋天的咖啡馆探店 5页"}]},
    )
    assert r.status_code == 200, r.text
    (messages,) = script.text_calls
    assert "Pages: exactly 5" in messages[-1]["content"]
    post = r.json()["post"]
    assert post["status"] == "completed" and len(post["pages"]) == 5
    assert sorted(c.page_index for c in script.image_calls) == [0, 1, 2, 3, 4]
    assert {c.hints["page_count"] for c in script.image_calls} == {5}
    _, pages, _ = await post_rows(services, post["id"])
    assert len(pages) == 5


async def test_page_count_clamps_a_longer_outline(services, script: Script) -> None:
    script.outline_pages = 7
    run = await start(services, page_count=5)
    events = await drain(run)
    assert len(events[0].data["pages"]) == 5
    _, pages, _ = await post_rows(services, run.post_id)
    assert [p.page_index for p in pages] == [0, 1, 2, 3, 4]


async def test_chat_answer_names_a_refused_page(client: httpx.AsyncClient, script: Script) -> None:
    script.outline_pages = 4
    script.policy = {2}
    r = await client.post(
        "/v1/chat/completions",
        json={"model": "redink", "messages": [{"role": "user", "content": "秋天的咖啡馆探店"}]},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    content = body["choices"][0]["message"]["content"]
    assert "⚠️ 第3页生成失败" in content
    assert content.count("![第") == 3
    assert body["post"]["status"] == "partial"
    assert [p["status"] for p in body["post"]["pages"]] == ["done", "done", "failed", "done"]


async def test_provider_cap_is_shared_by_all_posts(app, services, script: Script) -> None:
    # two posts of 6 pages, each allowed 3 at once, on a provider that allows 2
    config = yaml.safe_load(services.settings.config_path.read_text())
    config["providers"]["i"]["max_concurrency"] = 2
    services.settings.config_path.write_text(yaml.safe_dump(config))
    assert await app.state.config_source.reload_if_changed()
    script.outline_pages = 6
    script.delay = 0.03
    runs = [await start(services), await start(services)]
    for run in runs:
        events = await drain(run)
        assert events[-1].data["status"] == "completed"
    assert script.max_in_flight == 2


async def test_plain_image_model_is_retried(app, services, client, script: Script) -> None:
    config = yaml.safe_load(services.settings.config_path.read_text())
    config["models"]["poster"] = {"type": "image", "provider": "i"}
    services.settings.config_path.write_text(yaml.safe_dump(config))
    assert await app.state.config_source.reload_if_changed()
    script.transient = {0: 2}  # the fake keys failures by hints["page_index"]
    r = await client.post(
        "/v1/images/generations", json={"model": "poster", "prompt": "x"}, timeout=30
    )
    assert r.status_code == 200, r.text
    assert len(script.calls_for(0)) == 3


async def test_a_slow_page_is_cut_at_the_deadline(services, script: Script) -> None:
    from dataclasses import replace

    services.runner.settings = replace(services.runner.settings, deadline_seconds=0.3)
    script.outline_pages = 2
    script.delay = 1.0  # every image call outlasts the deadline
    run = await start(services)
    events = await drain(run)
    failed = [e for e in events if e.kind == "page_failed"]
    assert failed and "deadline" in failed[0].data["reason"]
    assert events[-1].data["status"] == "failed"


async def test_no_retry_starts_past_the_deadline(services, script: Script) -> None:
    from dataclasses import replace

    # the base delay (0.5 s) would end after the deadline (0.3 s): fail at once
    services.runner.settings = replace(
        services.runner.settings, deadline_seconds=0.3, retry_base_delay=0.5
    )
    script.outline_pages = 2
    script.transient = {0: 5}
    run = await start(services)
    await drain(run)
    assert len(script.calls_for(0)) == 1
