from __future__ import annotations

import hashlib

import httpx
import pytest
from sqlmodel import select

from gateway.auth import KEY_PREFIX, KeyService
from storage.tables import ApiKey
from tests.conftest import MASTER_KEY


async def test_keys_are_stored_hashed_with_a_visible_prefix(services) -> None:
    row, plaintext = await services.keys.create("team")
    assert plaintext.startswith(KEY_PREFIX) and len(plaintext) > 40
    async with services.db.session() as session:
        stored = (await session.exec(select(ApiKey).where(ApiKey.id == row.id))).one()
    assert stored.key_hash == hashlib.sha256(plaintext.encode()).hexdigest()
    assert plaintext not in (stored.key_hash, stored.prefix, stored.name)
    assert plaintext.startswith(stored.prefix)
    assert stored.created_at is not None and stored.revoked_at is None


async def test_stored_key_works_and_records_last_use(client: httpx.AsyncClient, services) -> None:
    row, plaintext = await services.keys.create("team")
    r = await client.get("/v1/models", headers={"Authorization": f"Bearer {plaintext}"})
    assert r.status_code == 200
    async with services.db.session() as session:
        assert (await session.get(ApiKey, row.id)).last_used_at is not None


@pytest.mark.parametrize(
    "header",
    [None, "", "Bearer", "Bearer sk-ink-wrong", "Basic abc", f"Bearer {MASTER_KEY}x"],
)
async def test_missing_or_wrong_key_is_401_openai_shape(client: httpx.AsyncClient, header) -> None:
    headers = {"Authorization": header} if header is not None else {}
    r = await client.get("/v1/models", headers=headers)
    if header is None:  # the client fixture's default header is the master key
        r = await client.get("/v1/models", headers={"Authorization": ""})
    assert r.status_code == 401
    body = r.json()
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["code"] == "invalid_api_key"
    presented = (header or "").partition(" ")[2]
    if presented:
        assert presented not in body["error"]["message"]


async def test_revoked_key_is_rejected(client: httpx.AsyncClient, services) -> None:
    row, plaintext = await services.keys.create("gone")
    auth = {"Authorization": f"Bearer {plaintext}"}
    assert (await client.get("/v1/models", headers=auth)).status_code == 200
    await services.keys.revoke(row.id)
    r = await client.get("/v1/models", headers=auth)
    assert r.status_code == 401


@pytest.mark.parametrize(
    "path",
    ["/v1/models", "/v1/models/redink", "/v1/chat/completions", "/v1/images/generations"],
)
async def test_every_v1_route_needs_a_key(client: httpx.AsyncClient, path: str) -> None:
    method = client.get if "models" in path else client.post
    kwargs = {} if "models" in path else {"json": {}}
    r = await method(path, headers={"Authorization": ""}, **kwargs)
    assert r.status_code == 401


async def test_master_key_is_accepted(client: httpx.AsyncClient) -> None:
    r = await client.get("/v1/models", headers={"Authorization": f"Bearer {MASTER_KEY}"})
    assert r.status_code == 200


async def test_key_service_lists_and_revokes(services) -> None:
    keys: KeyService = services.keys
    a, _ = await keys.create("a")
    await keys.create("b")
    assert [k.name for k in await keys.list()] == ["a", "b"]
    await keys.revoke(a.id)
    assert (await keys.list())[0].revoked_at is not None
    with pytest.raises(ValueError):
        await keys.create("   ")
