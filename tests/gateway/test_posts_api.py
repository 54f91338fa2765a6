"""The posts API: list (paged, search, status), get, delete with images; scoped per key."""

from __future__ import annotations

import pytest

from tests.conftest import MASTER_KEY


async def make_post(client, topic: str, headers=None) -> dict:
    r = await client.post(
        "/v1/images/generations",
        json={"model": "redink", "prompt": topic, "n": 2},
        headers=headers or {},
    )
    assert r.status_code == 200, r.text
    return r.json()


@pytest.fixture
async def user(services):
    _, key = await services.keys.create("alice")
    return {"Authorization": f"Bearer {key}"}


async def test_list_search_filter_and_page(client, user) -> None:
    ids = [(await make_post(client, topic, user))["post_id"] for topic in
           ("秋天的咖啡馆 2页", "city walk 100%_fun", "Weekend picnic")]  # fmt: skip
    listing = (await client.get("/v1/posts", headers=user)).json()
    assert listing["total"] == 3 and [p["id"] for p in listing["data"]] == ids[::-1]
    first = listing["data"][-1]
    assert first["status"] == "completed" and first["page_count"] == 2
    assert first["cover_url"].startswith("http://testserver/images/img_")

    found = (await client.get("/v1/posts", params={"q": "PICNIC"}, headers=user)).json()
    assert [p["id"] for p in found["data"]] == [ids[2]]
    # % and _ are literal in a search
    literal = (await client.get("/v1/posts", params={"q": "100%_"}, headers=user)).json()
    assert [p["id"] for p in literal["data"]] == [ids[1]]
    assert (await client.get("/v1/posts", params={"q": "0%", "per_page": 5}, headers=user)).json()[
        "total"
    ] == 1
    assert (await client.get("/v1/posts", params={"q": "%"}, headers=user)).json()["total"] == 1

    paged = (await client.get("/v1/posts", params={"per_page": 2, "page": 2}, headers=user)).json()
    assert [p["id"] for p in paged["data"]] == [ids[0]]
    failed = (await client.get("/v1/posts", params={"status": "failed"}, headers=user)).json()
    assert failed["total"] == 0
    bad = await client.get("/v1/posts", params={"status": "weird"}, headers=user)
    assert bad.status_code == 400 and bad.json()["error"]["param"]


async def test_get_shows_pages_and_is_scoped_to_the_key(client, user, services) -> None:
    post_id = (await make_post(client, "rainy bookshop", user))["post_id"]
    post = (await client.get(f"/v1/posts/{post_id}", headers=user)).json()
    assert post["id"] == post_id and post["status"] == "completed"
    assert [p["index"] for p in post["pages"]] == [0, 1]
    assert post["pages"][0]["type"] == "cover" and post["pages"][0]["image_url"]
    assert all(p["status"] == "done" and p["error"] is None for p in post["pages"])

    _, other = await services.keys.create("bob")
    bob = {"Authorization": f"Bearer {other}"}
    r = await client.get(f"/v1/posts/{post_id}", headers=bob)
    assert r.status_code == 404 and r.json()["error"]["code"] == "post_not_found"
    assert (await client.get("/v1/posts", headers=bob)).json()["total"] == 0
    assert (await client.delete(f"/v1/posts/{post_id}", headers=bob)).status_code == 404
    # the master key sees every post
    master = await client.get("/v1/posts", headers={"Authorization": f"Bearer {MASTER_KEY}"})
    assert master.json()["total"] == 1
    assert (await client.get("/v1/posts")).status_code == 200
    assert (await client.get("/v1/posts", headers={"Authorization": ""})).status_code == 401


async def test_delete_removes_the_post_and_its_images(client, user, services) -> None:
    answer = await make_post(client, "mountain hike", user)
    post_id = answer["post_id"]
    url = answer["data"][0]["url"].removeprefix("http://testserver")
    assert (await client.get(url)).status_code == 200
    r = await client.delete(f"/v1/posts/{post_id}", headers=user)
    assert r.status_code == 200 and r.json()["deleted"] is True
    assert (await client.get(f"/v1/posts/{post_id}", headers=user)).status_code == 404
    assert (await client.get(url)).status_code == 404
    stats = await services.storage.lifecycle.stats()
    assert stats["images"] == 0 and stats["local"]["count"] == 0


async def test_a_post_still_generating_cannot_be_deleted(client, user, services) -> None:
    post_id = (await make_post(client, "sunset", user))["post_id"]
    job = await services.runner.jobs.create(post_id, outline_only=False)  # a job running
    assert job is not None
    r = await client.delete(f"/v1/posts/{post_id}", headers=user)
    assert r.status_code == 409 and r.json()["error"]["type"] == "invalid_request_error"
    assert r.json()["error"]["code"] == "post_busy"
    await services.runner.jobs.end(job.id, "done")
    assert (await client.delete(f"/v1/posts/{post_id}", headers=user)).status_code == 200
