"""Sign-in pages: first-admin setup, sign-in, sign-out, change password, language."""

from __future__ import annotations

import hmac
import secrets
from typing import Annotated
from urllib.parse import urlsplit

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse

from admin.auth import SESSION_COOKIE, SignedIn, check_csrf, request_ip
from admin.i18n import LANG_COOKIE, LANGS, language, translator
from admin.views import page_session, render
from gateway.errors import GatewayError
from gateway.urls import base_url

router = APIRouter(include_in_schema=False)

# before a session exists, forms are protected by a double-submit cookie
PRE_CSRF_COOKIE = "inkgate_csrf"


def _secure(request: Request) -> bool:
    return base_url(request.app.state.services.settings, request).startswith("https://")


def _pre_csrf(request: Request) -> str:
    return request.cookies.get(PRE_CSRF_COOKIE) or secrets.token_urlsafe(24)


def _with_pre_csrf(request: Request, response: HTMLResponse, token: str) -> HTMLResponse:
    response.set_cookie(
        PRE_CSRF_COOKIE, token, httponly=True, samesite="lax", secure=_secure(request),
        path="/admin",
    )  # fmt: skip
    return response


def _pre_csrf_ok(request: Request, sent: str) -> bool:
    cookie = request.cookies.get(PRE_CSRF_COOKIE, "")
    return bool(cookie and sent) and hmac.compare_digest(cookie.encode(), sent.encode())


def _safe_next(target: str | None) -> str:
    """Only a path inside the dashboard: never an open redirect."""
    if not target:
        return "/admin"
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not parts.path.startswith("/admin") or "\\" in target:
        return "/admin"
    return target


def _session_cookie(request: Request, response, token: str) -> None:
    hours = request.app.state.services.settings.admin_session_hours
    response.set_cookie(
        SESSION_COOKIE, token, httponly=True, samesite="lax", secure=_secure(request),
        path="/admin", max_age=int(hours * 3600),
    )  # fmt: skip


def _error_text(request: Request, exc: GatewayError) -> str:
    return exc.message


# -- setup --------------------------------------------------------------------------


@router.get("/admin/setup", response_class=HTMLResponse)
async def setup_page(request: Request) -> HTMLResponse:
    admin = request.app.state.services.admin
    if await admin.has_admin():
        return RedirectResponse("/admin/login?setup=done", status_code=303)
    token = _pre_csrf(request)
    return _with_pre_csrf(request, render(request, "setup.html", csrf=token), token)


@router.post("/admin/setup", response_class=HTMLResponse)
async def setup_submit(
    request: Request,
    setup_token: Annotated[str, Form(max_length=500)] = "",
    username: Annotated[str, Form(max_length=200)] = "",
    password: Annotated[str, Form(max_length=2000)] = "",
    password_repeat: Annotated[str, Form(max_length=2000)] = "",
    csrf_token: Annotated[str, Form(max_length=200)] = "",
) -> HTMLResponse:
    services = request.app.state.services
    t = translator(language(request))
    token = _pre_csrf(request)
    if not _pre_csrf_ok(request, csrf_token):
        error, status = t("common.error") + ": CSRF", 403
    elif password != password_repeat:
        error, status = t("setup.mismatch"), 400
    else:
        try:
            await services.admin.create_first_admin(setup_token, username, password)
        except GatewayError as exc:
            error, status = _error_text(request, exc), exc.status
        else:
            cookie, _ = await services.admin.sign_in(
                username, password, ip=request_ip(request),
                user_agent=request.headers.get("user-agent", ""),
            )  # fmt: skip
            response = RedirectResponse("/admin", status_code=303)
            _session_cookie(request, response, cookie)
            return response
    page = render(
        request, "setup.html", csrf=token, error=error, username=username, status_code=status
    )
    return _with_pre_csrf(request, page, token)


# -- sign-in / sign-out -------------------------------------------------------------


