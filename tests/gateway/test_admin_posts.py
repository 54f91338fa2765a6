"""`/admin/api/posts`: every key's posts for the operator: list (search, filters),
detail, edit and redraw a page, regenerate, retry failed pages, download, delete."""

from __future__ import annotations

import io
import zipfile

import pytest
from sqlalchemy import func, select

from storage.tables import Image, PostEvent
from tests.gateway.test_posts_edit import wait_done
from tests.gateway.test_runner import (  # noqa: F401 - fixtures
    Script,
    fake_types,
    script,
    settings,
)


def assert_error(r, status: int, code: str | None = None) -> dict:
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    if code is not None:
        assert error["code"] == code
    return error


@pytest.fixture
async def user(services) -> dict:
    row, key = await services.keys.create("alice")
    return {"id": row.id, "headers": {"Authorization": f"Bearer {key}"}}


async def make_post(client, topic: str, headers=None) -> dict:
    r = await client.post("/v1/posts", json={"topic": topic}, headers=headers or {})
    assert r.status_code == 200, r.text
    return await wait_done(client, r.json()["id"])


async def test_list_search_filter_and_owner(client, script: Script, user) -> None:
    script.outline_pages = 3
    picnic = await make_post(client, "Weekend PICNIC ideas", user["headers"])
    odd = await make_post(client, "city walk 100%_fun")
    script.policy = {2}
    partial = await make_post(client, "秋天的咖啡馆", user["headers"])
    assert partial["status"] == "partial"

    listing = await client.get("/admin/api/posts")
    assert listing.status_code == 200, listing.text
    body = listing.json()
    assert body["total"] == 3
    assert [p["id"] for p in body["data"]] == [partial["id"], odd["id"], picnic["id"]]
    first = body["data"][0]
    assert set(first) == {
        "id", "object", "topic", "model", "status", "page_counts", "cover_thumb_url",
        "owner_key_id", "owner_key_name", "created", "updated",
    }  # fmt: skip
    assert first["page_counts"] == {"total": 3, "done": 2, "failed": 1, "pending": 0}
    assert (first["owner_key_id"], first["owner_key_name"]) == (user["id"], "alice")
    assert body["data"][1]["owner_key_id"] is None
    assert body["data"][1]["owner_key_name"] == "master"
    thumb = first["cover_thumb_url"]
    assert thumb.endswith("/thumb")
    r = await client.get(thumb.removeprefix("http://testserver"))
    assert r.status_code == 200 and r.headers["content-type"].startswith("image/")

    async def ids(**params) -> list[str]:
        r = await client.get("/admin/api/posts", params=params)
        assert r.status_code == 200, r.text
        return [p["id"] for p in r.json()["data"]]

    assert await ids(q="picnic") == [picnic["id"]]  # case-insensitive
    assert await ids(q="秋天的咖啡") == [partial["id"]]
    assert await ids(q="%") == [odd["id"]]  # % and _ are literal
    assert await ids(q="0%_") == [odd["id"]]
    assert await ids(status="partial") == [partial["id"]]
    assert await ids(status="completed") == [odd["id"], picnic["id"]]
    assert await ids(key_id=user["id"]) == [partial["id"], picnic["id"]]
    assert await ids(key_id="master") == [odd["id"]]
    assert await ids(per_page=1, page=2) == [odd["id"]]
    assert_error(await client.get("/admin/api/posts", params={"status": "weird"}), 400)


async def test_search_finds_the_copy_titles(client, script: Script) -> None:
    script.outline_pages = 2
    post = await make_post(client, "autumn coffee")
    # the fake text model writes the copy title 秋天去哪喝咖啡
    found = (await client.get("/admin/api/posts", params={"q": "去哪喝"})).json()
    assert [p["id"] for p in found["data"]] == [post["id"]]


async def test_detail_shows_pages_outline_copy_and_owner(client, script: Script, user) -> None:
    script.outline_pages = 3
    script.policy = {1}
    post = await make_post(client, "tea time", user["headers"])
    r = await client.get(f"/admin/api/posts/{post['id']}")
    assert r.status_code == 200, r.text
    detail = r.json()
    assert detail["id"] == post["id"] and detail["status"] == "partial"
    assert detail["running"] is False
    assert detail["owner_key_id"] == user["id"] and detail["owner_key_name"] == "alice"
    assert detail["copy"]["titles"] == ["秋天去哪喝咖啡"]
    assert "<page>" in detail["outline"]
    assert detail["page_counts"] == {"total": 3, "done": 2, "failed": 1, "pending": 0}
    cover, failed, last = detail["pages"]
    assert cover["type"] == "cover" and cover["status"] == "done" and cover["text"]
    assert cover["image_url"].endswith(".png") and cover["thumb_url"].endswith("/thumb")
    assert failed["status"] == "failed" and "refused" in failed["error"]
    assert failed["image_url"] is None and failed["thumb_url"] is None
    assert last["status"] == "done" and last["error"] is None

    missing = await client.get("/admin/api/posts/post_nope")
    assert_error(missing, 404, "post_not_found")
    for method, path in (
        ("PATCH", "/pages/0"),
        ("POST", "/pages/0/regenerate"),
        ("POST", "/retry-failed"),
        ("GET", "/download"),
        ("DELETE", ""),
    ):
        r = await client.request(method, f"/admin/api/posts/post_nope{path}", json={"text": "x"})
        assert_error(r, 404, "post_not_found")


