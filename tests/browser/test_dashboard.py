"""The dashboard in headless Chromium against a real gateway: first-admin setup,
sign-out and sign-in, an API key created (shown once, copied), used on `/v1`, its usage
seen, edited and revoked; the language switch, the password change, a phone-sized
screen; images and the cache settings. Every page visited is checked for console
errors, CSP violations and secrets in its HTML (`Dashboard.check`)."""

from __future__ import annotations

import re
import time
from pathlib import Path

import httpx
import pytest

from tests.browser.conftest import MASTER, PASSWORD, USERNAME, Dashboard
from tests.test_e2e import ROOT

try:
    from playwright.sync_api import expect
except ImportError:  # the chromium_path fixture skips (or, in CI, fails) every test
    expect = None

NEW_PASSWORD = "a brand new browser password"
KEY_NAME = "browser-journey"
USAGE_TIMEOUT = 15.0
USAGE_TEXT = re.compile(r"(\d+) requests · (\d+) images")


def set_up_first_admin(d: Dashboard) -> None:
    """/admin sends a fresh gateway to /admin/setup; the master key works as the token."""
    page = d.page
    d.goto("/admin")
    assert d.path() == "/admin/setup"
    d.check("setup")
    page.fill("#setup_token", MASTER)
    page.fill("#username", USERNAME)
    page.fill("#password", PASSWORD)
    page.fill("#password_repeat", PASSWORD)
    page.click("form button[type=submit]")
    page.wait_for_url(d.gateway.base + "/admin")
    expect(page.locator(".sidebar .foot")).to_contain_text(f"Signed in as {USERNAME}")
    expect(page.locator("#sign-out")).to_be_visible()
    d.check("overview")


def sign_in(d: Dashboard, password: str) -> None:
    page = d.page
    page.fill("#username", USERNAME)
    page.fill("#password", password)
    page.click("form button[type=submit]")


def key_row(d: Dashboard, name: str = KEY_NAME):
    return d.page.locator("#keys tbody tr", has_text=name)


def wait_for_usage(d: Dashboard, requests: int, images: int) -> tuple[int, int]:
    """Reload /admin/keys until the key's "today" cell counts enough: the usage writer
    flushes about once a second."""
    deadline = time.monotonic() + USAGE_TIMEOUT
    while True:
        d.goto("/admin/keys")
        found = USAGE_TEXT.search(key_row(d).locator("td.usage").inner_text())
        assert found, key_row(d).inner_text()
        counts = int(found.group(1)), int(found.group(2))
        if counts[0] >= requests and counts[1] >= images:
            return counts
        assert time.monotonic() < deadline, f"usage still {counts} after {USAGE_TIMEOUT}s"
        d.page.wait_for_timeout(300)


