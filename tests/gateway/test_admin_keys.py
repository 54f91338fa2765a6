"""`/admin/api/keys`, `/admin/api/usage` and `/admin/api/stats`."""

from __future__ import annotations

import hashlib
import time
from datetime import UTC, datetime

import pytest

from storage.tables import ApiKey

CONFIG = "models:\n  poster: {type: image, provider: local}\n"


@pytest.fixture
def settings(settings):
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    settings.config_path.write_text(CONFIG)
    return settings


def assert_error(r, status: int, code: str | None = None) -> dict:
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    if code is not None:
        assert error["code"] == code
    return error


async def test_create_shows_the_key_once_and_list_never(client, services) -> None:
    r = await client.post(
        "/admin/api/keys",
        json={
            "name": "alice",
            "allowed_models": ["poster", "redink"],
            "rpm": 30,
            "max_concurrent_posts": 2,
            "daily_image_quota": 100,
            "expires_at": "2099-01-02T03:04:05Z",
        },
    )
    assert r.status_code == 201, r.text
    created = r.json()
    plaintext = created["key"]
    assert plaintext.startswith("sk-ink-") and plaintext.startswith(created["prefix"])
    assert created["limits"] == {
        "allowed_models": ["poster", "redink"],
        "rpm": 30,
        "max_concurrent_posts": 2,
        "daily_image_quota": 100,
        "expires_at": "2099-01-02T03:04:05+00:00",
    }
    # the key works on /v1 and is counted in today's usage
    auth = {"Authorization": f"Bearer {plaintext}"}
    r = await client.post(
        "/v1/images/generations", json={"model": "poster", "prompt": "fox"}, headers=auth
    )
    assert r.status_code == 200, r.text
    await services.usage.flush()

    listed = await client.get("/admin/api/keys")
    assert listed.status_code == 200
    [entry] = [k for k in listed.json()["data"] if k["id"] == created["id"]]
    assert "key" not in entry and entry["name"] == "alice" and not entry["revoked"]
    assert entry["usage_today"] == {"requests": 1, "images": 1}
    assert entry["last_used_at"] is not None
    digest = hashlib.sha256(plaintext.encode()).hexdigest()
    for answer in (
        listed,
        await client.get("/admin/api/usage"),
        await client.get("/admin/api/stats"),
    ):
        assert plaintext not in answer.text and digest not in answer.text
        assert "key_hash" not in answer.text


async def test_expires_at_takes_unix_seconds(client) -> None:
    r = await client.post("/admin/api/keys", json={"name": "n", "expires_at": 4102444800})
    assert r.status_code == 201, r.text
    assert r.json()["limits"]["expires_at"] == "2100-01-01T00:00:00+00:00"


async def test_patch_changes_and_clears_limits_then_delete_revokes(client, services) -> None:
    created = (await client.post("/admin/api/keys", json={"name": "bob", "rpm": 1})).json()
    auth = {"Authorization": f"Bearer {created['key']}"}
    assert (await client.get("/v1/posts", headers=auth)).status_code == 200
    assert_error(await client.get("/v1/posts", headers=auth), 429, "rate_limit_exceeded")

    r = await client.patch(
        f"/admin/api/keys/{created['id']}",
        json={"rpm": None, "name": "robert", "allowed_models": ["poster"]},
    )
    assert r.status_code == 200, r.text
    assert r.json()["name"] == "robert" and r.json()["limits"]["rpm"] is None
    assert r.json()["limits"]["allowed_models"] == ["poster"]
    assert (await client.get("/v1/posts", headers=auth)).status_code == 200
    models = (await client.get("/v1/models", headers=auth)).json()["data"]
    assert [m["id"] for m in models] == ["poster"]
    # absent fields stay as they are
    r = await client.patch(f"/admin/api/keys/{created['id']}", json={"daily_image_quota": 5})
    assert r.json()["limits"]["allowed_models"] == ["poster"]
    assert r.json()["limits"]["daily_image_quota"] == 5

    r = await client.delete(f"/admin/api/keys/{created['id']}")
    assert r.status_code == 200 and r.json()["revoked"] is True
    assert_error(await client.get("/v1/posts", headers=auth), 401, "invalid_api_key")
    async with services.db.session() as session:
        assert (await session.get(ApiKey, created["id"])).revoked_at is not None


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "param"),
    [
        ("post", "/admin/api/keys", {}, 400, "name"),
        ("post", "/admin/api/keys", {"name": ""}, 400, "name"),
        ("post", "/admin/api/keys", {"name": "x", "rpm": 0}, 400, "rpm"),
        ("post", "/admin/api/keys", {"name": "x", "bogus": 1}, 400, "bogus"),
        ("post", "/admin/api/keys", {"name": "x", "expires_at": "soon"}, 400, "expires_at"),
        ("post", "/admin/api/keys", {"name": "x", "allowed_models": ["nope"]}, 400, None),
        ("patch", "/admin/api/keys/missing", {"rpm": 3}, 404, None),
        ("patch", "/admin/api/keys/missing", {"name": None}, 400, "name"),
        ("delete", "/admin/api/keys/missing", None, 404, None),
        ("get", "/admin/api/usage?status=6xx", None, 400, "status"),
        ("get", "/admin/api/usage?since=yesterday", None, 400, "since"),
    ],
)
async def test_admin_key_errors_are_openai_shaped(client, method, path, body, status, param):
    kwargs = {"json": body} if body is not None else {}
    r = await client.request(method.upper(), path, **kwargs)
    error = assert_error(r, status)
    if param is not None:
        assert error["param"] == param
    if "allowed_models" in (body or {}):
        assert error["param"] == "allowed_models" and "nope" in error["message"]


