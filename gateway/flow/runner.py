"""Runs a post: outline, then the cover, then every other page concurrently.

A post's generation is a job recorded in the database (gateway/flow/jobs.py), run
by a task of the runner, not by the HTTP request that started it: a client that
disconnects does not stop it, and a job whose process died is resumed by another
process (or the same one restarted) without drawing the stored pages again.
Posts, pages, images and progress events are written as they happen; any process
can follow a post's events (`follow`), and the starting process also gets rich
`FlowEvent`s through `PostRun.events`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import random
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
from sqlalchemy import bindparam, insert, update
from sqlmodel import select

from gateway.config import GatewayConfig, PostModelConfig
from gateway.errors import GatewayError, UpstreamError, UpstreamTimeout
from gateway.flow.copy import build_copy_messages, parse_copy
from gateway.flow.jobs import EventLog, JobStore, StoredEvent
from gateway.flow.outline import OutlinePage, build_outline_messages, outline_text, parse_outline
from gateway.flow.prompts import build_image_prompt
from gateway.flow.reference import compact_reference, compact_references
from gateway.settings import Settings
from gateway.upstream_slots import UpstreamSlots
from providers.base import ImageData, ImageRequest
from storage.db import Database
from storage.images import ImageStore
from storage.tables import Image, Page, Post, PostJob, utcnow

log = logging.getLogger("inkgate.flow")

MAX_RETRY_DELAY = 30.0


@dataclass
class FlowEvent:
    """`kind`: outline | page_started | page_done | page_failed | finished | error."""

    kind: str
    page: int | None = None
    data: dict[str, Any] = field(default_factory=dict)


@dataclass
class PostRun:
    """A started job: the post, the seq of the post's last event before the job
    (follow the stored events after it), an in-process event queue and the task."""

    post_id: str
    events: asyncio.Queue[FlowEvent]
    task: asyncio.Task | None = None
    after_seq: int = 0
    job_id: str | None = None


def new_post_id() -> str:
    return "post_" + secrets.token_urlsafe(16)


def stored_form(event: FlowEvent) -> tuple[str, int | None, dict[str, Any]]:
    """The JSON form of an event, as stored and streamed (`error` is stored as a
    failed `finished`)."""
    if event.kind == "outline":
        pages = [{"index": p.index, "type": p.type, "text": p.text} for p in event.data["pages"]]
        return "outline", None, {"pages": pages}
    if event.kind == "error":
        error: GatewayError = event.data["error"]
        body = {**error.body()["error"], "status": error.status, "retryable": error.retryable}
        return "finished", None, {"status": "failed", "failed": [], "error": body}
    return event.kind, event.page, dict(event.data)


def flow_event(event: StoredEvent) -> FlowEvent:
    """A stored event as the chat renderer takes it."""
    if event.kind == "outline":
        pages = [OutlinePage(p["index"], p["type"], p["text"]) for p in event.data["pages"]]
        return FlowEvent("outline", data={"pages": pages})
    if event.kind == "finished" and event.data.get("error"):
        err = event.data["error"]
        error = GatewayError(
            err.get("message") or "The post failed",
            code=err.get("code"),
            status=err.get("status"),
            retryable=err.get("retryable"),
        )
        error.type = err.get("type") or error.type
        return FlowEvent("error", data={"error": error})
    return FlowEvent(event.kind, event.page, dict(event.data))


class FlowRunner:
    """Starts, runs, renews and resumes post jobs (see gateway/flow/jobs.py)."""

    def __init__(
        self,
        settings: Settings,
        db: Database,
        images: ImageStore,
        config: Callable[[], GatewayConfig],
        slots: UpstreamSlots | None = None,
    ) -> None:
        self.settings = settings
        self.slots = slots or UpstreamSlots()
        self.db = db
        self.images = images
        self._config = config
        self.process_id = secrets.token_hex(8)
        self.events = EventLog(db)
        self.jobs = JobStore(db, self.process_id, settings.job_lease_seconds)
        self._running: dict[str, asyncio.Task] = {}  # job id -> task
        self._listeners: dict[str, list[asyncio.Queue[FlowEvent]]] = {}
        self._maintainer: asyncio.Task | None = None

    # -- starting jobs -----------------------------------------------------

    async def start(
        self,
        *,
        topic: str,
        model: str,
        owner_key_id: str | None,
        page_count: int | None = None,
        aspect_ratio: str | None = None,
        references: tuple[ImageData, ...] = (),
        outline_only: bool = False,
        pages: list[tuple[str, str]] | None = None,
    ) -> PostRun:
        """Record a new post (with `pages` (type, text): no outline is written) and
        start generating it in the background."""
        model_cfg = self._config().post_models[model]
        post = Post(
            id=new_post_id(),
            owner_key_id=owner_key_id,
            model=model,
            topic=topic,
            status="generating",
            aspect_ratio=aspect_ratio or model_cfg.aspect_ratio,
            page_count=len(pages) if pages else page_count,
        )
        if references:
            compact = await compact_references(references)
            ids = []
            for ref in compact:
                row = await self.images.put(ref.data, owner_key_id=owner_key_id, post_id=post.id)
                ids.append(row.id)
            post.reference_ids = json.dumps(ids)
        if pages:
            post.outline = outline_text(
                [OutlinePage(i, kind, text) for i, (kind, text) in enumerate(pages)]
            )
        async with self.db.session() as session:
            session.add(post)
            await session.flush()  # the post row before its pages (foreign key)
            for i, (kind, text) in enumerate(pages or ()):
                session.add(Page(post_id=post.id, page_index=i, type=kind, text=text))
            await session.commit()
        run = await self.submit(post.id, outline_only=outline_only)
        assert run is not None  # a new post has no job yet
        return run

    async def submit(self, post_id: str, *, outline_only: bool = False) -> PostRun | None:
        """Start a job for an existing post: the outline if it has none, then every page
        not yet done. None when a job of the post is already running."""
        after = await self.events.last_seq(post_id)
        job = await self.jobs.create(post_id, outline_only=outline_only)
        if job is None:
            return None
        async with self.db.writing(), self.db.engine.begin() as conn:
            table = Post.__table__
            await conn.execute(
                update(table)
                .where(table.c.id == post_id)
                .values(status="generating", error=None, updated_at=utcnow())
            )
        queue: asyncio.Queue[FlowEvent] = asyncio.Queue()
        self._listeners.setdefault(post_id, []).append(queue)
        run = PostRun(post_id, queue, after_seq=after, job_id=job.id)
        run.task = self._launch(job)
        return run

    def _launch(self, job: PostJob) -> asyncio.Task:
        task = asyncio.create_task(self._execute(job), name=f"post-{job.post_id}")
        self._running[job.id] = task
        task.add_done_callback(lambda _t, job_id=job.id: self._running.pop(job_id, None))
        return task

    async def is_active(self, post_id: str) -> bool:
        return await self.jobs.active(post_id) is not None

    def follow(self, post_id: str, after: int) -> AsyncIterator[StoredEvent]:
        """The post's stored events after `after`, live while a job runs (any process)."""
        return self.events.follow(post_id, after, active=lambda: self.is_active(post_id))

    # -- background: renew claims, resume what a dead process left ----------

    def start_background(self) -> None:
        if self._maintainer is None:
            self._maintainer = asyncio.create_task(self._maintain(), name="post-jobs")

    async def _maintain(self) -> None:
        every = max(0.2, self.settings.job_lease_seconds / 3)
        while True:
            try:
                await self.jobs.renew(list(self._running))
                for job in await self.jobs.take_over():
                    if job.id not in self._running:
                        log.info("resuming %s of %s (run %d)", job.id, job.post_id, job.runs)
                        self._launch(job)
            except Exception:  # the database away for a moment: try again next round
                log.exception("post job maintenance failed")
            await asyncio.sleep(every)

    async def resume_now(self) -> int:
        """Take over expired jobs at once (tests, and the first round at start)."""
        jobs = [j for j in await self.jobs.take_over() if j.id not in self._running]
        for job in jobs:
            self._launch(job)
        return len(jobs)

    async def generate_image(self, provider_name: str, request: ImageRequest) -> list[ImageData]:
        """One image call outside a post (plain image models): the provider's shared
        concurrency cap, and retries with backoff on transient errors."""
        config = self._config()
        provider = config.image_provider(provider_name)
        limit = config.provider_limits.get(provider_name)

        async def call() -> list[ImageData]:
            async with self.slots.slot(provider_name, limit):
                return await provider.generate(request)

        return await self.with_retries(call, what=f"image from {provider_name}")

    async def shutdown(self) -> None:
        """Stop working: running jobs are released, not failed, so the next process
        (or this one restarted) resumes them; stored pages are not drawn again."""
        if self._maintainer is not None:
            self._maintainer.cancel()
            await asyncio.gather(self._maintainer, return_exceptions=True)
            self._maintainer = None
        running = dict(self._running)
        for task in running.values():
            task.cancel()
        await asyncio.gather(*running.values(), return_exceptions=True)
        with contextlib.suppress(Exception):
            await self.jobs.release(list(running))

    # -- the job -----------------------------------------------------------

    async def _emit(self, post_id: str, event: FlowEvent) -> None:
        kind, page, data = stored_form(event)
        await self.events.append(post_id, kind, page, data)
        for queue in self._listeners.get(post_id, ()):
            queue.put_nowait(event)
        if event.kind in ("finished", "error"):
            self._listeners.pop(post_id, None)

    async def _execute(self, job: PostJob) -> None:
        post_id = job.post_id

        async def emit(event: FlowEvent) -> None:
            await self._emit(post_id, event)

        try:
            loaded = await load_post(self.db, post_id)
            if loaded is None:
                await self.jobs.end(job.id, "failed", "the post was deleted")
                return
            post, rows = loaded
            cfg = self._config().post_models.get(post.model)
            if cfg is None:
                raise GatewayError(f"The model {post.model!r} is no longer configured")
            references = await self._references(post)
            if rows:
                pages = [OutlinePage(r.page_index, r.type, r.text) for r in rows]
            else:
                pages = await self._plan_outline(post, cfg, references)
            await emit(FlowEvent("outline", data={"pages": pages, "outline": post.outline}))
            if job.outline_only:
                await self._finish_post(post_id, "draft")
                await emit(FlowEvent("finished", data={"status": "draft", "failed": []}))
                await self.jobs.end(job.id, "done")
                return
            copy = None
            if post.copy_json is None:
                copy = asyncio.create_task(self._write_copy(post, cfg, pages))
            status, failed = await self._render_pages(post, cfg, pages, rows, references, emit)
            if copy is not None:
                written = await copy
                if written is not None:
                    await emit(FlowEvent("copy", data=written))
            await self._finish_post(post_id, status)
            await emit(FlowEvent("finished", data={"status": status, "failed": failed}))
            await self.jobs.end(job.id, "done")
        except asyncio.CancelledError:
            raise  # shutting down: the job stays, to be resumed
        except GatewayError as exc:
            await self._fail(job, exc, emit)
        except Exception:
            # A bug or a database outage: listeners must hear of it, not wait forever.
            log.exception("post %s failed unexpectedly", post_id)
            await self._fail(
                job, GatewayError("The post could not be generated (internal error)."), emit
            )
        finally:
            self.events.forget(post_id)

    async def _fail(self, job: PostJob, exc: GatewayError, emit) -> None:
        with contextlib.suppress(Exception):
            await self._finish_post(job.post_id, "failed", error=exc.message)
        with contextlib.suppress(Exception):
            await emit(FlowEvent("error", data={"error": exc}))
        with contextlib.suppress(Exception):
            await self.jobs.end(job.id, "failed", exc.message)
        self._listeners.pop(job.post_id, None)

    async def _references(self, post: Post) -> tuple[ImageData, ...]:
        refs = []
        for image_id in json.loads(post.reference_ids or "[]"):
            row = await self.images.get(image_id)
            if row is not None:
                refs.append(ImageData(await self.images.read(row), row.mime))
        return tuple(refs)

    async def _write_copy(
        self, post: Post, cfg: PostModelConfig, pages: list[OutlinePage]
    ) -> dict | None:
        """The post copy (title options, body, hashtags); None when the model fails."""
        config = self._config()
        provider = config.text_provider(cfg.text_provider)
        limit = config.provider_limits.get(cfg.text_provider)
        messages = build_copy_messages(post.topic, outline_text(pages))

        async def call() -> str:
            async with self.slots.slot(cfg.text_provider, limit):
                return await provider.chat(
                    messages, model=cfg.text_model, temperature=cfg.temperature
                )

        try:
            copy = parse_copy(await self.with_retries(call, what=f"copy of {post.id}"))
        except (GatewayError, ValueError) as exc:
            log.warning("post %s: no copy (%s)", post.id, getattr(exc, "message", exc))
            return None
        async with self.db.writing(), self.db.engine.begin() as conn:
            table = Post.__table__
            await conn.execute(
                update(table).where(table.c.id == post.id).values(copy=copy.to_json())
            )
        return dataclasses.asdict(copy)

    async def _plan_outline(
        self, post: Post, cfg: PostModelConfig, references: tuple[ImageData, ...]
    ) -> list[OutlinePage]:
        config = self._config()
        provider = config.text_provider(cfg.text_provider)
        limit = config.provider_limits.get(cfg.text_provider)
        messages = build_outline_messages(
            post.topic, post.page_count, [ref.data_url() for ref in references]
        )

        async def outline() -> str:
            async with self.slots.slot(cfg.text_provider, limit):
                return await provider.chat(
                    messages, model=cfg.text_model, temperature=cfg.temperature
                )

        answer = await self.with_retries(outline, what=f"outline of {post.id}")
        pages = parse_outline(answer, max_pages=post.page_count)
        if not pages:
            raise UpstreamError("The text model returned no outline pages", retryable=False)
        post.outline = outline_text(pages)
        async with self.db.session() as session:
            row = await session.get(Post, post.id)
            row.outline = post.outline
            row.updated_at = utcnow()
            session.add(row)
            for page in pages:
                session.add(
                    Page(post_id=post.id, page_index=page.index, type=page.type, text=page.text)
                )
            await session.commit()
        return pages

    async def _render_pages(
        self,
        post: Post,
        cfg: PostModelConfig,
        pages: list[OutlinePage],
        rows: list[Page],
        references: tuple[ImageData, ...],
        emit: Callable[[FlowEvent], Awaitable[None]],
    ) -> tuple[str, list[int]]:
        """Draw every page not yet done: the cover first (when it is one of them), then
        the others at once with the cover as their first reference. A resumed job skips
        the pages already stored."""
        state = {r.page_index: r.status for r in rows}
        done = {r.page_index: r.image_id for r in rows if r.status == "done" and r.image_id}
        # pages waiting, or cut off mid-draw by a crash; failed pages wait for a retry
        todo = [p for p in pages if state.get(p.index, "pending") in ("pending", "generating")]
        failed: list[int] = [i for i, s in state.items() if s == "failed"]

        async def one(
            page: OutlinePage, refs: tuple[ImageData, ...], has_cover: bool
        ) -> ImageData | None:
            image = await self._render_page(post, cfg, page, pages, refs, has_cover, emit)
            if image is None:
                failed.append(page.index)
            return image

        if todo and todo[0].index == 0:
            cover = await one(todo.pop(0), references, has_cover=False)
        else:
            cover = await self._stored_image(done.get(0))
        if cover is not None:
            cover = await compact_reference(cover)
        rest_refs = ((cover,) if cover else ()) + references
        limit = asyncio.Semaphore(cfg.concurrency or self.settings.image_concurrency)

        async def limited(page: OutlinePage) -> None:
            async with limit:
                await one(page, rest_refs, has_cover=cover is not None)

        await asyncio.gather(*(limited(p) for p in todo))
        ok = len(pages) - len(failed)
        status = "completed" if not failed else ("partial" if ok else "failed")
        return status, sorted(failed)

    async def _stored_image(self, image_id: str | None) -> ImageData | None:
        if not image_id:
            return None
        row = await self.images.get(image_id)
        if row is None:
            return None
        try:
            return ImageData(await self.images.read(row), row.mime)
        except Exception:  # its bytes are gone: draw without the cover reference
            log.warning("cover image %s could not be read", image_id)
            return None

    async def _render_page(
        self,
        post: Post,
        cfg: PostModelConfig,
        page: OutlinePage,
        pages: list[OutlinePage],
        refs: tuple[ImageData, ...],
        has_cover: bool,
        emit: Callable[[FlowEvent], Awaitable[None]],
    ) -> ImageData | None:
        """Generate, store and record one page; None when it failed (never raises)."""
        config = self._config()
        provider = config.image_provider(cfg.image_provider)
        limit = config.provider_limits.get(cfg.image_provider)
        request = ImageRequest(
            prompt=build_image_prompt(
                page,
                topic=post.topic,
                outline=post.outline or "",
                aspect_ratio=post.aspect_ratio,
                short=cfg.short_prompt,
                has_cover_reference=has_cover,
            ),
            references=refs,
            aspect_ratio=post.aspect_ratio,
            size=cfg.image_size,
            model=cfg.image_model,
            hints={
                "title": page.title,
                "body": page.body,
                "page_index": page.index,
                "page_count": len(pages),
                "page_type": page.type,
                "topic": post.topic,
            },
        )
        await self._update_page(post.id, page.index, status="generating")
        await emit(FlowEvent("page_started", page.index))
        attempts = 0

        async def attempt() -> list[ImageData]:
            nonlocal attempts
            attempts += 1
            async with self.slots.slot(cfg.image_provider, limit):
                return await provider.generate(request)

        try:
            images = await self.with_retries(attempt, what=f"page {page.index} of {post.id}")
            if not images:
                raise UpstreamError("The image model returned no image", retryable=False)
            stored = await self.images.write(
                images[0].data, owner_key_id=post.owner_key_id, post_id=post.id
            )
        except GatewayError as exc:
            await self._update_page(
                post.id, page.index, status="failed", error=exc.message, attempts=attempts
            )
            await emit(
                FlowEvent(
                    "page_failed", page.index, {"reason": exc.message, "retryable": exc.retryable}
                )
            )
            return None
        except Exception as exc:  # a bug or bad bytes must not fail the whole post
            log.exception("page %s of %s failed", page.index, post.id)
            reason = f"could not store the image ({type(exc).__name__})"
            await self._update_page(
                post.id, page.index, status="failed", error=reason, attempts=attempts
            )
            await emit(FlowEvent("page_failed", page.index, {"reason": reason, "retryable": True}))
            return None
        # the image row and the page that shows it are saved together
        await self._update_page(
            post.id, page.index, status="done", image_id=stored.id, error=None,
            attempts=attempts, also=stored,
        )  # fmt: skip
        await emit(FlowEvent("page_done", page.index, {"image_id": stored.id, "ext": stored.ext}))
        return ImageData(images[0].data, stored.mime)

    async def with_retries(self, call: Callable[[], Any], *, what: str) -> Any:
        """`call()`, retried with backoff and jitter on transient errors, within the deadline.

        Every attempt gets the time left before `INKGATE_DEADLINE_SECONDS`; no retry is
        started that could not finish in time, so a client behind a 300 s proxy limit
        (OpenWebUI) hears of the failure instead of being cut off.
        """
        tries = max(1, self.settings.page_retries)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.deadline_seconds
        for n in range(1, tries + 1):
            remaining = deadline - loop.time()
            try:
                with anyio.fail_after(max(0.0, remaining)):
                    return await call()
            except TimeoutError:
                raise UpstreamTimeout(
                    f"{what}: no answer within the {self.settings.deadline_seconds:.0f} s deadline"
                ) from None
            except GatewayError as exc:
                if not exc.retryable or n == tries:
                    raise
                delay = exc.retry_after or self.settings.retry_base_delay * 2 ** (n - 1)
                delay = min(MAX_RETRY_DELAY, delay) * (1 + random.random() * 0.25)
                if loop.time() + delay >= deadline:
                    log.warning("%s: %s; no time left for a retry", what, exc.message)
                    raise
                log.warning("%s: %s; retry %d/%d in %.1fs", what, exc.message, n, tries - 1, delay)
                await asyncio.sleep(delay)
        raise AssertionError("unreachable")

    # -- rows --------------------------------------------------------------

    async def _update_page(
        self, post_id: str, index: int, *, also: Image | None = None, **fields: Any
    ) -> None:
        """One UPDATE of a page's columns, and `also` (its image row) in the same transaction.

        Core statements with bound parameters, not the ORM: they run once or twice per
        page on the hot path, and constant statements stay in SQLAlchemy's compiled cache.
        """
        pages = Page.__table__
        statement = (
            update(pages)
            .where(pages.c.post_id == bindparam("b_post"), pages.c.page_index == bindparam("b_idx"))
            .values({name: bindparam(name) for name in (*sorted(fields), "updated_at")})
        )
        async with self.db.writing(), self.db.engine.begin() as conn:
            if also is not None:
                await conn.execute(insert(Image.__table__), [also.model_dump()])
            await conn.execute(
                statement, {**fields, "updated_at": utcnow(), "b_post": post_id, "b_idx": index}
            )

    async def _finish_post(self, post_id: str, status: str, error: str | None = None) -> None:
        async with self.db.session() as session:
            row = await session.get(Post, post_id)
            if row is None:
                return
            row.status = status
            row.error = error
            row.updated_at = utcnow()
            session.add(row)
            await session.commit()


async def load_post(db: Database, post_id: str) -> tuple[Post, list[Page]] | None:
    async with db.session() as session:
        post = await session.get(Post, post_id)
        if post is None:
            return None
        result = await session.exec(
            select(Page).where(Page.post_id == post_id).order_by(Page.page_index)
        )
        return post, list(result.all())
