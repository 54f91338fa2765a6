"""The posts pages (`/admin/posts`, `/admin/posts/{id}`): list, search, filters, pages,
a post's outline, copy and pages, the not-found page, and the edit → redraw flow the
page's JS drives through `/admin/api/posts` with the session and its CSRF token.
Posts are made on `/v1/posts` with the built-in offline `local` provider."""

from __future__ import annotations

import asyncio
import html
import json
import re

import httpx

from tests.gateway.test_posts_edit import wait_done


async def make_post(client: httpx.AsyncClient, topic: str, **body) -> dict:
    r = await client.post("/v1/posts", json={"topic": topic, "page_count": 3, **body})
    assert r.status_code == 200, r.text
    return await wait_done(client, r.json()["id"])


async def settled(browser: httpx.AsyncClient, post_id: str, timeout: float = 30) -> dict:
    """The post from the admin API once no job runs, as the page's polling sees it."""
    async with asyncio.timeout(timeout):
        while True:
            r = await browser.get(f"/admin/api/posts/{post_id}")
            assert r.status_code == 200, r.text
            if not r.json()["running"]:
                return r.json()
            await asyncio.sleep(0.05)


def row_ids(page: str) -> list[str]:
    return re.findall(r'<tr data-post-id="([^"]+)"', page)


def post_data(page: str) -> dict:
    found = re.search(r'<script type="application/json" id="post-data">(.*?)</script>', page)
    assert found, "no post-data block"
    return json.loads(found.group(1))


def card_indexes(page: str) -> list[str]:
    return re.findall(r'<article class="page-card" data-index="(\d*)"', page)


def assert_no_inline_code(page: str) -> None:
    """The CSP (`script-src 'self'; style-src 'self'`) would block inline code and styles."""
    assert " style=" not in page and " onclick=" not in page and "<style" not in page
    assert re.findall(r"<script(?![^>]*(?:src=|application/json))", page) == []


# -- the list ---------------------------------------------------------------------------


async def test_the_pages_need_a_signed_in_admin(browser, services) -> None:
    await services.admin.add_user("admin", "correct horse battery")
    for path in ("/admin/posts?q=tea", "/admin/posts/post_x"):
        r = await browser.get(path)
        assert r.status_code == 303
        assert r.headers["location"].startswith("/admin/login?next=%2Fadmin%2Fposts")


