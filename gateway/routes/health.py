"""`GET /health` (alive) and `GET /ready` (database and storage reachable)."""

from __future__ import annotations

import anyio
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from gateway.routes.common import state_of

router = APIRouter()


@router.get("/health")
async def health() -> dict:
    return {"status": "ok"}


@router.get("/ready")
async def ready(request: Request) -> JSONResponse:
    state = state_of(request)
    checks: dict[str, str] = {}
    try:
        with anyio.fail_after(5):
            await state.db.ping()
        checks["database"] = "ok"
    except Exception as exc:  # report, don't crash: this is what /ready is for
        checks["database"] = f"error: {type(exc).__name__}"
    try:
        await anyio.to_thread.run_sync(state.blobs.ping)
        checks["storage"] = "ok"
    except OSError as exc:
        checks["storage"] = f"error: {type(exc).__name__}"
    ok = all(v == "ok" for v in checks.values())
    body: dict = {"status": "ok" if ok else "unavailable", "checks": checks}
    remote = state.images.remote
    if remote is not None:
        # reported, not required: during a bucket outage images are still written and
        # served from local disk, and their uploads wait
        from storage.s3 import StorageUnavailable

        try:
            with anyio.fail_after(5):
                await anyio.to_thread.run_sync(remote.ping)
            body["bucket"] = "ok"
        except (StorageUnavailable, TimeoutError):
            body["bucket"] = "unreachable (uploads wait; images are served from local disk)"
    return JSONResponse(body, 200 if ok else 503)
