"""Dashboard sign-in: first admin, sessions, CSRF, throttling, expiry, sign-out, password."""

from __future__ import annotations

import time

from admin.auth import THROTTLE_PER_USER, hash_password_sync, verify_password_sync
from storage.tables import AdminSession, AdminUser
from tests.admin.conftest import PASSWORD, csrf_of, setup_admin, sign_in
from tests.conftest import MASTER_KEY


async def test_pages_send_to_setup_until_an_admin_exists(browser) -> None:
    r = await browser.get("/admin/keys")
    assert r.status_code == 303 and r.headers["location"] == "/admin/setup"
    r = await browser.get("/admin/login")
    assert r.status_code == 303 and r.headers["location"] == "/admin/setup"


async def test_setup_with_the_printed_token_signs_in(browser, services) -> None:
    token = await services.admin.new_setup_token()
    assert token and token.startswith("setup-")
    r = await setup_admin(browser, "setup-wrong")
    assert r.status_code == 401 and "setup token is wrong" in r.text
    r = await setup_admin(browser, token)
    assert r.status_code == 303 and r.headers["location"] == "/admin"
    cookie = browser.cookies.get("inkgate_session")
    assert cookie
    set_cookie = r.headers["set-cookie"].lower()
    assert "httponly" in set_cookie and "samesite=lax" in set_cookie
    assert "secure" not in set_cookie  # plain http: a Secure cookie would never come back
    page = await browser.get("/admin")
    assert page.status_code == 200 and "Signed in as admin" in page.text
    # the token worked once; the setup page is gone
    assert await services.admin.new_setup_token() is None
    r = await browser.get("/admin/setup")
    assert r.status_code == 303
    async with services.db.session() as session:
        user = (await session.exec(__import__("sqlmodel").select(AdminUser))).one()
        stored = await session.get(
            AdminSession, __import__("hashlib").sha256(cookie.encode()).hexdigest()
        )
    assert user.password_hash.startswith("scrypt$") and PASSWORD not in user.password_hash
    assert stored is not None  # only the token's hash is stored


async def test_setup_with_the_master_key(browser) -> None:
    r = await setup_admin(browser, MASTER_KEY, username="root")
    assert r.status_code == 303
    assert "root" in (await browser.get("/admin")).text


async def test_setup_checks_password_and_csrf(browser, services) -> None:
    token = await services.admin.new_setup_token()
    r = await setup_admin(browser, token, password="short")
    assert r.status_code == 400 and "at least 10" in r.text
    page = await browser.get("/admin/setup")
    r = await browser.post(
        "/admin/setup",
        data={"setup_token": token, "username": "a", "password": PASSWORD,
              "password_repeat": PASSWORD, "csrf_token": "forged"},
    )  # fmt: skip
    assert r.status_code == 403
    assert csrf_of(page.text)
    assert not await services.admin.has_admin()


async def test_sign_in_out_and_wrong_password(admin_browser, browser, app) -> None:
    r = await admin_browser.post(
        "/admin/logout", data={"csrf_token": admin_browser.headers["X-CSRF-Token"]}
    )
    assert r.status_code == 303 and "signed_out=1" in r.headers["location"]
    assert (await browser.get("/admin")).status_code == 303
    r = await sign_in(browser, password="wrong password!")
    assert r.status_code == 401 and "Wrong user name or password" in r.text
    r = await sign_in(browser, username="nobody")
    assert r.status_code == 401 and "Wrong user name or password" in r.text
    r = await sign_in(browser)
    assert r.status_code == 303 and r.headers["location"] == "/admin"
    assert (await browser.get("/admin/keys")).status_code == 200


async def test_the_old_cookie_is_dead_after_sign_out(admin_browser, app) -> None:
    old = admin_browser.cookies.get("inkgate_session")
    await admin_browser.post(
        "/admin/logout", data={"csrf_token": admin_browser.headers["X-CSRF-Token"]}
    )
    import httpx

    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://testserver",
        cookies={"inkgate_session": old},
    ) as replay:  # fmt: skip
        assert (await replay.get("/admin/api/keys")).status_code == 401


async def test_next_is_never_an_open_redirect(admin_browser, browser) -> None:
    await admin_browser.post(
        "/admin/logout", data={"csrf_token": admin_browser.headers["X-CSRF-Token"]}
    )
    for target, expected in [
        ("/admin/keys", "/admin/keys"),
        ("https://evil.example/admin", "/admin"),
        ("//evil.example/admin", "/admin"),
        ("/v1/models", "/admin"),
    ]:
        page = await browser.get("/admin/login")
        r = await browser.post(
            "/admin/login",
            data={"username": "admin", "password": PASSWORD, "next": target,
                  "csrf_token": csrf_of(page.text)},
        )  # fmt: skip
        assert r.headers["location"] == expected


async def test_admin_api_with_a_session_needs_the_csrf_token(admin_browser) -> None:
    token = admin_browser.headers.pop("X-CSRF-Token")
    assert (await admin_browser.get("/admin/api/keys")).status_code == 200  # reads: no token
    r = await admin_browser.post("/admin/api/keys", json={"name": "x"})
    assert r.status_code == 403 and r.json()["error"]["code"] == "csrf_failed"
    r = await admin_browser.post(
        "/admin/api/keys", json={"name": "x"}, headers={"X-CSRF-Token": "nope"}
    )
    assert r.status_code == 403
    r = await admin_browser.post(
        "/admin/api/keys", json={"name": "x"}, headers={"X-CSRF-Token": token}
    )
    assert r.status_code == 201, r.text