@router.get("/admin/login", response_class=HTMLResponse)
async def login_page(
    request: Request, next: str | None = None, expired: int = 0, signed_out: int = 0
) -> HTMLResponse:
    admin = request.app.state.services.admin
    if not await admin.has_admin():
        return RedirectResponse("/admin/setup", status_code=303)
    t = translator(language(request))
    notice = t("login.expired") if expired else t("login.signed_out") if signed_out else None
    token = _pre_csrf(request)
    page = render(request, "login.html", csrf=token, next=_safe_next(next), notice=notice)
    return _with_pre_csrf(request, page, token)


@router.post("/admin/login", response_class=HTMLResponse)
async def login_submit(
    request: Request,
    username: Annotated[str, Form(max_length=200)] = "",
    password: Annotated[str, Form(max_length=2000)] = "",
    csrf_token: Annotated[str, Form(max_length=200)] = "",
    next: Annotated[str, Form(max_length=2000)] = "/admin",
) -> HTMLResponse:
    services = request.app.state.services
    token = _pre_csrf(request)
    headers = {}
    if not _pre_csrf_ok(request, csrf_token):
        error, status = translator(language(request))("common.error") + ": CSRF", 403
    else:
        try:
            cookie, _ = await services.admin.sign_in(
                username, password, ip=request_ip(request),
                user_agent=request.headers.get("user-agent", ""),
            )  # fmt: skip
        except GatewayError as exc:
            error, status, headers = exc.message, exc.status, exc.headers()
        else:
            response = RedirectResponse(_safe_next(next), status_code=303)
            _session_cookie(request, response, cookie)
            return response
    page = render(
        request, "login.html", csrf=token, next=_safe_next(next), error=error,
        username=username, status_code=status,
    )  # fmt: skip
    page.headers.update(headers)
    return _with_pre_csrf(request, page, token)


@router.post("/admin/logout")
async def logout(request: Request, signed_in: Annotated[SignedIn, Depends(page_session)]):
    await check_csrf(request, signed_in)
    await request.app.state.services.admin.sign_out(signed_in.session_id)
    response = RedirectResponse("/admin/login?signed_out=1", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/admin")
    return response


# -- change password ------------------------------------------------------------------


@router.get("/admin/password", response_class=HTMLResponse)
async def password_page(
    request: Request, signed_in: Annotated[SignedIn, Depends(page_session)]
) -> HTMLResponse:
    return render(request, "password.html", signed_in=signed_in, active="password")


@router.post("/admin/password", response_class=HTMLResponse)
async def password_submit(
    request: Request,
    signed_in: Annotated[SignedIn, Depends(page_session)],
    current_password: Annotated[str, Form(max_length=2000)] = "",
    new_password: Annotated[str, Form(max_length=2000)] = "",
    new_password_repeat: Annotated[str, Form(max_length=2000)] = "",
) -> HTMLResponse:
    await check_csrf(request, signed_in)
    t = translator(language(request))
    if new_password != new_password_repeat:
        return render(
            request, "password.html", signed_in=signed_in, active="password",
            error=t("setup.mismatch"), status_code=400,
        )  # fmt: skip
    try:
        await request.app.state.services.admin.change_password(
            signed_in, current_password, new_password
        )
    except GatewayError as exc:
        return render(
            request, "password.html", signed_in=signed_in, active="password",
            error=exc.message, status_code=exc.status,
        )  # fmt: skip
    return render(
        request, "password.html", signed_in=signed_in, active="password",
        notice=t("password.changed"),
    )  # fmt: skip


# -- language ---------------------------------------------------------------------------


@router.get("/admin/lang/{lang}")
async def set_language(request: Request, lang: str, next: str | None = None):
    response = RedirectResponse(_safe_next(next), status_code=303)
    if lang in LANGS:
        response.set_cookie(
            LANG_COOKIE, lang, samesite="lax", secure=_secure(request), path="/admin",
            max_age=365 * 86400,
        )  # fmt: skip
    return response
