"""The images & cache page and the runtime cache settings (`/admin/api/cache/settings`)."""

from __future__ import annotations

import dataclasses
import html
import json
import re
import time
from datetime import UTC, datetime

import httpx
import pytest
from sqlalchemy import update

from gateway.app import create_app
from storage.lifecycle import OVERRIDES_SETTING
from storage.tables import AppSetting, Blob, Image
from tests.conftest import MASTER_KEY
from tests.s3_server import DUMMY_KEY

CONFIG = (
    "models:\n"
    "  poster: {type: image, provider: local}\n"
    "  cached: {type: image, provider: local, result_cache_seconds: 3600}\n"
    "storage:\n"
    "  retention_days: 100\n"
)
ENV_TTL_HOURS = 5.0  # as if INKGATE_CACHE_TTL_HOURS=5 were set
S3_SECRET = "s3-secret-7f3a9c1e5b2d4068"


@pytest.fixture
def settings(settings, request):
    """An environment value (TTL), a file value (retention) and defaults (the rest); with
    `indirect` param "bucket", an S3 bucket with a recognisable secret key."""
    extra: dict = {"cache_ttl_hours": ENV_TTL_HOURS}
    if getattr(request, "param", None) == "bucket":
        server, bucket = request.getfixturevalue("s3_bucket")
        extra.update(
            storage="s3",
            s3_bucket=bucket,
            s3_access_key_id=DUMMY_KEY,
            s3_secret_access_key=S3_SECRET,
            s3_endpoint_url=server.endpoint_url,
        )
    settings = dataclasses.replace(settings, **extra)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    settings.config_path.write_text(CONFIG)
    return settings


async def make_images(client: httpx.AsyncClient, count: int) -> list[str]:
    ids = []
    for i in range(count):
        r = await client.post(
            "/v1/images/generations", json={"model": "poster", "prompt": f"picture {i} " * (i + 1)}
        )
        assert r.status_code == 200, r.text
        ids.append(r.json()["data"][0]["url"].rsplit("/", 1)[1].rpartition(".")[0])
    return ids


def tile_ids(page: str) -> list[str]:
    return re.findall(r'<figure class="tile" data-image-id="([^"]+)"', page)


def page_data(page: str) -> dict:
    found = re.search(r'<script type="application/json" id="images-data">(.*?)</script>', page)
    assert found
    return json.loads(found.group(1))


# -- the page ---------------------------------------------------------------------------


async def test_the_page_needs_a_signed_in_admin(browser, services) -> None:
    await services.admin.add_user("admin", "correct horse battery")
    r = await browser.get("/admin/images?sort=size")
    assert r.status_code == 303
    assert r.headers["location"] == "/admin/login?next=%2Fadmin%2Fimages%3Fsort%3Dsize"
    r = await browser.get("/admin/api/cache/settings")
    assert r.status_code == 401 and r.json()["error"]["code"] == "not_signed_in"


async def test_empty_page(admin_browser) -> None:
    r = await admin_browser.get("/admin/images")
    assert r.status_code == 200
    assert 'id="images-empty"' in r.text and "No images stored yet" in r.text
    assert 'id="bulk-bar"' not in r.text and tile_ids(r.text) == []
    assert "script-src 'self'" in r.headers["content-security-policy"]
    assert 'data-nav="images"' in r.text  # in the sidebar
    # no inline code or styles (the CSP would block them)
    assert " style=" not in r.text and " onclick=" not in r.text
    assert re.findall(r"<script(?![^>]*(?:src=|application/json))", r.text) == []


