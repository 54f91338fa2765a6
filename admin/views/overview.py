"""The overview page: today's numbers, storage, provider health, how to connect."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse

from admin.auth import SignedIn
from admin.keys import collect_stats
from admin.views import page_session, render
from gateway.routes.common import state_of

router = APIRouter(include_in_schema=False)
NAV = ("overview", "/admin")


@router.get("/admin", response_class=HTMLResponse)
@router.get("/admin/", response_class=HTMLResponse)
async def overview(
    request: Request, signed_in: Annotated[SignedIn, Depends(page_session)]
) -> HTMLResponse:
    stats = await collect_stats(state_of(request))
    return render(request, "overview.html", signed_in=signed_in, active="overview", stats=stats)
