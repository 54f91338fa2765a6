"""The posts API that makes and edits posts: create (topic, pages, outline mode),
events (SSE, Last-Event-ID), PATCH, generate, regenerate a page, retry failed pages,
downloads (zip, pdf, long)."""

from __future__ import annotations

import asyncio
import io
import json
import re
import zipfile

import pytest
from PIL import Image as PILImage

from tests.gateway.test_runner import (  # noqa: F401 - fixtures
    Script,
    fake_types,
    image_bytes,
    script,
    settings,
)


async def wait_done(client, post_id: str, timeout: float = 20) -> dict:
    async with asyncio.timeout(timeout):
        while True:
            post = (await client.get(f"/v1/posts/{post_id}")).json()
            if post["status"] != "generating":
                return post
            await asyncio.sleep(0.05)


def parse_sse(text: str) -> list[dict]:
    events = []
    for block in text.split("\n\n"):
        fields: dict = {}
        for line in block.splitlines():
            name, _, value = line.partition(": ")
            if name in ("id", "event", "data"):
                fields[name] = value
        if "event" in fields:
            events.append(
                {"id": int(fields["id"]), "event": fields["event"], **json.loads(fields["data"])}
            )
    return events


async def test_create_full_then_events_and_copy(client, script: Script) -> None:
    script.outline_pages = 3
    r = await client.post("/v1/posts", json={"topic": "秋天的咖啡馆探店"})
    assert r.status_code == 200, r.text
    post = r.json()
    assert post["object"] == "post" and post["status"] == "generating"
    done = await wait_done(client, post["id"])
    assert done["status"] == "completed" and len(done["pages"]) == 3
    assert all(p["image_url"] for p in done["pages"])
    assert done["copy"] == {"titles": ["秋天去哪喝咖啡"], "body": "正文", "tags": ["咖啡", "探店"]}

    r = await client.get(f"/v1/posts/{post['id']}/events")
    assert r.headers["content-type"].startswith("text/event-stream")
    events = parse_sse(r.text)
    assert [e["id"] for e in events] == list(range(1, len(events) + 1))
    names = [e["event"] for e in events]
    assert names[0] == "outline" and names[-2:] == ["copy", "finished"]
    assert names.count("page_done") == 3
    urls = {e["page"]: e["url"] for e in events if e["event"] == "page_done"}
    assert urls == {p["index"]: p["image_url"] for p in done["pages"]}
    assert events[-1]["status"] == "completed" and events[-1]["post_id"] == post["id"]

    # resumed after the 4th event: the rest only
    r = await client.get(f"/v1/posts/{post['id']}/events", headers={"Last-Event-ID": "4"})
    assert [e["id"] for e in parse_sse(r.text)] == [e["id"] for e in events[4:]]
    bad = await client.get(f"/v1/posts/{post['id']}/events", headers={"Last-Event-ID": "x"})
    assert bad.status_code == 400


async def test_events_stream_live_while_the_job_runs(client, script: Script) -> None:
    script.outline_pages = 3
    script.delay = 0.3
    post = (await client.post("/v1/posts", json={"topic": "rainy day reading"})).json()
    seen: list[str] = []
    async with client.stream("GET", f"/v1/posts/{post['id']}/events") as r:
        async for line in r.aiter_lines():
            if line.startswith("event: "):
                seen.append(line[7:])
    # the stream ended by itself after `finished`, having shown every step live
    assert seen[0] == "outline" and seen[-1] == "finished" and seen.count("page_done") == 3