async def test_the_grid_shows_stored_images_sorted_filtered_and_paged(
    admin_browser, client, services
) -> None:
    ids = await make_images(client, 3)
    page = (await admin_browser.get("/admin/images")).text
    assert tile_ids(page) == ids[::-1]  # newest first
    for image_id in ids:
        assert f"http://testserver/images/{image_id}/thumb" in page
    assert "images: 3" in page and 'id="delete-all"' in page and 'class="pick"' in page
    data = page_data(page)
    item = data["images"][ids[0]]
    assert item["url"].endswith(".png") and item["width"] and item["created_text"]
    assert data["strings"]["images.confirm_all"].startswith("Delete {count} images")

    page = (await admin_browser.get("/admin/images?per_page=2")).text
    assert tile_ids(page) == [ids[2], ids[1]] and "Page 1 of 2" in page
    assert 'href="/admin/images?page=2&amp;per_page=2&amp;sort=created&amp;order=desc"' in page
    page = (await admin_browser.get("/admin/images?per_page=2&page=2")).text
    assert tile_ids(page) == [ids[0]] and 'id="page-previous"' in page
    page = (await admin_browser.get("/admin/images?per_page=2&page=99")).text
    assert tile_ids(page) == [ids[0]]  # past the end: the last page

    sizes = {}
    async with services.db.session() as session:
        for image_id in ids:
            sizes[image_id] = (await session.get(Image, image_id)).size_bytes
    page = (await admin_browser.get("/admin/images?sort=size&order=asc")).text
    assert [sizes[i] for i in tile_ids(page)] == sorted(sizes.values())
    assert '<option value="size" selected>' in page and '<option value="asc" selected>' in page
    page = (await admin_browser.get("/admin/images?sort=accessed&order=desc")).text
    assert sorted(tile_ids(page)) == sorted(ids)

    page = (await admin_browser.get("/admin/images?state=failed")).text
    assert tile_ids(page) == [] and "No images match this filter" in page
    page = (await admin_browser.get("/admin/images?state=local")).text
    assert sorted(tile_ids(page)) == sorted(ids)
    # odd values in the address fall back to the defaults
    r = await admin_browser.get("/admin/images?sort=colour&order=up&page=x&per_page=-3&state=z")
    assert r.status_code == 200 and len(tile_ids(r.text)) == 1

    # in Chinese too
    page = await admin_browser.get("/admin/images", headers={"Accept-Language": "zh-CN"})
    assert "图片与缓存" in page.text and "彻底删除" in page.text


async def test_deleting_from_the_page_and_what_is_skipped(admin_browser, client) -> None:
    ids = await make_images(client, 2)
    r = await admin_browser.post("/admin/api/images/delete", json={"ids": [ids[0]], "scope": "all"})
    assert r.status_code == 200 and r.json()["deleted"] == [ids[0]]
    page = (await admin_browser.get("/admin/images")).text
    assert tile_ids(page) == [ids[1]]
    # local storage: a local copy is the only one, so "delete local" skips it with a reason
    r = await admin_browser.post(
        "/admin/api/images/delete", json={"ids": [ids[1]], "scope": "local"}
    )
    skipped = r.json()["skipped"]
    assert skipped == [
        {"id": ids[1], "reason": "not in the bucket: the local copy is the only one"}
    ]
    assert skipped[0]["reason"] in page_data(page)["reasons"]  # the page translates it
    # without a bucket the bucket actions are off, with the reason on the page
    assert re.search(r'id="cache-upload-pending"[^>]* disabled', page)
    assert re.search(r'id="delete-local"[^>]* data-no-bucket', page)
    assert 'id="no-bucket"' in page


# -- the cache settings -----------------------------------------------------------------


async def test_settings_show_their_source(admin_browser) -> None:
    r = await admin_browser.get("/admin/api/cache/settings")
    assert r.status_code == 200
    body = r.json()
    s = body["settings"]
    assert s["cache_ttl_hours"] == {
        "value": ENV_TTL_HOURS,
        "source": "environment",
        "overridden": False,
        "fallback": {"value": ENV_TTL_HOURS, "source": "environment"},
        "min": 0,
        "max": 87600,
    }
    assert (s["retention_days"]["value"], s["retention_days"]["source"]) == (100, "config file")
    assert (s["cache_max_mb"]["value"], s["cache_max_mb"]["source"]) == (0, "default")
    assert s["retention_delete_remote"]["source"] == "default"
    assert body["remote_enabled"] is False and body["storage"] == "local"
    models = {m["model"]: m for m in body["result_cache"]["models"]}
    assert models["cached"]["seconds"] == 3600 and models["poster"]["seconds"] == 0
    page = (await admin_browser.get("/admin/images")).text
    assert 'data-source="environment"' in page and 'data-source="config file"' in page
    assert 'placeholder="5"' in page and 'name="cache_ttl_hours"' in page


