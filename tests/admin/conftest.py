"""Dashboard fixtures: a browser-like client (cookies, no bearer) and a signed-in admin."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import httpx
import pytest

PASSWORD = "correct horse battery"


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf(?:_token|-token)"[^>]*?(?:value|content)="([^"]+)"', html)
    assert found, "no CSRF token in the page"
    return found.group(1)


@pytest.fixture
async def browser(app) -> AsyncIterator[httpx.AsyncClient]:
    """A client that behaves like a browser: cookies, no Authorization header."""
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(
        transport=transport, base_url="http://testserver", timeout=60
    ) as c:
        yield c


async def setup_admin(
    browser: httpx.AsyncClient, token: str, username: str = "admin", password: str = PASSWORD
) -> httpx.Response:
    page = await browser.get("/admin/setup")
    return await browser.post(
        "/admin/setup",
        data={
            "setup_token": token,
            "username": username,
            "password": password,
            "password_repeat": password,
            "csrf_token": csrf_of(page.text),
        },
    )


async def sign_in(
    browser: httpx.AsyncClient, username: str = "admin", password: str = PASSWORD
) -> httpx.Response:
    page = await browser.get("/admin/login")
    return await browser.post(
        "/admin/login",
        data={"username": username, "password": password, "csrf_token": csrf_of(page.text)},
    )


@pytest.fixture
async def admin_browser(browser, services) -> httpx.AsyncClient:
    """Signed in as `admin`; `browser.headers['X-CSRF-Token']` set for API writes."""
    token = await services.admin.new_setup_token()
    r = await setup_admin(browser, token)
    assert r.status_code == 303, r.text
    page = await browser.get("/admin")
    assert page.status_code == 200, page.text
    browser.headers["X-CSRF-Token"] = csrf_of(page.text)
    return browser
