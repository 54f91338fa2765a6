"""`create_app(settings)`: the only way to build the gateway."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import httpx
from fastapi import FastAPI

from admin.auth import AdminAuth
from gateway import __version__
from gateway.auth import KeyService
from gateway.config import ConfigSource, storage_config
from gateway.config_store import ConfigStore
from gateway.flow.runner import FlowRunner
from gateway.flow.videos import VideoRunner
from gateway.http_errors import BodySizeLimit, install_error_handlers
from gateway.idempotency import Idempotency
from gateway.routes import chat, files, health, images, openai_models, posts, videos
from gateway.routes.common import AppState
from gateway.routes.files import send_if_hot
from gateway.secrets_box import SecretBox
from gateway.settings import Settings
from gateway.upstream_slots import UpstreamSlots
from gateway.usage import RetentionSweep, UsageRecorder, UsageWriter
from providers.network import upstream_client
from storage.db import Database
from storage.service import Storage

log = logging.getLogger("inkgate")


def _read_upstream_answers_in_large_pieces() -> None:
    # httpcore reads responses 64 KiB at a time; a 2.7 MB base64 image answer then
    # costs ~40 trips through httpcore, h11 and anyio. 1 MiB reads measured ~2 ms
    # less CPU per image (bench/flow.py). A class attribute, so guarded.
    try:
        from httpcore._async.http11 import AsyncHTTP11Connection
    except ImportError:  # pragma: no cover - a future httpcore
        return
    if getattr(AsyncHTTP11Connection, "READ_NUM_BYTES", None) == 64 * 1024:
        AsyncHTTP11Connection.READ_NUM_BYTES = 1024 * 1024


def local_base_url(settings: Settings) -> str:
    if settings.public_base_url:
        return settings.public_base_url
    host = settings.host if settings.host not in ("0.0.0.0", "::", "") else "127.0.0.1"
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{settings.port}"


async def first_start_banner(
    settings: Settings, keys: KeyService, out=None, *, admin: AdminAuth | None = None
) -> None:
    """Print where the gateway is; on the very first start also a new API key, once; and
    while no dashboard admin exists, a one-time setup token for `/admin/setup`."""
    out = out or sys.stdout
    base = local_base_url(settings)
    lines = [
        "",
        "InkGate is running."
        if settings.workers == 1
        else f"InkGate is starting {settings.workers} workers.",
        f"  OpenAI base URL : {base}/v1",
        f"  Dashboard       : {base}/admin",
    ]
    if settings.master_key is None and await keys.count() == 0:
        _, plaintext = await keys.create("default")
        lines += [
            f"  API key         : {plaintext}",
            "  (shown once; it is stored hashed. Make more with `inkgate keys create --name NAME`.)",
        ]
    elif settings.master_key is not None:
        lines.append("  API key         : the INKGATE_MASTER_KEY you set, or any key you created")
    else:
        lines.append("  API key         : a key you created (`inkgate keys list`)")
    if admin is not None and (token := await admin.new_setup_token()) is not None:
        lines += [
            f"  Dashboard setup : open {base}/admin/setup and enter {token}",
            "  (one-time, 24 h; INKGATE_MASTER_KEY works too. Creates the first admin.)",
        ]
    print("\n".join(lines) + "\n", file=out, flush=True)


async def prepare_workers(settings: Settings) -> None:
    """What `inkgate serve --workers N` does once, before its workers start: the data
    directory and signing secret, the migrations, and the banner (with the first API
    key and the dashboard's setup token). Each worker then finds them done."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    await anyio.to_thread.run_sync(settings.signing_secret)
    db = Database(settings.database_url)
    try:
        await db.migrate()
        keys = KeyService(db, settings.master_key)
        admin = AdminAuth(
            db, session_hours=settings.admin_session_hours, master_key=settings.master_key
        )
        await first_start_banner(settings, keys, admin=admin)
    finally:
        await db.dispose()


def worker_app() -> FastAPI:
    """The app of one `inkgate serve --workers N` worker process (uvicorn's factory),
    from the environment the supervisor set."""
    from gateway.cli import configure_logging, tune_allocator

    settings = Settings.from_env()
    tune_allocator()
    configure_logging(settings)
    return create_app(settings, worker=True)


def _services_db(app: FastAPI) -> Database | None:
    services = getattr(app.state, "services", None)
    return services.db if services is not None else None


def _usage_writer(app: FastAPI) -> UsageWriter | None:
    services = getattr(app.state, "services", None)
    return services.usage if services is not None else None


class InkGateApp(FastAPI):
    """FastAPI, with images already in memory answered before routing (see files.py)."""

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and await send_if_hot(
            getattr(self.state, "services", None), scope, send
        ):
            return
        await super().__call__(scope, receive, send)


def create_app(settings: Settings, *, announce: bool = False, worker: bool = False) -> FastAPI:
    """Build the app. `announce` prints the banner at start (the CLI sets it); `worker`:
    one of several `inkgate serve` processes (the supervisor printed the banner)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        await anyio.to_thread.run_sync(settings.signing_secret)  # made/read once, off the loop
        db = Database(settings.database_url)
        await db.migrate()
        _read_upstream_answers_in_large_pieces()
        http = upstream_client(
            timeout=httpx.Timeout(settings.upstream_timeout, connect=15.0),
            limits=httpx.Limits(max_connections=200, max_keepalive_connections=50),
            follow_redirects=False,
        )
        store = ConfigStore(db, SecretBox(settings.signing_secret()))
        source = ConfigSource(settings.config_path, settings.data_dir, http, os.environ, store)
        await source.load()
        config = await anyio.to_thread.run_sync(storage_config, settings)
        storage = Storage(db, settings.data_dir / "blobs", config)
        blobs, image_store = storage.images.blobs, storage.images
        await storage.start()
        keys = KeyService(db, settings.master_key)
        admin = AdminAuth(
            db, session_hours=settings.admin_session_hours, master_key=settings.master_key
        )
        slots = UpstreamSlots(db)
        runner = FlowRunner(settings, db, image_store, lambda: source.current, slots)
        runner.start_background()  # renews this process's jobs, resumes abandoned ones
        video_runner = VideoRunner(settings, db, image_store, lambda: source.current, slots)
        video_runner.start_background()  # the same for video jobs, and their expiry
        usage = UsageWriter(db)
        usage.start()
        retention = RetentionSweep(db, settings.usage_retention_days)  # usage rows, sessions
        retention.start()
        app.state.services = AppState(
            settings=settings,
            db=db,
            http=http,
            blobs=blobs,
            images=image_store,
            storage=storage,
            keys=keys,
            runner=runner,
            config=lambda: source.current,
            usage=usage,
            admin=admin,
            videos=video_runner,
        )
        app.state.config_source = source
        watcher = asyncio.create_task(source.watch(settings.config_reload_seconds))
        if announce:
            await first_start_banner(settings, keys, admin=admin)
        if announce or worker:
            # Everything imported so far lives as long as the process: keep the garbage
            # collector from rescanning it on every full collection.
            gc.freeze()
        try:
            yield
        finally:
            watcher.cancel()
            await runner.shutdown()
            await video_runner.shutdown()
            await retention.stop()
            await usage.stop()
            await storage.stop()
            await slots.release_all()
            await http.aclose()
            await db.dispose()

    app = InkGateApp(
        title="InkGate",
        version=__version__,
        description="OpenAI-compatible gateway for AI image posts.",
        lifespan=lifespan,
    )
    install_error_handlers(app)
    for module in (openai_models, chat, images, posts, videos, files, health):
        app.include_router(module.router)
    from admin.api import router as admin_api
    from admin.cache_api import router as admin_cache
    from admin.keys import router as admin_keys
    from admin.logs_api import router as admin_logs
    from admin.posts_api import router as admin_posts
    from admin.providers_api import router as admin_providers
    from admin.usage_api import router as admin_usage
    from admin.views import install as install_dashboard

    install_dashboard(app)
    app.include_router(admin_api)
    app.include_router(admin_cache)
    app.include_router(admin_keys)
    app.include_router(admin_posts)
    app.include_router(admin_logs)
    app.include_router(admin_providers)
    app.include_router(admin_usage)
    app.add_middleware(Idempotency, db=lambda: _services_db(app))
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(UsageRecorder, writer=lambda: _usage_writer(app))
    return app