async def test_patch_overrides_environment_and_null_removes(admin_browser, services) -> None:
    r = await admin_browser.patch(
        "/admin/api/cache/settings", json={"cache_ttl_hours": 1, "retention_delete_remote": True}
    )
    assert r.status_code == 200, r.text
    s = r.json()["settings"]
    assert s["cache_ttl_hours"]["value"] == 1 and s["cache_ttl_hours"]["source"] == "dashboard"
    assert s["cache_ttl_hours"]["fallback"] == {"value": ENV_TTL_HOURS, "source": "environment"}
    assert s["retention_delete_remote"]["value"] is True
    assert s["retention_days"]["source"] == "config file"  # untouched: not sent
    assert services.storage.lifecycle.effective.cache_ttl_hours == 1
    stats = (await admin_browser.get("/admin/api/cache/stats")).json()
    assert stats["settings"]["cache_ttl_hours"] == 1
    page = (await admin_browser.get("/admin/images")).text
    assert 'data-source="dashboard"' in page and 'value="1"' in page

    r = await admin_browser.patch("/admin/api/cache/settings", json={"cache_ttl_hours": None})
    s = r.json()["settings"]
    assert s["cache_ttl_hours"]["value"] == ENV_TTL_HOURS
    assert s["cache_ttl_hours"]["source"] == "environment"
    assert s["retention_delete_remote"]["source"] == "dashboard"  # the other one stays
    async with services.db.session() as session:
        row = await session.get(AppSetting, OVERRIDES_SETTING)
    assert json.loads(row.value) == {"retention_delete_remote": True}


async def test_patch_needs_the_csrf_token_and_validates(admin_browser, client, services) -> None:
    token = admin_browser.headers.pop("X-CSRF-Token")
    r = await admin_browser.patch("/admin/api/cache/settings", json={"cache_ttl_hours": 1})
    assert r.status_code == 403 and r.json()["error"]["code"] == "csrf_failed"
    admin_browser.headers["X-CSRF-Token"] = token
    for body, param in [
        ({"cache_ttl_hours": -1}, "cache_ttl_hours"),
        ({"cache_max_mb": 10**12}, "cache_max_mb"),
        ({"retention_days": "30"}, "retention_days"),
        ({"retention_days": True}, "retention_days"),
        ({"retention_delete_remote": "yes"}, "retention_delete_remote"),
        ({"result_cache_seconds": 60}, "result_cache_seconds"),
    ]:
        r = await admin_browser.patch("/admin/api/cache/settings", json=body)
        assert r.status_code == 400, (body, r.text)
        error = r.json()["error"]
        assert error["param"] == param and error["type"] == "invalid_request_error", error
    settings = (await admin_browser.get("/admin/api/cache/settings")).json()["settings"]
    assert all(not s["overridden"] for s in settings.values())
    # scripts: the master key, no CSRF token
    r = await client.patch("/admin/api/cache/settings", json={"cache_max_mb": 512})
    assert r.status_code == 200 and r.json()["settings"]["cache_max_mb"]["value"] == 512
    _, plaintext = await services.keys.create("user")
    r = await client.patch(
        "/admin/api/cache/settings",
        json={"cache_max_mb": 1},
        headers={"Authorization": f"Bearer {plaintext}"},
    )
    assert r.status_code == 403