async def test_admin_api_takes_the_master_key_but_not_other_keys(client, services) -> None:
    assert (await client.get("/admin/api/keys")).status_code == 200  # bearer: no CSRF needed
    _, plaintext = await services.keys.create("bob")
    r = await client.get("/admin/api/keys", headers={"Authorization": f"Bearer {plaintext}"})
    assert r.status_code == 403
    r = await client.get("/admin/api/keys", headers={"Authorization": "Bearer sk-ink-wrong"})
    assert r.status_code == 401
    r = await client.get("/admin/api/keys", headers={"Authorization": ""})
    assert r.status_code == 401 and r.json()["error"]["code"] == "not_signed_in"


async def test_sign_in_is_throttled_per_user_and_address(admin_browser, browser) -> None:
    for _ in range(THROTTLE_PER_USER):
        r = await sign_in(browser, password="wrong password!")
        assert r.status_code == 401
    r = await sign_in(browser)  # even the right password waits now
    assert r.status_code == 429 and int(r.headers["retry-after"]) > 800
    assert "Too many failed sign-ins" in r.text
    # another user name from the same address is not locked out by these
    r = await sign_in(browser, username="other", password="whatever-else")
    assert r.status_code == 401


async def test_throttle_window_passes(admin_browser, browser, services) -> None:
    from storage.tables import AdminSignInFailure

    async with services.db.session() as session:
        for _ in range(THROTTLE_PER_USER):
            session.add(
                AdminSignInFailure(username="admin", ip="127.0.0.1", at=time.time() - 16 * 60)
            )
        await session.commit()
    r = await sign_in(browser)
    assert r.status_code == 303


async def test_session_expires_without_use(admin_browser, services) -> None:
    assert (await admin_browser.get("/admin/api/keys")).status_code == 200
    async with services.db.session() as session:
        for row in (await session.exec(__import__("sqlmodel").select(AdminSession))).all():
            row.expires_at = time.time() - 1
            session.add(row)
        await session.commit()
    r = await admin_browser.get("/admin/api/keys")
    assert r.status_code == 401
    r = await admin_browser.get("/admin/keys")
    assert r.status_code == 303 and "expired=1" in r.headers["location"]
    page = await admin_browser.get(r.headers["location"])
    assert "session ended" in page.text


async def test_sessions_slide_and_survive_a_new_app(admin_browser, services) -> None:
    sid = (
        __import__("hashlib").sha256(admin_browser.cookies["inkgate_session"].encode()).hexdigest()
    )
    async with services.db.session() as session:
        row = await session.get(AdminSession, sid)
        row.last_seen_at -= 3600
        row.expires_at -= 3600
        session.add(row)
        await session.commit()
        before = row.expires_at
    assert (await admin_browser.get("/admin/api/keys")).status_code == 200
    async with services.db.session() as session:
        assert (await session.get(AdminSession, sid)).expires_at > before + 3000


async def test_change_password_signs_out_other_sessions(admin_browser, app) -> None:
    import httpx

    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://testserver"
    ) as other:
        assert (await sign_in(other)).status_code == 303
        assert (await other.get("/admin/api/keys")).status_code == 200
        csrf = admin_browser.headers.pop("X-CSRF-Token")  # forms send it as a field
        new = "a different passphrase"
        r = await admin_browser.post(
            "/admin/password",
            data={"current_password": "wrong", "new_password": new,
                  "new_password_repeat": new, "csrf_token": csrf},
        )  # fmt: skip
        assert r.status_code == 400 and "current password is wrong" in r.text
        r = await admin_browser.post(
            "/admin/password",
            data={"current_password": PASSWORD, "new_password": new,
                  "new_password_repeat": new},
        )  # fmt: skip
        assert r.status_code == 403  # no CSRF token
        r = await admin_browser.post(
            "/admin/password",
            data={"current_password": PASSWORD, "new_password": new,
                  "new_password_repeat": new, "csrf_token": csrf},
        )  # fmt: skip
        assert r.status_code == 200 and "Password changed" in r.text
        assert (await other.get("/admin/api/keys")).status_code == 401
        assert (await admin_browser.get("/admin/api/keys")).status_code == 200
        assert (await sign_in(other, password=new)).status_code == 303


def test_password_hashes() -> None:
    stored = hash_password_sync("hunter2hunter2")
    assert stored.startswith("scrypt$n=32768,r=8,p=1$")
    assert verify_password_sync("hunter2hunter2", stored)
    assert not verify_password_sync("hunter2hunter3", stored)
    assert not verify_password_sync("x", "garbage")
    assert hash_password_sync("same") != hash_password_sync("same")  # salted


async def test_language_from_browser_and_switch(admin_browser) -> None:
    page = await admin_browser.get("/admin", headers={"Accept-Language": "zh-CN,zh;q=0.9,en;q=0.8"})
    assert '<html lang="zh">' in page.text and "概览" in page.text
    page = await admin_browser.get("/admin", headers={"Accept-Language": "en-US,en;q=0.9"})
    assert '<html lang="en">' in page.text and "Overview" in page.text
    r = await admin_browser.get("/admin/lang/zh?next=/admin/keys")
    assert r.status_code == 303 and r.headers["location"] == "/admin/keys"
    page = await admin_browser.get("/admin/keys", headers={"Accept-Language": "en"})
    assert '<html lang="zh">' in page.text and "新建密钥" in page.text


def test_every_string_exists_in_both_languages() -> None:
    import admin.views.auth
    import admin.views.keys  # noqa: E401,F401
    from admin import i18n
    from admin.views import install  # noqa: F401  (page modules register their strings)

    assert set(i18n.MESSAGES["en"]) == set(i18n.MESSAGES["zh"])
    assert all(i18n.MESSAGES[lang][k].strip() for lang in i18n.LANGS for k in i18n.MESSAGES[lang])
