"""`/admin`: the dashboard's landing page (how to connect, which models exist).

It shows nothing secret; key, cache and post management arrive with the
dashboard's sign-in.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from jinja2 import Environment, FileSystemLoader, select_autoescape

from gateway import __version__
from gateway.routes.common import state_of
from gateway.urls import base_url

router = APIRouter(include_in_schema=False)
_templates = Environment(
    loader=FileSystemLoader(Path(__file__).parent / "templates"),
    autoescape=select_autoescape(["html"]),
)


@router.get("/admin", response_class=HTMLResponse)
@router.get("/admin/", response_class=HTMLResponse)
async def landing(request: Request) -> HTMLResponse:
    state = state_of(request)
    html = _templates.get_template("landing.html").render(
        version=__version__,
        base_url=base_url(state.settings, request),
        models=state.config().model_ids(),
    )
    return HTMLResponse(html)
