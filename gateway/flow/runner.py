"""Runs a post: outline, then the cover, then every other page concurrently.

The run is a task owned by the runner, not by the HTTP request that started it:
a client that disconnects does not stop it. Posts, pages and images are written
to the database as they progress; listeners get `FlowEvent`s through a queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
from sqlalchemy import bindparam, insert, update
from sqlmodel import select

from gateway.config import GatewayConfig, PostModelConfig
from gateway.errors import GatewayError, UpstreamError, UpstreamTimeout
from gateway.flow.outline import OutlinePage, build_outline_messages, outline_text, parse_outline
from gateway.flow.prompts import build_image_prompt
from gateway.flow.reference import compact_reference, compact_references
from gateway.settings import Settings
from gateway.upstream_slots import UpstreamSlots
from providers.base import ImageData, ImageRequest
from storage.db import Database
from storage.images import ImageStore
from storage.tables import Image, Page, Post, utcnow

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
    """A started post: its id, its event queue and the task running it."""

    post_id: str
    events: asyncio.Queue[FlowEvent]
    task: asyncio.Task | None = None


def new_post_id() -> str:
    return "post_" + secrets.token_urlsafe(16)


class FlowRunner:
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
        self._tasks: set[asyncio.Task] = set()

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
    ) -> PostRun:
        """Record a new post and start generating it in the background."""
        model_cfg = self._config().post_models[model]
        post = Post(
            id=new_post_id(),
            owner_key_id=owner_key_id,
            model=model,
            topic=topic,
            status="generating",
            aspect_ratio=aspect_ratio or model_cfg.aspect_ratio,
            page_count=page_count,
        )
        async with self.db.session() as session:
            session.add(post)
            await session.commit()
        run = PostRun(post.id, asyncio.Queue())
        run.task = asyncio.create_task(
            self._run(post, model_cfg, references, outline_only, run.events.put_nowait),
            name=f"post-{post.id}",
        )
        self._tasks.add(run.task)
        run.task.add_done_callback(self._tasks.discard)
        return run

    async def generate_image(self, provider_name: str, request: ImageRequest) -> list[ImageData]:
        """One image call outside a post (plain image models): the provider's shared
        concurrency cap, and retries with backoff on transient errors."""
        config = self._config()
        provider = config.image_provider(provider_name)
        limit = config.provider_limits.get(provider_name)

        async def call() -> list[ImageData]:
            async with self.slots.slot(provider_name, limit):
                return await provider.generate(request)

        return await self._with_retries(call, what=f"image from {provider_name}")

    async def shutdown(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # -- the run -----------------------------------------------------------

    async def _run(
        self,
        post: Post,
        cfg: PostModelConfig,
        references: tuple[ImageData, ...],
        outline_only: bool,
        emit: Callable[[FlowEvent], None],
    ) -> None:
        try:
            references = await compact_references(references)
            try:
                pages = await self._plan_outline(post, cfg, references)
            except GatewayError as exc:
                await self._finish_post(post.id, "failed", error=exc.message)
                emit(FlowEvent("error", data={"error": exc}))
                return
            emit(FlowEvent("outline", data={"pages": pages, "outline": post.outline}))
            if outline_only:
                await self._finish_post(post.id, "draft")
                emit(FlowEvent("finished", data={"status": "draft", "failed": []}))
                return
            status, failed = await self._render_pages(post, cfg, pages, references, emit)
            await self._finish_post(post.id, status)
            emit(FlowEvent("finished", data={"status": status, "failed": failed}))
        except asyncio.CancelledError:
            await self._finish_post(post.id, "failed", error="interrupted")
            raise
        except Exception:
            # A bug or a database outage: listeners must hear of it, not wait forever.
            log.exception("post %s failed unexpectedly", post.id)
            with contextlib.suppress(Exception):
                await self._finish_post(post.id, "failed", error="internal error")
            error = GatewayError("The post could not be generated (internal error).")
            emit(FlowEvent("error", data={"error": error}))

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

        answer = await self._with_retries(outline, what=f"outline of {post.id}")
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
        references: tuple[ImageData, ...],
        emit: Callable[[FlowEvent], None],
    ) -> tuple[str, list[int]]:
        failed: list[int] = []

        async def one(
            page: OutlinePage, refs: tuple[ImageData, ...], has_cover: bool
        ) -> ImageData | None:
            image = await self._render_page(post, cfg, page, pages, refs, has_cover, emit)
            if image is None:
                failed.append(page.index)
            return image

        cover = await one(pages[0], references, has_cover=False)
        if cover is not None:
            cover = await compact_reference(cover)
        rest_refs = ((cover,) if cover else ()) + references
        limit = asyncio.Semaphore(cfg.concurrency or self.settings.image_concurrency)

        async def limited(page: OutlinePage) -> None:
            async with limit:
                await one(page, rest_refs, has_cover=cover is not None)

        await asyncio.gather(*(limited(p) for p in pages[1:]))
        done = len(pages) - len(failed)
        status = "completed" if not failed else ("partial" if done else "failed")
        return status, sorted(failed)

    async def _render_page(
        self,
        post: Post,
        cfg: PostModelConfig,
        page: OutlinePage,
        pages: list[OutlinePage],
        refs: tuple[ImageData, ...],
        has_cover: bool,
        emit: Callable[[FlowEvent], None],
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
        emit(FlowEvent("page_started", page.index))
        attempts = 0

        async def attempt() -> list[ImageData]:
            nonlocal attempts
            attempts += 1
            async with self.slots.slot(cfg.image_provider, limit):
                return await provider.generate(request)

        try:
            images = await self._with_retries(attempt, what=f"page {page.index} of {post.id}")
            if not images:
                raise UpstreamError("The image model returned no image", retryable=False)
            stored = await self.images.write(
                images[0].data, owner_key_id=post.owner_key_id, post_id=post.id
            )
        except GatewayError as exc:
            await self._update_page(
                post.id, page.index, status="failed", error=exc.message, attempts=attempts
            )
            emit(
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
            emit(FlowEvent("page_failed", page.index, {"reason": reason, "retryable": True}))
            return None
        # the image row and the page that shows it are saved together
        await self._update_page(
            post.id, page.index, status="done", image_id=stored.id, error=None,
            attempts=attempts, also=stored,
        )  # fmt: skip
        emit(FlowEvent("page_done", page.index, {"image_id": stored.id, "ext": stored.ext}))
        return ImageData(images[0].data, stored.mime)

    async def _with_retries(self, call: Callable[[], Any], *, what: str) -> Any:
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
