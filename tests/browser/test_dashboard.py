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


POST_TOPIC = "Browser journey: autumn coffee walk 7f3a"
POST_TIMEOUT_MS = 60_000  # a post of three pages drawn by the local provider, and a redraw


def wait_for_post(gateway, post_id: str, timeout: float = 60.0) -> dict:
    """The post from the admin API once no job draws it."""
    deadline = time.monotonic() + timeout
    while True:
        post = gateway.admin_api("GET", f"/posts/{post_id}").json()
        if not post["running"] and post["status"] != "generating":
            return post
        assert time.monotonic() < deadline, f"post {post_id} still {post['status']}"
        time.sleep(0.2)


def wait_for_images(page, selector: str) -> None:
    for img in page.locator(selector).element_handles():
        img.scroll_into_view_if_needed()
        page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=img)


@pytest.mark.skipif(
    not (ROOT / "admin" / "views" / "posts.py").exists(),
    reason="the Posts page (admin/views/posts.py) is not written yet",
)
def test_posts_page(dashboard: Dashboard) -> None:
    import io
    import zipfile

    d, page, gateway = dashboard, dashboard.page, dashboard.gateway
    body = {"model": "redink", "topic": POST_TOPIC, "page_count": 3}
    r = gateway.v1("POST", "/posts", MASTER, json=body)
    assert r.status_code == 200, r.text
    post_id = r.json()["id"]
    before = wait_for_post(gateway, post_id)
    assert before["status"] == "completed", before
    set_up_first_admin(d)

    # the list: search for the post, find its row with the cover and the counts
    page.click('.sidebar a[data-nav="posts"]')
    page.wait_for_url(d.gateway.base + "/admin/posts")
    page.fill("#f-q", "coffee walk 7f3a")
    with page.expect_navigation():
        page.click("#search-posts")
    assert "q=coffee+walk+7f3a" in d.path(), d.path()
    rows = page.locator("#posts tbody tr")
    expect(rows).to_have_count(1)
    row = page.locator(f'#posts tr[data-post-id="{post_id}"]')
    expect(row.locator(".post-link")).to_have_text(POST_TOPIC)
    expect(row.locator('[data-status="completed"]')).to_have_text("completed")
    expect(row.locator(".post-counts")).to_contain_text("3/3 done")
    wait_for_images(page, "#posts .post-cover img")
    d.check("posts-search")

    # the post: pages with their images; a page's full image in the preview
    with page.expect_navigation():
        row.locator(".post-link").click()
    assert d.path() == f"/admin/posts/{post_id}"
    expect(page.locator("#post-topic")).to_have_text(POST_TOPIC)
    expect(page.locator("#post-status")).to_have_text("completed")
    expect(page.locator("#pages .page-card")).to_have_count(3)
    expect(page.locator("#retry-failed")).to_be_disabled()
    expect(page.locator("#post-copy")).to_be_visible()
    wait_for_images(page, "#pages .page-thumb img")
    d.check("post")
    page.locator('#pages .page-card[data-index="0"] .page-thumb').click()
    expect(page.locator("#page-preview")).to_be_visible()
    page.wait_for_function(
        "img => img.complete && img.naturalWidth > 0",
        arg=page.locator("#preview-image").element_handle(),
    )
    d.shot("page-preview")
    page.locator("#page-preview [data-close]").click()
    expect(page.locator("#page-preview")).to_be_hidden()

    # edit page 2's text and redraw it: the card updates in place (no reload)
    card = page.locator('#pages .page-card[data-index="1"]')
    thumb = card.locator(".page-thumb img")
    old_src = thumb.get_attribute("src")
    page.evaluate("window.__samePage = true")
    card.locator(".page-edit").click()
    expect(page.locator("#edit-dialog")).to_be_visible()
    expect(page.locator("#edit-title")).to_have_text("Edit page 2")
    expect(page.locator("#edit-text")).to_have_value(before["pages"][1]["text"])
    new_text = "Slow mornings\n• pour-over by the window\n• a walk to the park"
    page.fill("#edit-text", new_text)
    d.shot("page-edit")
    page.click("#edit-redraw")
    expect(page.locator("#edit-dialog")).to_be_hidden()
    expect(card.locator(".page-text")).to_have_text(new_text)
    expect(thumb).not_to_have_attribute("src", old_src or "", timeout=POST_TIMEOUT_MS)
    expect(card.locator(".page-status")).to_have_attribute(
        "data-status", "done", timeout=POST_TIMEOUT_MS
    )
    expect(page.locator("#post-running")).to_be_hidden(timeout=POST_TIMEOUT_MS)
    expect(page.locator("#post-status")).to_have_text("completed")
    wait_for_images(page, '#pages .page-card[data-index="1"] .page-thumb img')
    assert page.evaluate("window.__samePage") is True, "the page reloaded"
    d.check("page-redrawn")
    after = gateway.admin_api("GET", f"/posts/{post_id}").json()
    assert after["pages"][1]["text"] == new_text
    assert after["pages"][1]["image_id"] != before["pages"][1]["image_id"]
    assert after["pages"][0]["image_id"] == before["pages"][0]["image_id"]

    # download the zip with the session
    with page.expect_download() as info:
        page.click("#download-zip")
    download = info.value
    assert download.suggested_filename == f"{post_id}.zip"
    with zipfile.ZipFile(io.BytesIO(Path(download.path()).read_bytes())) as archive:
        assert archive.namelist() == ["page_01.png", "page_02.png", "page_03.png"]

    # a phone-sized screen: the post and the list fit
    page.set_viewport_size({"width": 375, "height": 812})
    for path in (f"/admin/posts/{post_id}", "/admin/posts"):
        d.goto(path)
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= 375, f"{path} is {width}px wide on a 375px screen"
        d.check("mobile" + path.replace("/", "-"))
    page.set_viewport_size({"width": 1280, "height": 900})

    # delete, after the confirm: back on the list, the post is gone
    d.goto(f"/admin/posts/{post_id}")
    confirms: list[str] = []
    page.once("dialog", lambda dialog: (confirms.append(dialog.message), dialog.accept()))
    with page.expect_navigation():
        page.click("#delete-post")
    assert confirms and "Delete this post" in confirms[0], confirms
    assert d.path() == "/admin/posts"
    expect(page.locator("#toast")).to_have_text("Post deleted.")
    expect(page.locator(f'#posts tr[data-post-id="{post_id}"]')).to_have_count(0)
    expect(page.locator("#posts-empty")).to_be_visible()
    d.check("post-deleted")
    assert gateway.admin_api("GET", f"/posts/{post_id}").status_code == 404


