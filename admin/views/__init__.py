"""The dashboard's HTML pages: server-rendered (Jinja2), a little vendored JS
(`admin/static/admin.js`) that calls `/admin/api` with the session's CSRF token.

`install(app)` adds every page router, the static files and the sign-in redirect.
A page module has a `router` and may add strings with `admin.i18n.add`.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from jinja2 import Environment, FileSystemLoader, select_autoescape
from markupsafe import Markup

from admin.auth import SignedIn, current_session
from admin.i18n import language, translator
from gateway import __version__
from gateway.urls import base_url

ADMIN_DIR = Path(__file__).resolve().parent.parent
STATIC_VERSION = __version__

templates = Environment(
    loader=FileSystemLoader(ADMIN_DIR / "templates"),
    autoescape=select_autoescape(["html"]),
    trim_blocks=True,
    lstrip_blocks=True,
)


def _when(value) -> str:
    """A time for a table cell, in UTC: `2026-11-21 14:03`."""
    if value is None or value == "":
        return ""
    if isinstance(value, int | float):
        value = datetime.fromtimestamp(value, UTC)
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            return value
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M")


def _bytes(value) -> str:
    value = float(value or 0)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if value < 1024 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return ""


def _json_attr(value) -> Markup:
    """JSON for a `data-*` attribute (escaped by autoescape on output)."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


templates.filters["when"] = _when
templates.filters["bytes"] = _bytes
templates.filters["tojson_attr"] = _json_attr


class PageRedirect(Exception):
    """Raised by a page that needs something first (sign-in, setup)."""

    def __init__(self, location: str) -> None:
        self.location = location


async def page_session(request: Request) -> SignedIn:
    """The signed-in user of a page, or a redirect to sign-in (or to setup)."""
    signed_in = await current_session(request)
    if signed_in is None:
        admin = request.app.state.services.admin
        if not await admin.has_admin():
            raise PageRedirect("/admin/setup")
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        expired = "&expired=1" if request.cookies.get("inkgate_session") else ""
        raise PageRedirect(f"/admin/login?next={quote(target, safe='')}{expired}")
    return signed_in


def render(
    request: Request,
    template: str,
    *,
    signed_in: SignedIn | None = None,
    status_code: int = 200,
    active: str = "",
    **context,
) -> HTMLResponse:
    lang = language(request)
    html = templates.get_template(template).render(
        t=translator(lang),
        lang=lang,
        version=__version__,
        static_version=STATIC_VERSION,
        user=signed_in,
        csrf=signed_in.csrf_token if signed_in else context.pop("csrf", ""),
        active=active,
        base_url=base_url(request.app.state.services.settings, request),
        path=request.url.path,
        **context,
    )
    response = HTMLResponse(html, status_code=status_code)
    # pages show per-user data: never cached by a shared proxy, never framed
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Referrer-Policy"] = "same-origin"
    response.headers["Content-Security-Policy"] = (
        "default-src 'self'; img-src 'self' data: blob: https: http:; "
        "style-src 'self'; script-src 'self'; frame-ancestors 'none'; form-action 'self'"
    )
    return response


# (nav key, path) of each page in the sidebar, in order; a page module's `NAV`
PAGES = ("overview", "keys", "providers", "posts", "images", "logs", "usage")


def install(app: FastAPI) -> None:
    from admin.views import auth, images, keys, logs, overview, posts, providers, usage

    modules = [auth, overview, keys, providers, posts, images, logs, usage]
    navs = {m.NAV[0]: m.NAV for m in modules if hasattr(m, "NAV")}
    templates.globals["nav_pages"] = [navs[k] for k in PAGES if k in navs]

    @app.exception_handler(PageRedirect)
    async def _redirect(_: Request, exc: PageRedirect) -> RedirectResponse:
        return RedirectResponse(exc.location, status_code=303)

    app.mount("/admin/static", StaticFiles(directory=ADMIN_DIR / "static"), name="admin-static")
    for module in modules:
        app.include_router(module.router)