async def test_an_override_changes_what_the_sweep_does(admin_browser, client, services) -> None:
    old_id, new_id = await make_images(client, 2)
    await services.images.flush_access()
    sixty_days_ago = time.time() - 60 * 86400
    old = await services.images.get(old_id)
    async with services.db.engine.begin() as conn:
        await conn.execute(
            update(Image.__table__)
            .where(Image.__table__.c.id == old_id)
            .values(created_at=datetime.fromtimestamp(sixty_days_ago, UTC))
        )
        await conn.execute(
            update(Blob.__table__)
            .where(Blob.__table__.c.sha256 == old.sha256)
            .values(accessed_at=sixty_days_ago)
        )
    # the file's 100 days: nothing to do
    r = await admin_browser.post("/admin/api/cache/cleanup")
    assert r.status_code == 200 and r.json()["retention_deleted_images"] == 0
    r = await admin_browser.patch("/admin/api/cache/settings", json={"retention_days": 30})
    assert r.status_code == 200
    r = await admin_browser.post("/admin/api/cache/cleanup")
    assert r.json()["retention_deleted_images"] == 1
    assert (await client.get(f"/images/{old_id}.png")).status_code == 404
    assert (await client.get(f"/images/{new_id}.png")).status_code == 200
    page = (await admin_browser.get("/admin/images")).text
    assert tile_ids(page) == [new_id]


async def test_a_second_app_on_the_same_database_uses_the_override(
    admin_browser, settings, services
) -> None:
    other = create_app(settings)
    async with other.router.lifespan_context(other):
        lifecycle = other.state.services.storage.lifecycle
        assert lifecycle.effective.retention_days == 100
        r = await admin_browser.patch(
            "/admin/api/cache/settings", json={"retention_days": 7, "cache_max_mb": 64}
        )
        assert r.status_code == 200
        await lifecycle.sweep()  # each sweep reads the overrides first
        assert (lifecycle.effective.retention_days, lifecycle.effective.cache_max_mb) == (7, 64)
        assert lifecycle.effective.cache_ttl_hours == ENV_TTL_HOURS
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=other),
            base_url="http://testserver",
            headers={"Authorization": f"Bearer {MASTER_KEY}"},
        ) as c:
            s = (await c.get("/admin/api/cache/settings")).json()["settings"]
        assert s["retention_days"]["value"] == 7 and s["retention_days"]["source"] == "dashboard"
    assert services.storage.lifecycle.effective.retention_days == 7  # this app's answer refreshed


def test_overrides_apply_only_to_the_runtime_options() -> None:
    from storage.config import StorageConfig, StorageConfigError

    base = StorageConfig.resolve(
        type("Env", (), {"cache_ttl_hours": 5.0})(), {"retention_days": 100}
    )
    assert base.origins["cache_ttl_hours"] == "environment"
    assert base.origins["retention_days"] == "config file"
    assert base.origins["storage"] == "default"
    config = base.with_overrides({"cache_ttl_hours": 1, "storage": "s3", "retention_days": None})
    assert config.cache_ttl_hours == 1 and config.storage == "local"
    assert config.retention_days == 100 and config.origins["cache_ttl_hours"] == "dashboard"
    assert base.cache_ttl_hours == 5 and "origins" not in repr(config)
    with pytest.raises(StorageConfigError):
        base.with_overrides({"cache_max_mb": -1})


@pytest.mark.parametrize("settings", ["bucket"], indirect=True)
async def test_no_secret_in_the_page_or_the_api(admin_browser, client, services) -> None:
    await make_images(client, 1)
    answers = [
        await admin_browser.get("/admin/images"),
        await admin_browser.get("/admin/api/cache/settings"),
        await admin_browser.patch("/admin/api/cache/settings", json={"cache_ttl_hours": 2}),
        await admin_browser.get("/admin/api/cache/stats"),
        await admin_browser.get("/admin/api/images"),
    ]
    for r in answers:
        assert r.status_code == 200, r.text
        assert S3_SECRET not in r.text and S3_SECRET not in html.unescape(r.text)
    page = answers[0].text
    assert answers[1].json()["remote_enabled"] is True and 'id="no-bucket"' not in page
    assert not re.search(r'id="cache-upload-pending"[^>]* disabled', page)
    assert "data-no-bucket" not in page
