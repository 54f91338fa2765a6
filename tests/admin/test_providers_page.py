"""The "Providers & models" page (`/admin/providers`): providers from `inkgate.yaml` and
the database, secrets never in the HTML (only masked), the redink card, and the flows
providers.js drives through `/admin/api/providers` and `/admin/api/models` with the
session and its CSRF token. Upstream calls go to the fake OpenAI upstream."""

from __future__ import annotations

import html
import json
import re

import pytest

from tests.admin.test_posts_page import assert_no_inline_code
from tests.gateway.test_admin_providers import app, upstream  # noqa: F401 (fixtures)

SECRET = "sk-abcdefghijklmnopqrstuvwxyz-9f3c"  # fake; the fake upstream accepts only it
SHOWN = "sk-a…9f3c"
FILE_SECRET = "sk-file-secret-0123456789abcdef"
CONFIG = (
    "providers:\n"
    "  filed:\n"
    "    type: openai\n"
    "    base_url: http://fake/v1\n"
    f"    api_key: {FILE_SECRET}\n"
    "    text_model: file-text-model\n"
    "models:\n"
    "  filed-poster: {type: image, provider: filed, aspect_ratio: '3:4'}\n"
)
RELAY = {
    "name": "relay",
    "type": "openai",
    "options": {"base_url": "http://fake/v1", "api_key": SECRET},
}


@pytest.fixture
def settings(settings):
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    settings.config_path.write_text(CONFIG)
    return settings


def page_data(page: str) -> dict:
    found = re.search(r'<script type="application/json" id="providers-data">(.*?)</script>', page)
    assert found, "no providers-data block"
    return json.loads(found.group(1))


def row(page: str, attr: str, name: str) -> str:
    found = re.search(rf'<tr {attr}="{re.escape(name)}">(.*?)</tr>', page, re.S)
    assert found, f"no row for {name}"
    return found.group(1)


async def get_page(browser, **headers) -> str:
    r = await browser.get("/admin/providers", headers=headers)
    assert r.status_code == 200, r.text
    return r.text


async def test_the_page_needs_a_signed_in_admin(browser, services) -> None:
    await services.admin.add_user("admin", "correct horse battery")
    r = await browser.get("/admin/providers")
    assert r.status_code == 303
    assert r.headers["location"].startswith("/admin/login?next=%2Fadmin%2Fproviders")


async def test_file_database_and_builtin_entries_are_listed(admin_browser) -> None:
    r = await admin_browser.post("/admin/api/providers", json={**RELAY, "max_concurrency": 4})
    assert r.status_code == 201, r.text
    page = await get_page(admin_browser)
    assert 'data-nav="providers"' in page and 'class="nav active"' in page

    filed = row(page, "data-provider", "filed")
    assert 'data-source="file"' in filed and "provider-override" in filed
    assert "provider-edit" not in filed and "provider-delete" not in filed
    assert "filed-poster" in filed  # used by

    relay = row(page, "data-provider", "relay")
    assert 'data-source="database"' in relay and "provider-edit" in relay
    assert 'data-action="DELETE /admin/api/providers/relay"' in relay
    assert f'<code class="masked">{SHOWN}</code>' in relay
    assert ">4</td>" in relay
    local = row(page, "data-provider", "local")
    assert 'data-source="builtin"' in local and "provider-override" not in local

    # the redink card: built-in, on `local`, saved with PUT
    card = page.split('id="redink-card"', 1)[1].split("</section>", 1)[0]
    assert 'data-source="builtin"' in card and 'id="redink-revert"' not in card
    assert '<option value="local" selected>' in card and '<option value="relay">' in card
    assert '<option value="filed">' in card
    for ratio in ("3:4", "1:1", "4:3", "9:16", "16:9", "2:3", "3:2"):
        assert f'<option value="{ratio}"' in card

    poster = row(page, "data-model", "filed-poster")
    assert (
        'data-source="file"' in poster and "model-edit" in poster and "model-delete" not in poster
    )
    redink = row(page, "data-model", "redink")
    assert "redink-plan" in redink and "model-edit" not in redink

    data = page_data(page)
    assert {p["name"] for p in data["providers"]} >= {"filed", "relay", "local"}
    assert "openai" in {t["type"] for t in data["types"]}
    assert "api_key" in next(t for t in data["types"] if t["type"] == "openai")["secret_fields"]
    assert "filed" in data["image_providers"] and "relay" in data["image_providers"]