async def test_edit_text_then_redraw_changes_only_that_page(client, script: Script) -> None:
    script.outline_pages = 3
    post = await make_post(client, "tea")
    url = f"/admin/api/posts/{post['id']}/pages/1"
    before = len(script.image_calls)

    # text only: the page waits to be drawn, its old image stays
    r = await client.patch(url, json={"text": "  Steep for 3 minutes  "})
    assert r.status_code == 200, r.text
    edited = r.json()
    assert edited["pages"][1]["text"] == "Steep for 3 minutes"
    assert edited["pages"][1]["status"] == "pending"
    assert edited["pages"][1]["image_url"] == post["pages"][1]["image_url"]
    assert edited["status"] == "partial" and "Steep for 3 minutes" in edited["outline"]
    assert len(script.image_calls) == before

    r = await client.patch(url, json={"text": "Steep for 4 minutes", "redraw": True})
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "generating"
    done = await wait_done(client, post["id"])
    calls = script.image_calls[before:]
    assert [c.page_index for c in calls] == [1] and "Steep for 4 minutes" in calls[0].prompt
    assert done["status"] == "completed"
    assert done["pages"][1]["image_url"] != post["pages"][1]["image_url"]
    assert [p["image_url"] for i, p in enumerate(done["pages"]) if i != 1] == [
        p["image_url"] for i, p in enumerate(post["pages"]) if i != 1
    ]

    # regenerate with the same text
    before = len(script.image_calls)
    r = await client.post(f"/admin/api/posts/{post['id']}/pages/0/regenerate")
    assert r.status_code == 200, r.text
    await wait_done(client, post["id"])
    assert [c.page_index for c in script.image_calls[before:]] == [0]

    assert_error(await client.patch(url.replace("/1", "/9"), json={"text": "x"}), 404)
    assert_error(await client.post(url.replace("/1", "/9") + "/regenerate"), 404)
    assert_error(await client.patch(url, json={"text": "   "}), 400)
    assert_error(await client.patch(url, json={"colour": "red"}), 400)


async def test_retry_failed_draws_only_failed_pages(client, script: Script) -> None:
    script.outline_pages = 4
    script.policy = {2}
    post = await make_post(client, "tea")
    assert post["status"] == "partial"
    script.policy = set()
    before = len(script.image_calls)
    r = await client.post(f"/admin/api/posts/{post['id']}/retry-failed")
    assert r.status_code == 200, r.text
    done = await wait_done(client, post["id"])
    assert done["status"] == "completed"
    assert [c.page_index for c in script.image_calls[before:]] == [2]
    again = await client.post(f"/admin/api/posts/{post['id']}/retry-failed")
    assert_error(again, 400, "no_failed_pages")


async def test_download_zip_then_delete_removes_images(client, script: Script, services) -> None:
    script.outline_pages = 3
    post = await make_post(client, "tea")
    z = await client.get(f"/admin/api/posts/{post['id']}/download")
    assert z.status_code == 200 and z.headers["content-type"] == "application/zip"
    assert zipfile.ZipFile(io.BytesIO(z.content)).namelist() == [
        "page_01.png",
        "page_02.png",
        "page_03.png",
    ]
    pdf = await client.get(f"/admin/api/posts/{post['id']}/download", params={"format": "pdf"})
    assert pdf.content.startswith(b"%PDF")
    bad = await client.get(f"/admin/api/posts/{post['id']}/download", params={"format": "gif"})
    assert_error(bad, 400)

    image = post["pages"][0]["image_url"].removeprefix("http://testserver")
    assert (await client.get(image)).status_code == 200
    r = await client.delete(f"/admin/api/posts/{post['id']}")
    assert r.status_code == 200 and r.json() == {
        "id": post["id"],
        "object": "post.deleted",
        "deleted": True,
    }
    assert_error(await client.get(f"/admin/api/posts/{post['id']}"), 404, "post_not_found")
    assert (await client.get(image)).status_code == 404
    async with services.db.engine.connect() as conn:
        images = (await conn.execute(select(func.count()).select_from(Image))).scalar()
        events = (await conn.execute(select(func.count()).select_from(PostEvent))).scalar()
    assert images == 0 and events == 0


async def test_a_busy_post_refuses_changes(client, script: Script, services) -> None:
    script.outline_pages = 2
    post = await make_post(client, "tea")
    job = await services.runner.jobs.create(post["id"], outline_only=False)  # a job running
    assert job is not None
    base = f"/admin/api/posts/{post['id']}"
    assert (await client.get(base)).json()["running"] is True
    for method, path, body in (
        ("PATCH", "/pages/0", {"text": "x"}),
        ("PATCH", "/pages/0", {"redraw": True}),
        ("POST", "/pages/0/regenerate", None),
        ("POST", "/retry-failed", None),
        ("DELETE", "", None),
    ):
        r = await client.request(method, base + path, json=body)
        if path == "/retry-failed":
            assert_error(r, 400, "no_failed_pages")  # nothing to retry comes first
            continue
        assert_error(r, 409, "post_busy")
    await services.runner.jobs.end(job.id, "done")
    assert (await client.delete(base)).status_code == 200


async def test_admin_posts_need_the_master_key(client, user) -> None:
    for method, path in (
        ("GET", "/admin/api/posts"),
        ("GET", "/admin/api/posts/p"),
        ("PATCH", "/admin/api/posts/p/pages/0"),
        ("POST", "/admin/api/posts/p/pages/0/regenerate"),
        ("POST", "/admin/api/posts/p/retry-failed"),
        ("GET", "/admin/api/posts/p/download"),
        ("DELETE", "/admin/api/posts/p"),
    ):
        r = await client.request(method, path, headers=user["headers"], json={"text": "x"})
        assert_error(r, 403, "permission_denied")
        r = await client.request(method, path, headers={"Authorization": ""})
        assert r.status_code == 401