def test_dashboard_journey(dashboard: Dashboard) -> None:
    d, page, gateway = dashboard, dashboard.page, dashboard.gateway
    set_up_first_admin(d)

    # sign out; a wrong password shows the error; the right one signs in again
    page.click("#sign-out")
    page.wait_for_url(re.compile(r"/admin/login\?signed_out=1$"))
    d.check("signed-out")
    sign_in(d, "not the password at all")
    expect(page.locator("#form-error")).to_contain_text("Wrong user name or password")
    # the browser logs the form's 401 answer as a failed resource
    d.check(
        "wrong-password", allow=(f"status of 401 (Unauthorized) ({d.gateway.base}/admin/login)",)
    )
    sign_in(d, PASSWORD)
    page.wait_for_url(d.gateway.base + "/admin")
    d.check("signed-in")

    # a new key: name, rpm, one allowed model; shown once, copied, then only its prefix
    d.goto("/admin/keys")
    expect(page.locator("#keys tbody")).to_contain_text("Nothing here yet")
    d.check("keys-empty")
    page.click("#new-key")
    expect(page.locator("#key-dialog")).to_be_visible()
    page.fill("#key-name", KEY_NAME)
    page.fill("#key-rpm", "60")
    page.check('#key-form input[name="allowed_models"][value="poster"]')
    d.shot("key-form")
    page.click("#key-submit")
    expect(page.locator("#key-created")).to_be_visible()
    key = page.locator("#new-key-value").inner_text().strip()
    assert key.startswith("sk-ink-"), key
    page.click("#copy-key")
    expect(page.locator("#copy-key")).to_have_text("Copied")
    assert page.evaluate("navigator.clipboard.readText()") == key
    d.shot("key-created")
    with page.expect_navigation():
        page.click("#key-created-close")
    d.secrets["API key"] = key
    keys = page.evaluate("JSON.parse(document.getElementById('keys-data').textContent)")
    (listed,) = [k for k in keys if k["name"] == KEY_NAME]
    assert key.startswith(listed["prefix"]) and len(listed["prefix"]) < len(key)
    expect(key_row(d).locator("code")).to_have_text(listed["prefix"] + "…")
    expect(key_row(d).locator("td.limits")).to_contain_text("poster")
    expect(key_row(d).locator("td.limits")).to_contain_text("60 rpm")
    d.check("key-listed")  # the full key is in no page HTML from here on
    page.reload()
    d.check("keys-reloaded")

    # a key dialog dismissed with Escape also forgets the key and lists it
    page.click("#new-key")
    page.fill("#key-name", "dismissed-with-escape")
    page.click("#key-submit")
    expect(page.locator("#key-created")).to_be_visible()
    d.secrets["second API key"] = page.locator("#new-key-value").inner_text().strip()
    with page.expect_navigation():
        page.keyboard.press("Escape")
    expect(key_row(d, "dismissed-with-escape").locator("td.limits")).to_contain_text("unlimited")
    d.check("second-key-listed")

    # the key on /v1: its allowed model draws; another model is refused
    r = gateway.v1("POST", "/images/generations", key, json={"model": "poster", "prompt": "秋天"})
    assert r.status_code == 200, r.text
    image_url = r.json()["data"][0]["url"]
    assert re.search(r"/images/img_[\w-]+\.png$", image_url), image_url
    r = gateway.v1("POST", "/images/generations", key, json={"model": "redink", "prompt": "x"})
    assert r.status_code == 403 and r.json()["error"]["code"] == "model_not_allowed", r.text

    # usage: the key's row on /admin/keys, and the usage rows through the page's session
    wait_for_usage(d, requests=2, images=1)
    d.check("keys-usage")
    usage = page.evaluate("() => inkgate.api('GET', '/admin/api/usage?per_page=50')")
    mine = [row for row in usage["data"] if row["key_name"] == KEY_NAME]
    assert {(row["model"], row["status"]) for row in mine} >= {("poster", 200), ("redink", 403)}
    # the Usage page is another change's; check it once it exists
    if httpx.get(gateway.base + "/admin/usage", timeout=10).status_code != 404:
        d.goto("/admin/usage")
        expect(page.locator("main")).to_contain_text(KEY_NAME)
        d.check("usage-page")

    # edit the limits: rpm 60 → 120; the allowed model stays
    d.goto("/admin/keys")
    key_row(d).locator(".edit-key").click()
    expect(page.locator("#key-dialog")).to_be_visible()
    expect(page.locator("#key-name")).to_have_value(KEY_NAME)
    expect(page.locator("#key-rpm")).to_have_value("60")
    expect(page.locator('#key-form input[value="poster"]')).to_be_checked()
    page.fill("#key-rpm", "120")
    d.shot("key-edit")
    with page.expect_navigation():
        page.click("#key-submit")
    expect(key_row(d).locator("td.limits")).to_contain_text("120 rpm")
    expect(key_row(d).locator("td.limits")).to_contain_text("poster")
    d.check("key-edited")

    # revoke, after the confirm dialog: the row says so, the key gets 401
    confirms: list[str] = []
    page.once("dialog", lambda dialog: (confirms.append(dialog.message), dialog.accept()))
    with page.expect_navigation():
        key_row(d).locator("button.danger").click()
    assert confirms, "no confirm dialog before revoking"
    expect(key_row(d).locator(".chip.bad")).to_have_text("revoked")
    expect(key_row(d).locator(".edit-key")).to_have_count(0)
    d.check("key-revoked")
    r = gateway.v1("POST", "/images/generations", key, json={"model": "poster", "prompt": "x"})
    assert r.status_code == 401, r.text

    # the language switch: Chinese, then English again
    d.goto("/admin")
    page.click("#lang-switch")
    expect(page.locator("html")).to_have_attribute("lang", "zh")
    expect(page.locator('.sidebar a[data-nav="overview"]')).to_have_text("概览")
    d.check("overview-zh")
    page.click("#lang-switch")
    expect(page.locator("html")).to_have_attribute("lang", "en")
    expect(page.locator('.sidebar a[data-nav="overview"]')).to_have_text("Overview")

    # change the password; the new one signs in
    page.click('.sidebar a[href="/admin/password"]')
    page.wait_for_url(d.gateway.base + "/admin/password")
    d.check("password")
    page.fill("#current_password", PASSWORD)
    page.fill("#new_password", NEW_PASSWORD)
    page.fill("#new_password_repeat", NEW_PASSWORD)
    d.secrets["new password"] = NEW_PASSWORD
    page.click("#password-panel button[type=submit]")
    expect(page.locator(".notice.ok")).to_contain_text("Password changed")
    d.check("password-changed")
    page.click("#sign-out")
    page.wait_for_url(re.compile(r"/admin/login"))
    sign_in(d, NEW_PASSWORD)
    page.wait_for_url(d.gateway.base + "/admin")
    d.check("signed-in-new-password")

    # a phone-sized screen: every page still reachable from the nav, nothing too wide
    page.set_viewport_size({"width": 375, "height": 812})
    for path in ("/admin", "/admin/keys"):
        d.goto(path)
        links = page.locator(".sidebar a.nav")
        assert links.count() >= 2
        for i in range(links.count()):
            expect(links.nth(i)).to_be_visible()
            box = links.nth(i).bounding_box()
            assert box and box["x"] >= 0 and box["x"] + box["width"] <= 375, (path, i, box)
        expect(page.locator("#sign-out")).to_be_visible()
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= 375, f"{path} is {width}px wide on a 375px screen"
        d.check("mobile" + path.replace("/", "-"))
    page.locator('.sidebar a[data-nav="keys"]').click()
    page.wait_for_url(d.gateway.base + "/admin/keys")
    expect(key_row(d)).to_be_visible()