async def test_admin_api_needs_the_master_key_or_a_session(client, services) -> None:
    _, plaintext = await services.keys.create("user")
    auth = {"Authorization": f"Bearer {plaintext}"}
    for method, path in (
        ("GET", "/admin/api/keys"),
        ("POST", "/admin/api/keys"),
        ("PATCH", "/admin/api/keys/x"),
        ("DELETE", "/admin/api/keys/x"),
        ("GET", "/admin/api/usage"),
        ("GET", "/admin/api/stats"),
    ):
        r = await client.request(method, path, headers=auth, json={"name": "n"})
        assert_error(r, 403, "permission_denied")
        r = await client.request(method, path, headers={"Authorization": ""})
        assert_error(r, 401, "not_signed_in")


async def test_usage_is_paged_and_filtered(client, services) -> None:
    a = (await client.post("/admin/api/keys", json={"name": "a"})).json()
    b = (await client.post("/admin/api/keys", json={"name": "b"})).json()
    before = time.time()
    for key in (a, a, b):
        r = await client.post(
            "/v1/images/generations",
            json={"model": "poster", "prompt": f"p {time.time()}"},
            headers={"Authorization": f"Bearer {key['key']}"},
        )
        assert r.status_code == 200
    await client.post("/v1/images/generations", json={"model": "redink", "prompt": "x", "n": 2})
    await client.post("/v1/images/generations", json={"model": "nope", "prompt": "x"})  # 404
    await services.usage.flush()

    everything = (await client.get("/admin/api/usage")).json()
    assert everything["total"] == 5
    assert everything["data"][0]["status"] == 404  # newest first
    first = everything["data"][-1]
    assert set(first) == {
        "id", "created_at", "key_id", "key_name", "model", "method", "endpoint",
        "status", "latency_ms", "pages", "images", "post_id", "message",
    }  # fmt: skip
    assert datetime.fromisoformat(first["created_at"]).tzinfo == UTC

    def query(**params):
        return client.get("/admin/api/usage", params=params)

    r = (await query(key_id=a["id"])).json()
    assert r["total"] == 2 and {u["key_name"] for u in r["data"]} == {"a"}
    r = (await query(key_id="master")).json()
    assert r["total"] == 2 and {u["key_id"] for u in r["data"]} == {None}
    r = (await query(model="redink")).json()
    assert r["total"] == 1 and r["data"][0]["pages"] == 2 and r["data"][0]["post_id"]
    assert (await query(status="4xx")).json()["total"] == 1
    assert (await query(status="2xx")).json()["total"] == 4
    assert (await query(since=str(time.time() + 60))).json()["total"] == 0
    iso = datetime.fromtimestamp(before - 1, UTC).isoformat()
    assert (await query(since=iso)).json()["total"] == 5
    page2 = (await query(per_page=2, page=2)).json()
    assert page2["total"] == 5 and len(page2["data"]) == 2
    assert page2["data"][0]["id"] == everything["data"][2]["id"]


async def test_stats_counts_today(client, services) -> None:
    r = await client.post("/v1/images/generations", json={"model": "redink", "prompt": "x", "n": 2})
    assert r.status_code == 200
    await client.post("/v1/images/generations", json={"model": "nope", "prompt": "x"})
    await services.usage.flush()
    stats = (await client.get("/admin/api/stats")).json()
    assert stats["today"] == {
        "requests": 2,
        "posts": 1,
        "images": 2,
        "failures": 0,
        "client_errors": 1,
    }
    assert stats["storage"]["images"] == 2 and stats["storage"]["local"]["count"] >= 1
    assert {"name": "local", "type": "LocalProvider"} in stats["providers"]
    assert "poster" in stats["models"]
    # it is in the OpenAPI document
    paths = (await client.get("/openapi.json")).json()["paths"]
    assert {"/admin/api/keys", "/admin/api/keys/{key_id}", "/admin/api/usage"} <= set(paths)
    assert "/admin/api/stats" in paths