async def test_no_secret_is_in_the_page(admin_browser) -> None:
    r = await admin_browser.post("/admin/api/providers", json=RELAY)
    assert r.status_code == 201, r.text
    headers = {
        "name": "hdr",
        "type": "openai",
        "options": {
            "api_key": SECRET + "-2",
            "extra_headers": {"Authorization": "Bearer " + SECRET},
        },
    }
    assert (await admin_browser.post("/admin/api/providers", json=headers)).status_code == 201
    page = await get_page(admin_browser)
    for secret in (SECRET, FILE_SECRET, "Bearer " + SECRET):
        assert secret not in page and secret not in html.unescape(page)
    assert SHOWN in page
    data = page_data(page)
    dumped = json.dumps(data, ensure_ascii=False)
    assert SECRET not in dumped and FILE_SECRET not in dumped
    relay = next(p for p in data["providers"] if p["name"] == "relay")
    assert relay["options"]["api_key"] == SHOWN and relay["secret_fields"] == ["api_key"]
    filed = next(p for p in data["providers"] if p["name"] == "filed")
    assert filed["options"]["api_key"] == "sk-f…cdef"
    # never an input's value
    assert not re.search(r'<input[^>]*type="password"[^>]*value=', page)


async def test_static_js_csp_and_chinese(admin_browser) -> None:
    page = await get_page(admin_browser)
    assert_no_inline_code(page)
    assert '<script src="/admin/static/providers.js?v=' in page
    r = await admin_browser.get("/admin/static/providers.js")
    assert r.status_code == 200 and "inkgate.api" in r.text
    assert (
        "'unsafe-inline'"
        not in (await admin_browser.get("/admin/providers")).headers["content-security-policy"]
    )

    zh = await get_page(admin_browser, **{"Accept-Language": "zh-CN,zh;q=0.9"})
    for label in (
        "服务商与模型",
        "添加服务商",
        "文本服务商",
        "图片服务商",
        "同时绘制页数",
        "测试",
        "覆盖",
    ):
        assert label in zh, label
    assert page_data(zh)["strings"]["providers.testing"] == "测试中…"
    assert "Add provider" in page and "Text provider" in page


async def test_create_edit_with_a_blank_secret_and_test(admin_browser, app) -> None:  # noqa: F811
    # the dialog's "Test connection" before saving: the fake upstream accepts the key
    r = await admin_browser.post(
        "/admin/api/providers/test", json={"type": "openai", "options": RELAY["options"]}
    )
    assert r.status_code == 200 and r.json()["ok"], r.text

    r = await admin_browser.post("/admin/api/providers", json=RELAY)
    assert r.status_code == 201, r.text
    # the edit form sends only what changed; the blank secret is left out
    r = await admin_browser.patch(
        "/admin/api/providers/relay",
        json={"options": {"text_model": "gpt-4o-mini"}, "max_concurrency": 2},
    )
    assert r.status_code == 200, r.text
    assert r.json()["options"]["api_key"] == SHOWN and r.json()["max_concurrency"] == 2
    stored = (await app.state.config_source.store.read()).providers["relay"]
    assert stored.options["api_key"] == SECRET

    # testing while editing, with the key blank, uses the stored key; so does the row's Test
    r = await admin_browser.post(
        "/admin/api/providers/test",
        json={"name": "relay", "type": "openai", "options": {"api_key": ""}},
    )
    assert r.status_code == 200 and r.json()["ok"], r.text
    r = await admin_browser.post("/admin/api/providers/relay/test")
    assert r.status_code == 200 and r.json()["ok"], r.text
    checks = r.json()["providers"][0]["checks"]
    assert checks and all({"check", "ok", "detail", "latency_ms"} <= set(c) for c in checks)

    page = await get_page(admin_browser)
    relay = row(page, "data-provider", "relay")
    assert f'<code class="masked">{SHOWN}</code>' in relay and ">2</td>" in relay

    # an error names the option the form marks
    r = await admin_browser.patch(
        "/admin/api/providers/relay", json={"options": {"base_url": "ftp://nope"}}
    )
    assert r.status_code == 400 and r.json()["error"]["param"].startswith("options.")

    # without the CSRF token, nothing changes
    r = await admin_browser.patch(
        "/admin/api/providers/relay",
        json={"max_concurrency": 9},
        headers={"X-CSRF-Token": ""},
    )
    assert r.status_code == 403 and r.json()["error"]["code"] == "csrf_failed"