@pytest.mark.skipif(
    not (ROOT / "admin" / "views" / "images.py").exists(),
    reason="the Images & cache page (admin/views/images.py) is not written yet",
)
def test_images_and_cache_settings(dashboard: Dashboard) -> None:
    d, page, gateway = dashboard, dashboard.page, dashboard.gateway
    drawn = []
    for prompt in ("秋天的咖啡馆", "冬天的雪"):
        body = {"model": "poster", "prompt": prompt}
        r = gateway.v1("POST", "/images/generations", MASTER, json=body)
        assert r.status_code == 200, r.text
        drawn.append(r.json()["data"][0]["url"])
    ids = [Path(url).stem for url in drawn]
    set_up_first_admin(d)

    # the grid shows both thumbnails; one is deleted everywhere from its tile's checkbox
    page.click('.sidebar a[data-nav="images"]')
    page.wait_for_url(d.gateway.base + "/admin/images")
    for image_id in ids:
        thumb = page.locator(f'#image-grid .tile[data-image-id="{image_id}"] img')
        expect(thumb).to_be_visible()
        thumb.scroll_into_view_if_needed()
        page.wait_for_function(
            "img => img.complete && img.naturalWidth > 0", arg=thumb.element_handle()
        )
    d.check("images")
    page.check(f'#image-grid .pick[value="{ids[0]}"]')
    expect(page.locator("#selected-count")).to_have_text("1 selected")
    expect(page.locator("#delete-all")).to_be_enabled()
    confirms: list[str] = []
    page.once("dialog", lambda dialog: (confirms.append(dialog.message), dialog.accept()))
    with page.expect_navigation():
        page.click("#delete-all")
    assert confirms and "1 images" in confirms[0], confirms
    expect(page.locator("#result-notice")).to_contain_text("1 done.")
    expect(page.locator(f'.tile[data-image-id="{ids[0]}"]')).to_have_count(0)
    expect(page.locator(f'.tile[data-image-id="{ids[1]}"]')).to_be_visible()
    d.check("image-deleted")
    assert httpx.get(drawn[0], timeout=10).status_code == 404
    assert httpx.get(drawn[1], timeout=10).status_code == 200

    # a cache setting saved from the form (PATCH /admin/api/cache/settings) is in effect
    before = gateway.admin_api("GET", "/cache/settings").json()["settings"]["cache_ttl_hours"]
    assert before["source"] != "dashboard", before
    page.fill("#setting-cache_ttl_hours", "36")
    with page.expect_response(lambda r: r.url.endswith("/admin/api/cache/settings")) as answer:
        page.click("#cache-settings-save")
    assert answer.value.request.method == "PATCH" and answer.value.ok, answer.value.status
    source = page.locator('[data-source-for="cache_ttl_hours"]')
    expect(source.locator("[data-source]")).to_have_text("dashboard")
    expect(source.locator(".effective")).to_have_text("In effect: 36")
    expect(page.locator("#toast")).to_have_text("Cache settings saved.")
    d.check("cache-settings-saved")
    after = gateway.admin_api("GET", "/cache/settings").json()["settings"]["cache_ttl_hours"]
    assert (after["value"], after["source"]) == (36, "dashboard"), after
    page.reload()
    expect(page.locator("#setting-cache_ttl_hours")).to_have_value("36")
    d.check("cache-settings-reloaded")