async def test_the_list_search_filters_and_pages(admin_browser, client, services) -> None:
    row, key = await services.keys.create("alice")
    picnic = await make_post(client, "Weekend PICNIC ideas")
    odd = await make_post(client, "city walk 100% fun")
    r = await client.post(
        "/v1/posts",
        json={"topic": "秋天的咖啡馆", "page_count": 3, "mode": "outline"},
        headers={"Authorization": f"Bearer {key}"},
    )
    assert r.status_code == 200, r.text
    draft = await wait_done(client, r.json()["id"])
    assert (picnic["status"], odd["status"], draft["status"]) == ("completed", "completed", "draft")

    r = await admin_browser.get("/admin/posts")
    assert r.status_code == 200, r.text
    page = r.text
    assert_no_inline_code(page)
    assert '<a class="nav active" href="/admin/posts" data-nav="posts">Posts</a>' in page
    assert row_ids(page) == [draft["id"], odd["id"], picnic["id"]]  # newest first
    assert "Total: 3" in page
    # a cover thumbnail for drawn posts, none for the outline-only draft
    cover = (await admin_browser.get(f"/admin/api/posts/{picnic['id']}")).json()["pages"][0]
    assert f'<img src="{cover["thumb_url"]}" alt=""' in page
    assert page.count("No cover yet") == 1
    assert page.count('<span class="chip ok" data-status="completed">completed</span>') == 2
    assert '<span class="chip " data-status="draft">draft</span>' in page
    assert page.count("3/3 done") == 2 and "0/3 done" in page and "3 pending" in page
    assert ">alice</td>" in page and page.count(">master key</td>") == 2
    assert f'<option value="{row.id}">alice</option>' in page
    assert 'href="/admin/posts/' + odd["id"] + '"' in page
    assert "redink" in page

    async def listed(**params) -> tuple[list[str], str]:
        r = await admin_browser.get("/admin/posts", params=params)
        assert r.status_code == 200, r.text
        return row_ids(r.text), r.text

    ids, page = await listed(q="picnic")  # case-insensitive
    assert ids == [picnic["id"]]
    assert 'value="picnic"' in page and 'id="clear-filters"' in page
    assert (await listed(q="%"))[0] == [odd["id"]]  # % is literal
    assert (await listed(q="咖啡"))[0] == [draft["id"]]
    assert (await listed(status="completed"))[0] == [odd["id"], picnic["id"]]
    assert (await listed(status="draft"))[0] == [draft["id"]]
    assert (await listed(status="weird"))[0] == [draft["id"], odd["id"], picnic["id"]]
    ids, page = await listed(status="failed")
    assert ids == [] and 'id="posts-empty"' in page and "No posts match this search." in page
    assert '<option value="failed" selected>' in page
    ids, page = await listed(key_id=row.id)
    assert ids == [draft["id"]] and f'<option value="{row.id}" selected>' in page
    assert (await listed(key_id="master"))[0] == [odd["id"], picnic["id"]]

    # pages: two per page, the second page has the oldest, an address past the end shows
    # the last page
    ids, page = await listed(per_page="2")
    assert ids == [draft["id"], odd["id"]] and "Page 1 of 2" in page
    next_url = html.unescape(re.search(r'href="([^"]+)" id="page-next"', page).group(1))
    assert next_url == "/admin/posts?page=2&per_page=2"
    ids, page = await listed(per_page="2", page="2", status="")
    assert ids == [picnic["id"]] and 'id="page-previous"' in page and 'id="page-next"' not in page
    assert (await listed(per_page="2", page="99"))[0] == [picnic["id"]]
    assert (await listed(per_page="x", page="y"))[0] == [draft["id"], odd["id"], picnic["id"]]
    ids, page = await listed(per_page="1", q="e", status="completed")
    prev_next = html.unescape(re.search(r'href="([^"]+)" id="page-next"', page).group(1))
    assert prev_next == "/admin/posts?page=2&per_page=1&q=e&status=completed"


async def test_no_posts_yet(admin_browser) -> None:
    r = await admin_browser.get("/admin/posts")
    assert r.status_code == 200
    assert 'id="posts-empty"' in r.text and "No posts yet." in r.text
    assert 'id="posts"' not in r.text and 'id="pager"' not in r.text


# -- a post -----------------------------------------------------------------------------