async def test_override_a_file_provider(admin_browser) -> None:
    body = {
        "name": "filed",
        "type": "openai",
        "options": {"base_url": "http://fake/v1", "api_key": SECRET},
    }
    r = await admin_browser.post("/admin/api/providers", json=body)
    assert r.status_code == 201, r.text
    assert r.json()["overrides"] == "file"
    page = await get_page(admin_browser)
    filed = row(page, "data-provider", "filed")
    assert 'data-source="database"' in filed and "overrides file" in filed
    assert "provider-edit" in filed and "provider-override" not in filed


async def test_the_redink_card_saves_and_reverts(admin_browser, services) -> None:
    assert (await admin_browser.post("/admin/api/providers", json=RELAY)).status_code == 201
    definition = {
        "type": "redink",
        "text_provider": "relay",
        "text_model": "gpt-4o-mini",
        "image_provider": "local",
        "image_model": None,
        "concurrency": 3,
        "aspect_ratio": "9:16",
        "short_prompt": True,
        "image_size": None,
        "temperature": None,
    }
    r = await admin_browser.put("/admin/api/models/redink", json=definition)
    assert r.status_code == 200, r.text
    model = services.config().post_models["redink"]
    assert (model.text_provider, model.concurrency, model.aspect_ratio) == ("relay", 3, "9:16")
    listed = (await admin_browser.get("/admin/api/models")).json()["data"]
    redink = next(m for m in listed if m["name"] == "redink")
    assert redink["source"] == "database" and redink["definition"]["concurrency"] == 3

    page = await get_page(admin_browser)
    card = page.split('id="redink-card"', 1)[1].split("</section>", 1)[0]
    assert 'id="r-concurrency" name="concurrency" min="0" max="64" step="1" value="3"' in card
    assert '<option value="relay" selected>' in card and '<option value="9:16" selected>' in card
    assert 'name="short_prompt" checked' in card
    assert 'data-source="database"' in card and 'id="redink-revert"' in card
    assert "used-by" in page and "redink" in row(page, "data-provider", "relay")

    # a provider in use cannot be deleted: the API's message is shown
    r = await admin_browser.delete("/admin/api/providers/relay")
    assert r.status_code == 409 and r.json()["error"]["code"] == "provider_in_use"
    assert "'redink' (text)" in r.json()["error"]["message"]

    # a bad value is a 400 naming the field the card marks
    r = await admin_browser.put("/admin/api/models/redink", json={**definition, "concurrency": 999})
    assert r.status_code == 400 and r.json()["error"]["param"] == "concurrency"

    # revert: the built-in one applies again
    r = await admin_browser.delete("/admin/api/models/redink")
    assert r.status_code == 200 and r.json()["now"]["source"] == "builtin"
    assert services.config().post_models["redink"].concurrency == 0
    assert (await admin_browser.delete("/admin/api/providers/relay")).status_code == 200
    page = await get_page(admin_browser)
    assert 'data-provider="relay"' not in page


async def test_image_models_are_added_edited_and_deleted(admin_browser, client, services) -> None:
    body = {
        "type": "image",
        "provider": "local",
        "model": None,
        "aspect_ratio": "1:1",
        "result_cache_seconds": 60,
    }
    r = await admin_browser.put("/admin/api/models/sketch", json=body)
    assert r.status_code == 200, r.text
    assert services.config().image_models["sketch"].result_cache_seconds == 60
    page = await get_page(admin_browser)
    sketch = row(page, "data-model", "sketch")
    assert 'data-source="database"' in sketch and "model-edit" in sketch
    assert 'data-action="DELETE /admin/api/models/sketch"' in sketch and "60 s" in sketch

    r = await client.post("/v1/images/generations", json={"model": "sketch", "prompt": "a cat"})
    assert r.status_code == 200, r.text

    # editing the file model saves a database one that overrides it
    filed = {
        "type": "image",
        "provider": "filed",
        "model": None,
        "aspect_ratio": "4:3",
        "result_cache_seconds": 0,
    }
    r = await admin_browser.put("/admin/api/models/filed-poster", json=filed)
    assert r.status_code == 200 and r.json()["overrides"] == "file", r.text
    page = await get_page(admin_browser)
    assert "overrides file" in row(page, "data-model", "filed-poster")

    assert (await admin_browser.delete("/admin/api/models/sketch")).status_code == 200
    assert 'data-model="sketch"' not in await get_page(admin_browser)
