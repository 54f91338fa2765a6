"""The API keys page: create (shown once, with a copy button), list, edit limits, revoke."""

from __future__ import annotations

import json
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse

from admin.auth import SignedIn
from admin.keys import key_public, usage_today
from admin.views import page_session, render
from gateway.routes.common import state_of

router = APIRouter(include_in_schema=False)
NAV = ("keys", "/admin/keys")


@router.get("/admin/keys", response_class=HTMLResponse)
async def keys_page(
    request: Request, signed_in: Annotated[SignedIn, Depends(page_session)]
) -> HTMLResponse:
    state = state_of(request)
    rows = await state.keys.list()
    today = await usage_today(state)
    keys = [key_public(row, today) for row in rows]
    keys.sort(key=lambda k: (k["revoked"], k["created_at"] or ""), reverse=False)
    return render(
        request,
        "keys.html",
        signed_in=signed_in,
        active="keys",
        keys=keys,
        keys_json=json.dumps(keys, ensure_ascii=False),
        models=state.config().model_ids(),
    )