LIVE_TIMEOUT_MS = 15_000


def broken_image_model(gateway) -> str:
    """An image model on an OpenAI-style provider whose port is closed: its requests
    fail with a 5xx, an `error` in the logs."""
    from tests.test_e2e import _free_port

    body = {
        "name": "down",
        "type": "openai",
        "options": {"base_url": f"http://127.0.0.1:{_free_port()}/v1", "api_key": "sk-nothing"},
    }
    r = gateway.admin_api("POST", "/providers", json=body)
    assert r.status_code == 201, r.text
    r = gateway.admin_api("PUT", "/models/broken", json={"type": "image", "provider": "down"})
    assert r.status_code in (200, 201), r.text
    return "broken"


def test_logs_auto_refresh(dashboard: Dashboard) -> None:
    d, page, gateway = dashboard, dashboard.page, dashboard.gateway
    set_up_first_admin(d)
    page.click('.sidebar a[data-nav="logs"]')
    page.wait_for_url(d.gateway.base + "/admin/logs")
    expect(page.locator("#auto-refresh")).to_be_checked()
    expect(page.locator("#logs-empty")).to_be_visible()
    d.check("logs-empty")

    # a failing request made elsewhere shows up on the open page, without a reload
    page.evaluate("window.inkgateSamePage = true")
    body = {"model": "no-such-model", "prompt": "x"}
    r = gateway.v1("POST", "/images/generations", MASTER, json=body)
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found", r.text
    row = page.locator('#logs tbody tr[data-source="request"]', has_text="model_not_found")
    expect(row).to_have_count(1, timeout=LIVE_TIMEOUT_MS)
    expect(row).to_contain_text("404")
    expect(row).to_contain_text("POST /v1/images/generations")
    expect(row.locator(".chip")).to_have_text("warning")
    expect(page.locator("#logs-empty")).to_have_count(0)
    expect(page.locator("#refresh-state")).to_contain_text("Checked at")
    assert page.evaluate("window.inkgateSamePage") is True, "the page was reloaded"
    d.check("logs-live-row")

    # an upstream failure is an error; it arrives the same way
    model = broken_image_model(gateway)
    r = gateway.v1("POST", "/images/generations", MASTER, json={"model": model, "prompt": "x"})
    assert r.status_code >= 500, r.text
    error_row = page.locator('#logs tbody tr[data-level="error"]', has_text=model)
    expect(error_row).to_have_count(1, timeout=LIVE_TIMEOUT_MS)
    expect(error_row.locator(".chip")).to_have_text("error")
    expect(error_row).to_contain_text(str(r.status_code))
    assert page.evaluate("window.inkgateSamePage") is True, "the page was reloaded"

    # the level filter (a GET form): only errors
    page.select_option("#f-level", "error")
    with page.expect_navigation():
        page.click("#logs-apply")
    assert "level=error" in d.path(), d.path()
    expect(page.locator("#f-level")).to_have_value("error")
    expect(page.locator("#logs tbody tr[data-id]").first).to_be_visible()
    levels = page.eval_on_selector_all(
        "#logs tbody tr[data-id]", "rows => rows.map(r => r.dataset.level)"
    )
    assert levels and set(levels) == {"error"}, levels
    expect(page.locator("#logs tbody")).not_to_contain_text("model_not_found")
    d.check("logs-errors-only")

    # the toggle is remembered; off, the page says it is paused
    page.uncheck("#auto-refresh")
    expect(page.locator("#refresh-state")).to_have_text("Paused")
    page.reload()
    expect(page.locator("#auto-refresh")).not_to_be_checked()
    page.check("#auto-refresh")
    page.reload()
    expect(page.locator("#auto-refresh")).to_be_checked()

    # the Usage page counts both requests
    page.click('.sidebar a[data-nav="usage"]')
    page.wait_for_url(d.gateway.base + "/admin/usage")
    rows = page.locator("#usage-rows tbody tr[data-usage-id]")
    expect(rows).to_have_count(2)
    expect(rows.nth(0)).to_contain_text(model)  # newest first
    expect(rows.nth(0).locator(".chip.bad")).to_have_text(str(r.status_code))
    expect(rows.nth(1).locator(".chip.warn")).to_have_text("404")
    expect(page.locator('#usage-summary [data-stat="requests"]')).to_have_text("2")
    expect(page.locator('#usage-summary [data-stat="failures"]')).to_have_text("1")
    expect(page.locator('#usage-summary [data-stat="client_errors"]')).to_have_text("1")
    d.check("usage")

    # a phone-sized screen: the wide tables scroll inside their box, not the page
    page.set_viewport_size({"width": 375, "height": 812})
    for path in ("/admin/logs", "/admin/usage"):
        d.goto(path)
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= 375, f"{path} is {width}px wide on a 375px screen"
        d.check("mobile" + path.replace("/", "-"))