async def test_outline_mode_then_patch_then_generate(client, script: Script) -> None:
    script.outline_pages = 4
    post = (await client.post("/v1/posts", json={"topic": "tea", "mode": "outline"})).json()
    draft = await wait_done(client, post["id"])
    assert draft["status"] == "draft" and [p["status"] for p in draft["pages"]] == ["pending"] * 4
    assert script.image_calls == []

    # reorder 2 and 1, edit 3, delete nothing, add one before the summary
    r = await client.patch(
        f"/v1/posts/{post['id']}",
        json={
            "topic": "green tea",
            "pages": [
                {"index": 0},
                {"index": 2},
                {"index": 1, "text": "A new page two"},
                {"text": "An added page", "type": "content"},
                {"index": 3},
            ],
        },
    )
    assert r.status_code == 200, r.text
    edited = r.json()
    assert edited["topic"] == "green tea"
    assert [p["index"] for p in edited["pages"]] == [0, 1, 2, 3, 4]
    assert [p["type"] for p in edited["pages"]] == [
        "cover",
        "content",
        "content",
        "content",
        "summary",
    ]
    assert edited["pages"][2]["text"] == "A new page two"
    assert edited["pages"][1]["text"] == draft["pages"][2]["text"]
    assert edited["pages"][3]["text"] == "An added page"

    r = await client.post(f"/v1/posts/{post['id']}/generate")
    assert r.status_code == 200 and r.json()["status"] == "generating"
    done = await wait_done(client, post["id"])
    assert done["status"] == "completed" and all(p["image_url"] for p in done["pages"])
    assert sorted(c.page_index for c in script.image_calls) == [0, 1, 2, 3, 4]
    # the added page's text reached the image model
    assert any("An added page" in c.prompt for c in script.image_calls if c.page_index == 3)


async def test_patch_validation_and_deletes(client, script: Script) -> None:
    script.outline_pages = 3
    post = (await client.post("/v1/posts", json={"topic": "tea"})).json()
    done = await wait_done(client, post["id"])
    url = f"/v1/posts/{post['id']}"
    for body, param in (
        ({"pages": [{"index": 7}]}, "pages[0].index"),
        ({"pages": [{"index": 0}, {"index": 0}]}, "pages[1].index"),
        ({"pages": [{"type": "content"}]}, "pages[0].text"),
        ({"pages": []}, "pages"),
        ({"colour": "red"}, "colour"),
    ):
        r = await client.patch(url, json=body)
        assert r.status_code == 400, body
        assert r.json()["error"]["type"] == "invalid_request_error"
        assert param in (r.json()["error"]["param"] or ""), (body, r.json())
    # delete the middle page: the others keep their images and the post stays complete
    r = await client.patch(url, json={"pages": [{"index": 0}, {"index": 2}]})
    kept = r.json()
    assert kept["status"] == "completed"
    assert [p["image_url"] for p in kept["pages"]] == [
        done["pages"][0]["image_url"],
        done["pages"][2]["image_url"],
    ]
    # an edited text marks the page pending (its old image kept until redrawn)
    r = await client.patch(url, json={"pages": [{"index": 0}, {"index": 1, "text": "new"}]})
    page = r.json()["pages"][1]
    assert r.json()["status"] == "partial"
    assert page["status"] == "pending" and page["image_url"] == done["pages"][2]["image_url"]


async def test_regenerate_one_page_with_new_text_keeps_the_cover(
    client, script: Script, services
) -> None:
    script.outline_pages = 4
    post = (await client.post("/v1/posts", json={"topic": "tea"})).json()
    done = await wait_done(client, post["id"])
    before = len(script.image_calls)
    r = await client.post(
        f"/v1/posts/{post['id']}/pages/2/regenerate", json={"text": "Steep for 3 minutes"}
    )
    assert r.status_code == 200, r.text
    again = await wait_done(client, post["id"])
    calls = script.image_calls[before:]
    assert [c.page_index for c in calls] == [2]
    assert "Steep for 3 minutes" in calls[0].prompt
    cover_id = done["pages"][0]["image_url"].rsplit("/", 1)[1].split(".")[0]
    cover = await image_bytes(services, cover_id)
    assert calls[0].references and calls[0].references[0].data[:8] == cover[:8]
    assert again["pages"][2]["text"] == "Steep for 3 minutes"
    assert again["pages"][2]["image_url"] != done["pages"][2]["image_url"]
    assert [p["image_url"] for i, p in enumerate(again["pages"]) if i != 2] == [
        p["image_url"] for i, p in enumerate(done["pages"]) if i != 2
    ]
    missing = await client.post(f"/v1/posts/{post['id']}/pages/9/regenerate")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "page_not_found"