async def test_a_post_shows_outline_copy_pages_and_images(admin_browser, client) -> None:
    post = await make_post(client, "autumn coffee shops", aspect_ratio="1:1")
    assert post["status"] == "completed"
    r = await admin_browser.get(f"/admin/posts/{post['id']}")
    assert r.status_code == 200, r.text
    page = r.text
    assert_no_inline_code(page)
    assert r.headers["content-security-policy"].startswith("default-src 'self'")
    assert '<h1 id="post-topic">autumn coffee shops</h1>' in page
    assert 'id="post-status" data-status="completed">completed</span>' in page
    assert "3/3 done" in page and ">master key</a>" in page and "1:1" in page
    assert '<div id="post-running" class="notice hidden"' in page

    data = post_data(page)
    detail = data["post"]
    assert detail["id"] == post["id"] and detail["running"] is False
    assert data["strings"]["posts.page_n"] == "Page {n}"
    assert data["chips"]["completed"] == "ok"

    # the outline, then the pages in order with their text, type, image and thumbnail
    assert detail["outline"] and html.escape(detail["outline"].split("\n")[0]) in page
    assert card_indexes(page) == ["0", "1", "2", ""]  # the last one is the <template>
    for p in detail["pages"]:
        assert p["status"] == "done" and p["thumb_url"] and p["image_url"]
        assert f'src="{p["thumb_url"]}"' in page
        assert html.escape(p["text"]).splitlines()[0] in page
        thumb = await admin_browser.get(p["thumb_url"].removeprefix("http://testserver"))
        assert thumb.status_code == 200 and thumb.headers["content-type"].startswith("image/")
    assert page.count('<span class="chip page-type">cover</span>') == 1
    assert page.count('<span class="chip page-status ok" data-status="done">done</span>') == 3

    # the copy the flow wrote
    copy = detail["copy"]
    assert copy and copy["titles"]
    assert '<section class="panel" id="post-copy"' in page
    for title in copy["titles"]:
        assert f"<li>{html.escape(title)}</li>" in page
    assert html.escape(copy["body"]).splitlines()[0] in page
    for tag in copy["tags"]:
        assert f'<span class="chip">#{html.escape(tag)}</span>' in page

    # downloads through the session; nothing to retry
    for fmt in ("zip", "pdf", "long"):
        link = f'href="/admin/api/posts/{post["id"]}/download?format={fmt}"'
        assert link in page
        d = await admin_browser.get(f"/admin/api/posts/{post['id']}/download?format={fmt}")
        assert d.status_code == 200 and "attachment" in d.headers["content-disposition"]
    assert '<button type="button" id="retry-failed" disabled>' in page
    assert 'id="delete-post"' in page and 'id="edit-dialog"' in page


async def test_a_draft_has_nothing_to_download(admin_browser, client) -> None:
    post = await make_post(client, "tea", mode="outline")
    page = (await admin_browser.get(f"/admin/posts/{post['id']}")).text
    assert 'id="download-zip"' in page and ' href="/admin/api/posts/' not in page
    assert page.count('aria-disabled="true"') == 3
    assert page.count("No image yet") >= 3
    assert '<section class="panel hidden" id="post-copy"' in page


async def test_an_unknown_post_is_a_friendly_404(admin_browser) -> None:
    r = await admin_browser.get("/admin/posts/post_nope")
    assert r.status_code == 404
    assert r.headers["content-type"].startswith("text/html")
    assert 'id="post-not-found"' in r.text and "Post not found" in r.text
    assert "There is no post post_nope" in r.text and 'href="/admin/posts"' in r.text
    assert_no_inline_code(r.text)
    r = await admin_browser.get("/admin/posts/%3Cb%3E")
    assert r.status_code == 404 and "<b>" not in r.text and "&lt;b&gt;" in r.text


async def test_the_page_script_is_served(admin_browser) -> None:
    r = await admin_browser.get("/admin/static/posts.js")
    assert r.status_code == 200 and "javascript" in r.headers["content-type"]
    assert "/admin/api/posts/" in r.text
    page = (await admin_browser.get("/admin/posts")).text
    assert re.search(r'<script src="/admin/static/posts\.js\?v=[^"]+" defer></script>', page)
    css = (await admin_browser.get("/admin/static/admin.css")).text
    assert "/* posts page */" in css and "/* end posts page */" in css