RELAY_KEY = "sk-relay-browser-0123456789abcdef"  # fake
RELAY_MASK = "sk-r…cdef"


@pytest.mark.skipif(
    not (ROOT / "admin" / "views" / "providers.py").exists(),
    reason="the Providers & models page (admin/views/providers.py) is not written yet",
)
def test_providers_page(dashboard: Dashboard) -> None:
    d, page, gateway = dashboard, dashboard.page, dashboard.gateway
    d.secrets["relay API key"] = RELAY_KEY
    set_up_first_admin(d)
    page.click('.sidebar a[data-nav="providers"]')
    page.wait_for_url(d.gateway.base + "/admin/providers")
    expect(page.locator('#providers tr[data-provider="local"]')).to_be_visible()
    expect(page.locator("#redink-card [data-source]").first).to_have_text("built-in")
    d.check("providers")

    # add an openai provider on a closed port; the form comes from the type's schema
    page.click("#new-provider")
    expect(page.locator("#provider-dialog")).to_be_visible()
    page.fill("#p-name", "relay")
    page.select_option("#p-type", "openai")
    expect(page.locator("#opt-api_key")).to_have_attribute("type", "password")
    page.fill("#opt-base_url", "http://127.0.0.1:9/v1")
    page.fill("#opt-api_key", RELAY_KEY)
    d.shot("provider-form")
    with page.expect_navigation():
        page.click("#p-save")
    expect(page.locator("#toast")).to_have_text("Provider saved.")
    row = page.locator('#providers tr[data-provider="relay"]')
    expect(row.locator("code.masked")).to_have_text(RELAY_MASK)
    expect(row.locator('[data-source="database"]')).to_have_text("database")
    d.check("provider-added")  # the full key is in no page HTML

    # Test: the failure in plain words, inline under the row
    row.locator(".provider-test:not([data-deep])").click()
    result = page.locator('tr.test-row[data-test-for="relay"] .test-result')
    expect(result).to_have_attribute("data-ok", "false", timeout=30_000)
    expect(result).to_contain_text("unreachable")
    expect(result).to_contain_text("Failed")
    d.check("provider-test-failed")

    # edit with the key left blank: saved, the stored key unchanged
    row.locator(".provider-edit").click()
    expect(page.locator("#provider-dialog")).to_be_visible()
    expect(page.locator("#p-name")).to_have_js_property("readOnly", True)
    key_input = page.locator("#opt-api_key")
    expect(key_input).to_have_value("")
    expect(key_input).to_have_attribute("placeholder", f"leave blank to keep {RELAY_MASK}")
    expect(page.locator("#opt-base_url")).to_have_value("http://127.0.0.1:9/v1")
    page.fill("#opt-text_model", "gpt-4o-mini")
    page.fill("#p-max", "2")
    d.shot("provider-edit")
    with page.expect_navigation():
        page.click("#p-save")
    expect(page.locator("#toast")).to_have_text("Provider saved.")
    listed = page.evaluate("() => inkgate.api('GET', '/admin/api/providers')")
    (relay,) = [p for p in listed["data"] if p["name"] == "relay"]
    assert relay["options"]["api_key"] == RELAY_MASK, relay
    assert (relay["options"]["text_model"], relay["max_concurrency"]) == ("gpt-4o-mini", 2)
    d.check("provider-edited")

    # the redink model's concurrency: saved in the database, shown after a reload
    page.fill("#r-concurrency", "3")
    with page.expect_navigation():
        page.click("#redink-save")
    expect(page.locator("#toast")).to_have_text("Model saved.")
    page.reload()
    expect(page.locator("#r-concurrency")).to_have_value("3")
    expect(page.locator("#redink-card [data-source]").first).to_have_text("database")
    expect(page.locator("#redink-revert")).to_be_visible()
    models = gateway.admin_api("GET", "/models").json()["data"]
    (redink,) = [m for m in models if m["name"] == "redink"]
    assert redink["definition"]["concurrency"] == 3, redink
    d.check("redink-saved")

    # a phone-sized screen: the page fits, the tables scroll in their box
    page.set_viewport_size({"width": 375, "height": 812})
    d.goto("/admin/providers")
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 375, f"/admin/providers is {width}px wide on a 375px screen"
    d.check("mobile-providers")
    page.set_viewport_size({"width": 1280, "height": 900})

    # delete, after the confirm
    confirms: list[str] = []
    page.once("dialog", lambda dialog: (confirms.append(dialog.message), dialog.accept()))
    with page.expect_navigation():
        page.locator('#providers tr[data-provider="relay"] .provider-delete').click()
    assert confirms and "relay" in confirms[0], confirms
    expect(page.locator("#toast")).to_have_text("Provider deleted.")
    expect(page.locator('#providers tr[data-provider="relay"]')).to_have_count(0)
    d.check("provider-deleted")
    names = [p["name"] for p in gateway.admin_api("GET", "/providers").json()["data"]]
    assert "relay" not in names