async def test_retry_failed_draws_only_the_failed_pages(client, script: Script) -> None:
    script.outline_pages = 4
    script.policy = {2}
    post = (await client.post("/v1/posts", json={"topic": "tea"})).json()
    partial = await wait_done(client, post["id"])
    assert partial["status"] == "partial"
    assert partial["pages"][2]["status"] == "failed" and "refused" in partial["pages"][2]["error"]
    # generate is not a retry of everything done: a regenerate of page 1 leaves page 2 alone
    before = len(script.image_calls)
    await client.post(f"/v1/posts/{post['id']}/pages/1/regenerate")
    await wait_done(client, post["id"])
    assert [c.page_index for c in script.image_calls[before:]] == [1]

    script.policy = set()
    before = len(script.image_calls)
    r = await client.post(f"/v1/posts/{post['id']}/retry-failed")
    assert r.status_code == 200
    done = await wait_done(client, post["id"])
    assert done["status"] == "completed"
    assert [c.page_index for c in script.image_calls[before:]] == [2]
    r = await client.post(f"/v1/posts/{post['id']}/retry-failed")
    assert r.status_code == 400 and r.json()["error"]["code"] == "no_failed_pages"


async def test_busy_post_refuses_edits(client, script: Script) -> None:
    script.outline_pages = 2
    script.delay = 0.5
    post = (await client.post("/v1/posts", json={"topic": "tea"})).json()
    url = f"/v1/posts/{post['id']}"
    for method, path, body in (
        ("PATCH", "", {"topic": "x"}),
        ("POST", "/generate", None),
        ("POST", "/pages/0/regenerate", None),
        ("DELETE", "", None),
    ):
        r = await client.request(method, url + path, json=body)
        assert r.status_code == 409, (method, path, r.text)
        assert r.json()["error"]["code"] == "post_busy"
    await wait_done(client, post["id"])


async def test_create_with_pages_skips_the_outline(client, script: Script) -> None:
    r = await client.post(
        "/v1/posts",
        json={"topic": "tea", "pages": ["Tea 101", {"text": "Green"}, "Bye"], "mode": "full"},
    )
    post = await wait_done(client, r.json()["id"])
    assert script.text_calls == []  # no outline was asked for
    assert [p["type"] for p in post["pages"]] == ["cover", "content", "summary"]
    assert post["status"] == "completed"


@pytest.mark.parametrize(
    "body, param",
    [
        ({}, "topic"),
        ({"topic": ""}, "topic"),
        ({"topic": "x", "page_count": 40}, "page_count"),
        ({"topic": "x", "mode": "draw"}, "mode"),
        ({"topic": "x", "model": "nope"}, "model"),
        ({"topic": "x", "aspect_ratio": "5:7"}, "aspect_ratio"),
        ({"topic": "x", "pages": ["  "]}, "pages"),
        ({"topic": "x", "reference_images": ["data:image/png;base64,AAAA"]}, "reference_images"),
        ({"topic": "x", "reference_images": ["http://127.0.0.1/a.png"]}, "reference_images"),
    ],
)
async def test_create_rejects_bad_input(client, script: Script, body, param) -> None:
    r = await client.post("/v1/posts", json=body)
    assert r.status_code in (400, 404), r.text
    error = r.json()["error"]
    assert param in (error["param"] or ""), error


async def test_downloads_zip_pdf_long(client, script: Script) -> None:
    script.outline_pages = 3
    post = (await client.post("/v1/posts", json={"topic": "tea"})).json()
    await wait_done(client, post["id"])
    url = f"/v1/posts/{post['id']}/download"
    z = await client.get(url)
    assert z.headers["content-type"] == "application/zip"
    assert zipfile.ZipFile(io.BytesIO(z.content)).namelist() == [
        "page_01.png",
        "page_02.png",
        "page_03.png",
    ]
    pdf = await client.get(url, params={"format": "pdf"})
    assert pdf.headers["content-type"] == "application/pdf" and pdf.content.startswith(b"%PDF")
    assert len(re.findall(rb"/Type\s*/Page\b(?!s)", pdf.content)) == 3
    assert f"{post['id']}.pdf" in pdf.headers["content-disposition"]
    long = await client.get(url, params={"format": "long"})
    assert long.headers["content-type"] == "image/jpeg"
    image = PILImage.open(io.BytesIO(long.content))
    assert image.height == 3 * 32 and image.width == 24  # the fake's 24x32 pages, stacked
    bad = await client.get(url, params={"format": "gif"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "format"