async def test_edit_then_redraw_changes_the_page_image(admin_browser, client) -> None:
    post = await make_post(client, "tea time")
    url = f"/admin/api/posts/{post['id']}/pages/1"
    before = await settled(admin_browser, post["id"])
    old = before["pages"][1]

    # the session alone is not enough for a write: the CSRF token is needed
    token = admin_browser.headers.pop("X-CSRF-Token")
    r = await admin_browser.patch(url, json={"text": "x"})
    assert r.status_code == 403 and r.json()["error"]["code"] == "csrf_failed"
    admin_browser.headers["X-CSRF-Token"] = token

    # save the text only: the page waits, its old image stays
    r = await admin_browser.patch(url, json={"text": "Steep for 3 minutes"})
    assert r.status_code == 200, r.text
    assert r.json()["pages"][1]["status"] == "pending"
    assert r.json()["pages"][1]["image_id"] == old["image_id"]
    page = (await admin_browser.get(f"/admin/posts/{post['id']}")).text
    assert "Steep for 3 minutes" in page and 'data-status="pending">waiting</span>' in page

    # save and redraw: a job draws the page; the page shows the new image
    r = await admin_browser.patch(url, json={"text": "Steep for 4 minutes", "redraw": True})
    assert r.status_code == 200, r.text
    after = await settled(admin_browser, post["id"])
    new = after["pages"][1]
    assert new["status"] == "done" and new["text"] == "Steep for 4 minutes"
    assert new["image_id"] != old["image_id"] and new["thumb_url"] != old["thumb_url"]
    assert [p["image_id"] for p in after["pages"] if p["index"] != 1] == [
        p["image_id"] for p in before["pages"] if p["index"] != 1
    ]
    page = (await admin_browser.get(f"/admin/posts/{post['id']}")).text
    assert f'src="{new["thumb_url"]}"' in page and f'src="{old["thumb_url"]}"' not in page
    assert "Steep for 4 minutes" in page

    # redraw with the same text
    r = await admin_browser.post(f"/admin/api/posts/{post['id']}/pages/2/regenerate")
    assert r.status_code == 200, r.text
    again = await settled(admin_browser, post["id"])
    assert again["pages"][2]["image_id"] != after["pages"][2]["image_id"]


async def test_a_busy_post_polls_and_refuses_changes(admin_browser, client, services) -> None:
    post = await make_post(client, "tea")
    job = await services.runner.jobs.create(post["id"], outline_only=False)  # a job running
    assert job is not None
    try:
        page = (await admin_browser.get(f"/admin/posts/{post['id']}")).text
        assert '<div id="post-running" class="notice" role="status">' in page
        assert post_data(page)["post"]["running"] is True
        r = await admin_browser.patch(
            f"/admin/api/posts/{post['id']}/pages/0", json={"text": "x", "redraw": True}
        )
        assert r.status_code == 409 and r.json()["error"]["code"] == "post_busy"
        assert r.json()["error"]["message"].startswith("The post is being generated")
        r = await admin_browser.delete(f"/admin/api/posts/{post['id']}")
        assert r.status_code == 409 and r.json()["error"]["code"] == "post_busy"
    finally:
        await services.runner.jobs.end(job.id, "done")
    r = await admin_browser.delete(f"/admin/api/posts/{post['id']}")
    assert r.status_code == 200
    assert (await admin_browser.get(f"/admin/posts/{post['id']}")).status_code == 404
    assert row_ids((await admin_browser.get("/admin/posts")).text) == []


async def test_the_chinese_pages(admin_browser, client) -> None:
    post = await make_post(client, "秋天的咖啡馆")
    zh = {"Accept-Language": "zh-CN,zh;q=0.9,en;q=0.5"}
    page = (await admin_browser.get("/admin/posts", headers=zh)).text
    assert '<html lang="zh">' in page
    for text in (
        "<h1>图文</h1>",
        "主题或文案",
        "已完成 3/3",
        ">已完成</span>",
        ">主密钥</td>",
        "共 1 篇",
    ):
        assert text in page, text
    page = (await admin_browser.get(f"/admin/posts/{post['id']}", headers=zh)).text
    for text in (
        "重试失败的页面",
        "删除图文",
        "第 1 页",
        "重新绘制",
        "保存并重新绘制",
        "长图",
        "文案",
    ):
        assert text in page, text
    assert post_data(page)["strings"]["posts.page_n"] == "第 {n} 页"
    page = (await admin_browser.get("/admin/posts/post_nope", headers=zh)).text
    assert "找不到这篇图文" in page
