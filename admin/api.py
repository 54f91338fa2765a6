"""`/admin/api`: JSON for the dashboard. It takes a dashboard session (with its CSRF
token on writes) or `Authorization: Bearer $INKGATE_MASTER_KEY` (admin/auth.py)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, Field

from admin.auth import Admin as AdminAuthenticated
from gateway.errors import InvalidRequest, NotFound
from gateway.probe import probe_all
from gateway.routes.common import state_of
from gateway.urls import base_url, image_url
from storage.lifecycle import STATES

router = APIRouter(prefix="/admin/api", tags=["admin"])


Admin = AdminAuthenticated


@router.get("/providers/test")
async def test_providers(
    request: Request, _: Admin, name: str | None = None, deep: bool = False
) -> dict:
    """Probe the configured providers (or `name`): bad key, unreachable, timeout, wrong model."""
    config = state_of(request).config()
    try:
        reports = await probe_all(config, name, deep=deep)
    except KeyError:
        raise NotFound(f"No provider named {name!r}", param="name") from None
    return {"ok": all(r.ok for r in reports), "providers": [r.as_dict() for r in reports]}


# -- images and the cache -------------------------------------------------------


def _image_public(base: str, state, image, blob) -> dict:
    return {
        "id": image.id,
        "url": image_url(base, image.id, image.ext),
        "thumb_url": f"{base}/images/{image.id}/thumb",
        "direct_url": state.images.direct_url(blob),
        "mime": image.mime,
        "width": image.width,
        "height": image.height,
        "size_bytes": image.size_bytes,
        "post_id": image.post_id,
        "owner_key_id": image.owner_key_id,
        "created_at": image.created_at.isoformat(),
        "accessed_at": _iso(blob.accessed_at) if blob else None,
        "local": bool(blob and blob.local),
        "remote_state": blob.remote_state if blob else "missing",
        "upload_attempts": blob.attempts if blob else 0,
        "last_error": blob.last_error if blob else None,
    }


def _iso(ts: float | None) -> str | None:
    return datetime.fromtimestamp(ts, UTC).isoformat() if ts else None


@router.get("/cache/stats")
async def cache_stats(request: Request, _: Admin) -> dict:
    """Counts and bytes: local copies, uploaded, pending, failed; images and contents."""
    return await state_of(request).storage.lifecycle.stats()


@router.post("/cache/cleanup")
async def cache_cleanup(request: Request, _: Admin) -> dict:
    """Run the lifecycle sweep now (TTL, size cap, retention, orphans)."""
    report = await state_of(request).storage.lifecycle.sweep()
    return report.as_dict()


@router.post("/cache/clear-local")
async def cache_clear_local(request: Request, _: Admin) -> dict:
    """Delete every local copy that is safely in the bucket (rows and bucket copies stay)."""
    count, freed = await state_of(request).storage.lifecycle.clear_local()
    return {"cleared": count, "freed_bytes": freed}


def _upload_queue(request: Request):
    storage = state_of(request).storage
    if not storage.images.remote_enabled:
        raise InvalidRequest("No bucket is configured (INKGATE_STORAGE=local).")
    return storage.uploads


@router.post("/cache/upload-pending")
async def cache_upload_pending(request: Request, _: Admin) -> dict:
    """Make every pending upload due now and wake the upload worker."""
    return {"queued": await _upload_queue(request).upload_pending_now()}


@router.post("/cache/retry-failed")
async def cache_retry_failed(request: Request, _: Admin) -> dict:
    """Put failed uploads back in the queue with their attempts reset."""
    return {"queued": await _upload_queue(request).retry_failed()}


@router.delete("/cache/results")
async def cache_purge_results(request: Request, _: Admin, model: str | None = None) -> dict:
    """Forget remembered image answers (all, or one model's)."""
    return {"purged": await state_of(request).storage.lifecycle.purge_results(model)}


@router.get("/images")
async def list_images(
    request: Request,
    _: Admin,
    page: Annotated[int, Query(ge=1)] = 1,
    per_page: Annotated[int, Query(ge=1, le=200)] = 50,
    sort: Literal["created", "accessed", "size"] = "created",
    order: Literal["asc", "desc"] = "desc",
    state: Literal[STATES] | None = None,  # type: ignore[valid-type]
) -> dict:
    """Stored images, paged; sort by created, accessed or size; filter by state."""
    services = state_of(request)
    rows, total = await services.storage.lifecycle.list_images(
        page=page, per_page=per_page, sort=sort, order=order, state=state
    )
    base = base_url(services.settings, request)
    return {
        "object": "list",
        "page": page,
        "per_page": per_page,
        "total": total,
        "data": [_image_public(base, services, image, blob) for image, blob in rows],
    }


class DeleteImages(BaseModel):
    ids: list[str] = Field(min_length=1, max_length=1000)
    scope: Literal["local", "remote", "all"] = "all"


@router.post("/images/delete")
async def delete_images(request: Request, _: Admin, body: DeleteImages) -> dict:
    """`local`: drop local copies already in the bucket; `remote`: drop bucket copies of
    images on local disk; `all`: delete the images everywhere."""
    return await state_of(request).storage.lifecycle.delete_images(body.ids, body.scope)


@router.delete("/images/{image_id}")
async def delete_image(
    request: Request, _: Admin, image_id: str, scope: Literal["local", "remote", "all"] = "all"
) -> dict:
    result = await state_of(request).storage.lifecycle.delete_images([image_id], scope)
    if result["not_found"]:
        raise NotFound(f"No image {image_id!r}", code="image_not_found")
    return result
