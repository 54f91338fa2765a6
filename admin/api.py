"""`/admin/api`: JSON for the dashboard. Until the dashboard's sign-in exists it takes
`Authorization: Bearer $INKGATE_MASTER_KEY` only."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request

from gateway.auth import Principal, require_key
from gateway.errors import NotFound, PermissionDenied
from gateway.probe import probe_all
from gateway.routes.common import state_of

router = APIRouter(prefix="/admin/api", tags=["admin"])


async def require_master(principal: Annotated[Principal, Depends(require_key)]) -> Principal:
    if not principal.is_master:
        raise PermissionDenied("The admin API needs the master key (INKGATE_MASTER_KEY).")
    return principal


Admin = Annotated[Principal, Depends(require_master)]


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
