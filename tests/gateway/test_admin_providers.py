"""`/admin/api/providers` and `/admin/api/models`: saved in the database, layered over
`inkgate.yaml`, live on every replica, secrets never shown."""

from __future__ import annotations

import asyncio
import dataclasses
import logging

import httpx
import pytest
from sqlalchemy import select
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

from gateway.app import create_app
from gateway.secrets_box import (
    MASK,
    SecretBox,
    SecretUnreadable,
    mask,
    merge_options,
    scrub,
    secret_fields,
    secret_paths,
)
from providers.registry import provider_types
from storage.config_tables import ProviderConfigRow
from tests.conftest import MASTER_KEY
from tests.fakes.openai_upstream import create_fake_openai
from tests.fakes.vidsme_upstream import public_key_pem

SECRET = "sk-abcdefghijklmnopqrstuvwxyz-9f3c"  # fake; the fake upstream accepts only it
SHOWN = "sk-a…9f3c"
CONFIG = (
    "providers:\n"
    "  filed:\n"
    "    type: openai\n"
    "    base_url: http://fake/v1\n"
    "    api_key: sk-file-secret-0123456789abcdef\n"
    "models:\n"
    "  filed-poster: {type: image, provider: filed}\n"
)
RELAY = {"type": "openai", "options": {"base_url": "http://fake/v1", "api_key": SECRET}}


@pytest.fixture
def settings(settings):
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    settings.config_path.write_text(CONFIG)
    return settings


@pytest.fixture
def upstream():
    return create_fake_openai(api_key=SECRET, outline_pages=2)


def _to(upstream, monkeypatch):
    real = httpx.AsyncClient

    def to_fake(*args, **kwargs):  # the gateway's upstream client talks to the fake
        kwargs["transport"] = httpx.ASGITransport(app=upstream)
        return real(*args, **kwargs)

    monkeypatch.setattr(httpx, "AsyncClient", to_fake)
    return real


@pytest.fixture
async def app(settings, upstream, monkeypatch):
    real = _to(upstream, monkeypatch)
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        monkeypatch.setattr(httpx, "AsyncClient", real)  # the test's own clients are real
        yield application


@pytest.fixture(autouse=True)
def _all_logs(caplog):
    caplog.set_level(logging.DEBUG)


def assert_error(r, status: int, code: str | None = None, param: str | None = None) -> dict:
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    if code is not None:
        assert error["code"] == code, error
    if param is not None:
        assert error["param"] == param, error
    return error


def _by_name(answer: httpx.Response, name: str) -> dict:
    [entry] = [e for e in answer.json()["data"] if e["name"] == name]
    return entry


async def _row(services, name: str) -> ProviderConfigRow:
    async with services.db.engine.connect() as conn:
        t = ProviderConfigRow.__table__
        return (await conn.execute(select(t).where(t.c.name == name))).one()


# -- secrets: stored encrypted, shown masked, kept when sent blank ----------------------


async def test_a_secret_is_encrypted_masked_and_never_answered(
    app, client, services, caplog
) -> None:
    answers = []
    r = await client.post("/admin/api/providers", json={"name": "relay", **RELAY})
    answers.append(r)
    assert r.status_code == 201, r.text
    created = r.json()
    assert created["source"] == "database" and created["editable"] and created["active"]
    assert created["options"]["api_key"] == SHOWN
    assert created["secret_fields"] == ["api_key"] and created["capabilities"] == ["text", "image"]

    row = await _row(services, "relay")
    assert SECRET not in row.options and '"fernet"' in row.options

    # blank, absent and masked all keep the stored secret
    for options in ({"api_key": "", "text_model": "m1"}, {"text_model": "m2"}, {"api_key": SHOWN}):
        r = await client.patch("/admin/api/providers/relay", json={"options": options})
        answers.append(r)
        assert r.status_code == 200, r.text
        assert r.json()["options"]["api_key"] == SHOWN
    assert r.json()["options"]["text_model"] == "m2"
    stored = (await app.state.config_source.store.read()).providers["relay"]
    assert stored.options["api_key"] == SECRET

    answers += [
        await client.get("/admin/api/providers"),
        await client.post("/admin/api/providers/relay/test"),
        await client.post(
            "/admin/api/providers/test",
            json={"name": "relay", "type": "openai", "options": {"api_key": ""}},
        ),
        await client.post("/admin/api/providers", json={"name": "relay", **RELAY}),  # 409
        await client.patch(
            "/admin/api/providers/relay", json={"options": {"base_url": "ftp://nope"}}
        ),  # 400
        await client.post(
            "/admin/api/providers",
            json={"name": "bad", "type": "openai", "options": {"api_key": SECRET, "x": 1}},
        ),  # 400
        await client.get("/admin/api/models"),
        await client.get("/admin/api/stats"),
    ]
    assert [a.status_code for a in answers[-8:]] == [200, 200, 200, 409, 400, 400, 200, 200]
    assert answers[-7].json()["ok"] and answers[-6].json()["ok"]
    for answer in answers:
        assert SECRET not in answer.text, answer.request.url
    assert SECRET not in caplog.text

    # a new secret replaces it; null removes it
    r = await client.patch(
        "/admin/api/providers/relay",
        json={"options": {"api_key": "sk-other-0123456789abcdef-1234"}},
    )
    assert r.json()["options"]["api_key"] == "sk-o…1234"
    r = await client.patch("/admin/api/providers/relay", json={"options": {"api_key": None}})
    assert "api_key" not in r.json()["options"]


async def test_env_references_are_kept_as_written(client, services, monkeypatch) -> None:
    monkeypatch.setenv("RELAY_TEST_KEY", SECRET)
    body = {"name": "relay", "type": "openai",
            "options": {"base_url": "http://fake/v1", "api_key": "${RELAY_TEST_KEY}"}}  # fmt: skip
    r = await client.post("/admin/api/providers", json=body)
    assert r.status_code == 201, r.text
    assert r.json()["options"]["api_key"] == "${RELAY_TEST_KEY}"
    assert "${RELAY_TEST_KEY}" in (await _row(services, "relay")).options
    r = await client.post("/admin/api/providers/relay/test")
    assert r.json()["ok"], r.text  # the variable's value reached the upstream
    assert SECRET not in r.text

    body["name"], body["options"]["api_key"] = "other", "${NOT_SET_ANYWHERE}"
    error = assert_error(await client.post("/admin/api/providers", json=body), 400)
    assert error["param"] == "options.api_key" and "NOT_SET_ANYWHERE" in error["message"]


async def test_header_secrets_are_masked_and_kept(app, client, services) -> None:
    token = "Bearer relay-header-secret-0123456789"
    body = {"name": "h", "type": "openai",
            "options": {"extra_headers": {"X-Api-Key": token, "X-Team": "blue"}}}  # fmt: skip
    r = await client.post("/admin/api/providers", json=body)
    assert r.status_code == 201, r.text
    assert r.json()["options"]["extra_headers"] == {"X-Api-Key": "Bear…6789", "X-Team": "blue"}
    assert r.json()["secret_fields"] == ["extra_headers.X-Api-Key"]
    assert token not in (await _row(services, "h")).options
    r = await client.patch(
        "/admin/api/providers/h",
        json={"options": {"extra_headers": {"X-Api-Key": "Bear…6789", "X-Team": "red"}}},
    )
    assert token not in r.text
    saved = (await app.state.config_source.store.read()).providers["h"]
    assert saved.options["extra_headers"] == {"X-Api-Key": token, "X-Team": "red"}


# -- validation --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "status", "code", "param"),
    [
        ({"name": "x", "type": "openai", "options": {"base_url": "ftp://x"}}, 400, None,
         "options.base_url"),
        ({"name": "x", "type": "openai", "options": {"nope": 1}}, 400, None, "options.nope"),
        ({"name": "x", "type": "openai", "options": {"temperature": 9}}, 400, None,
         "options.temperature"),
        ({"name": "x", "type": "vidsme", "options": {"base_url": "http://v", "app_id": "a",
          "salt": "s", "public_key": "not a pem", "user_id": "u"}}, 400, None,
         "options.public_key"),
        ({"name": "x", "type": "warp-drive"}, 400, None, "type"),
        ({"name": "bad name!", "type": "local"}, 400, None, "name"),
        ({"name": "x" * 65, "type": "local"}, 400, None, "name"),
        ({"name": "x", "type": "local", "max_concurrency": 0}, 400, None, "max_concurrency"),
        ({"name": "x", "type": "local", "bogus": 1}, 400, "unknown_parameter", "bogus"),
    ],
)  # fmt: skip
async def test_bad_provider_writes_are_400_naming_the_field(client, body, status, code, param):
    r = await client.post("/admin/api/providers", json=body)
    assert_error(r, status, code, param)
    listed = await client.get("/admin/api/providers")
    assert "x" not in [p["name"] for p in listed.json()["data"]]


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "code"),
    [
        ("patch", "/admin/api/providers/missing", {"options": {}}, 404, "provider_not_found"),
        ("delete", "/admin/api/providers/missing", None, 404, "provider_not_found"),
        ("patch", "/admin/api/providers/filed", {"options": {}}, 409, "not_editable"),
        ("delete", "/admin/api/providers/local", None, 409, "not_editable"),
        ("post", "/admin/api/providers/missing/test", None, 404, "provider_not_found"),
        ("delete", "/admin/api/models/missing", None, 404, "model_not_found"),
        ("delete", "/admin/api/models/filed-poster", None, 409, "not_editable"),
        ("put", "/admin/api/models/p", {"provider": "local"}, 400, None),
        ("put", "/admin/api/models/p", {"type": "image", "provider": "nowhere"}, 400, None),
        ("put", "/admin/api/models/p", {"type": "video", "provider": "local"}, 400, None),
        ("put", "/admin/api/models/redink", {"concurrency": 999}, 400, None),
        ("put", "/admin/api/models/redink", {"text_provider": "filed-x"}, 400, None),
        ("put", "/admin/api/models/bad%20name", {"type": "image", "provider": "local"}, 400, None),
    ],
)
async def test_errors_are_openai_shaped(client, method, path, body, status, code) -> None:
    kwargs = {"json": body} if body is not None else {}
    error = assert_error(await client.request(method.upper(), path, **kwargs), status, code)
    if path.endswith("/redink") and "concurrency" in body:
        assert error["param"] == "concurrency"
    if "nowhere" in str(body):
        assert error["param"] == "provider" and "nowhere" in error["message"]
    if "filed-x" in str(body):
        assert error["param"] == "text_provider"


async def test_deleting_a_provider_in_use_is_409(client) -> None:
    assert (await client.post("/admin/api/providers", json={"name": "relay", **RELAY})).is_success
    r = await client.put("/admin/api/models/poster", json={"type": "image", "provider": "relay"})
    assert r.status_code == 200, r.text
    r = await client.put(
        "/admin/api/models/redink", json={"type": "redink", "text_provider": "relay"}
    )
    assert r.status_code == 200, r.text
    error = assert_error(await client.delete("/admin/api/providers/relay"), 409, "provider_in_use")
    assert "'poster' (image)" in error["message"] and "'redink' (text)" in error["message"]
    # nor may it become a type that cannot write the outline
    vidsme = {"base_url": "http://v", "app_id": "a", "salt": "s", "public_key": public_key_pem(),
              "user_id": "u", "api_key": None}  # fmt: skip
    r = await client.patch("/admin/api/providers/relay", json={"type": "vidsme", "options": vidsme})
    error = assert_error(r, 409, "provider_in_use")
    assert "'redink' (text)" in error["message"] and "'poster'" not in error["message"]
    assert (await client.delete("/admin/api/models/poster")).status_code == 200
    assert (await client.delete("/admin/api/models/redink")).status_code == 200
    r = await client.delete("/admin/api/providers/relay")
    assert r.status_code == 200 and r.json()["deleted"] and r.json()["now"] is None


async def test_a_saved_provider_overrides_the_file_one_until_deleted(client) -> None:
    listed = await client.get("/admin/api/providers")
    filed = _by_name(listed, "filed")
    assert filed["source"] == "file" and not filed["editable"]
    assert filed["options"]["api_key"] == "sk-f…cdef" and filed["used_by"] == ["filed-poster"]
    assert _by_name(listed, "local")["source"] == "builtin"
    types = {t["type"]: t for t in listed.json()["types"]}
    assert types["openai"]["secret_fields"] == ["api_key"]
    assert "base_url" in types["openai"]["options_schema"]["properties"]
    assert types["vidsme"]["secret_fields"] == ["salt"]

    r = await client.post("/admin/api/providers", json={"name": "filed", **RELAY})
    assert r.status_code == 201, r.text
    assert r.json()["source"] == "database" and r.json()["overrides"] == "file"
    r = await client.post("/admin/api/providers/filed/test")
    assert r.json()["ok"], r.text  # the saved key, which the fake accepts

    r = await client.delete("/admin/api/providers/filed")
    assert r.status_code == 200, r.text
    assert r.json()["now"]["source"] == "file"
    r = await client.post("/admin/api/providers/filed/test")
    assert not r.json()["ok"] and "bad key" in r.text  # the file's key again


# -- models ------------------------------------------------------------------------------


async def test_the_redink_model_is_edited_and_stored(client, services) -> None:
    models = await client.get("/admin/api/models")
    redink = _by_name(models, "redink")
    assert redink["source"] == "builtin" and redink["aliases"] == ["redink-plan"]
    assert redink["definition"]["text_provider"] == "local"
    assert "concurrency" in models.json()["schemas"]["redink"]["properties"]
    assert _by_name(models, "filed-poster")["source"] == "file"

    assert (await client.post("/admin/api/providers", json={"name": "relay", **RELAY})).is_success
    r = await client.put(
        "/admin/api/models/redink",
        json={"type": "redink", "text_provider": "relay", "text_model": "gpt-4o-mini",
              "image_provider": "relay", "image_model": "gpt-image-1", "concurrency": 3,
              "aspect_ratio": "3:4", "short_prompt": True, "image_size": "1024x1536"},
    )  # fmt: skip
    assert r.status_code == 200, r.text
    assert r.json()["source"] == "database" and r.json()["editable"]
    model = services.config().post_models["redink"]
    assert (model.text_provider, model.image_provider, model.concurrency) == ("relay", "relay", 3)
    assert model.short_prompt and model.image_size == "1024x1536"
    listed = await client.get("/admin/api/providers")
    assert _by_name(listed, "relay")["used_by"] == ["redink"]
    # without a type, a PUT keeps the model's kind
    r = await client.put("/admin/api/models/redink", json={"concurrency": 5})
    assert r.status_code == 200 and r.json()["definition"]["concurrency"] == 5
    assert services.config().post_models["redink"].text_provider == "local"  # a whole definition

    assert (await client.delete("/admin/api/models/redink")).json()["now"]["source"] == "builtin"


async def test_a_saved_model_is_served_on_v1(client, services) -> None:
    r = await client.put("/admin/api/models/sketch", json={"type": "image", "provider": "local"})
    assert r.status_code == 200, r.text
    ids = [m["id"] for m in (await client.get("/v1/models")).json()["data"]]
    assert "sketch" in ids
    r = await client.post(
        "/v1/images/generations", json={"model": "sketch", "prompt": "a fox"}, timeout=60
    )
    assert r.status_code == 200, r.text
    assert r.json()["data"][0]["url"]


# -- every replica ---------------------------------------------------------------------------


async def test_a_change_through_one_app_is_live_in_another(settings, upstream, monkeypatch):
    settings = dataclasses.replace(settings, config_reload_seconds=0.1)
    real = _to(upstream, monkeypatch)
    a, b = create_app(settings), create_app(settings)
    async with a.router.lifespan_context(a), b.router.lifespan_context(b):
        monkeypatch.setattr(httpx, "AsyncClient", real)
        auth = {"Authorization": f"Bearer {MASTER_KEY}"}
        async with (
            real(transport=httpx.ASGITransport(app=a), base_url="http://a", headers=auth) as ca,
            real(transport=httpx.ASGITransport(app=b), base_url="http://b", headers=auth) as cb,
        ):
            assert (
                await ca.post("/admin/api/providers", json={"name": "relay", **RELAY})
            ).is_success
            r = await ca.put(
                "/admin/api/models/poster", json={"type": "image", "provider": "relay"}
            )
            assert r.status_code == 200, r.text
            for _ in range(50):  # b's watcher notices the revision within a tick or two
                ids = [m["id"] for m in (await cb.get("/v1/models")).json()["data"]]
                if "poster" in ids:
                    break
                await asyncio.sleep(0.05)
            assert "poster" in ids
            relay = _by_name(await cb.get("/admin/api/providers"), "relay")
            assert relay["options"]["api_key"] == SHOWN and relay["active"]
            r = await cb.post("/v1/images/generations", json={"model": "poster", "prompt": "x"})
            assert r.status_code == 200, r.text  # b decrypted the key a saved
            assert (await ca.delete("/admin/api/models/poster")).status_code == 200
            assert await b.state.config_source.reload_if_changed()
            assert "poster" not in b.state.services.config().image_models


async def test_a_secret_this_process_cannot_decrypt_does_not_stop_it(settings, monkeypatch):
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        store = app.state.config_source.store
        await store.save_provider("relay", "openai", {"api_key": SECRET}, None)
        await store.save_model("poster", {"type": "image", "provider": "relay"})
    other = create_app(dataclasses.replace(settings, secret_key="a-different-secret"))
    async with other.router.lifespan_context(other):
        source = other.state.config_source
        assert "relay" not in source.current.providers
        assert "decrypted" in source.problems.providers["relay"]
        assert "poster" in source.problems.models
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=other),
            base_url="http://t",
            headers={"Authorization": f"Bearer {MASTER_KEY}"},
        ) as c:
            relay = _by_name(await c.get("/admin/api/providers"), "relay")
            assert not relay["active"] and "INKGATE_SECRET_KEY" in relay["problem"]
            # entering the secret again fixes it
            r = await c.patch("/admin/api/providers/relay", json={"options": {"api_key": SECRET}})
            assert r.status_code == 200 and r.json()["active"], r.text
            assert "poster" in other.state.services.config().image_models


async def test_every_write_moves_the_revision(app) -> None:
    store = app.state.config_source.store
    first = int(await store.revision())
    await store.save_provider("p", "local", {}, None)
    await store.save_model("m", {"type": "image", "provider": "p"})
    assert await store.delete_model("m") and await store.delete_provider("p")
    assert not await store.delete_provider("p")  # nothing deleted: no bump
    assert int(await store.revision()) == first + 4


# -- the secret rules --------------------------------------------------------------------


def test_mask() -> None:
    assert mask(SECRET) == SHOWN
    assert mask("short-secret") == MASK
    assert mask("${RELAY_KEY}") == "${RELAY_KEY}"
    assert mask("") == "" and mask(None) is None
    assert scrub(f"key {SECRET} refused", [SECRET, "${X}", "ab"]) == f"key {SHOWN} refused"


def test_secret_fields_by_type() -> None:
    types = provider_types()
    assert secret_fields(types["openai"]) == ("api_key",)
    assert secret_fields(types["gemini"]) == ("api_key",)  # not max_output_tokens
    assert secret_fields(types["vidsme"]) == ("salt",)  # not public_key
    assert secret_fields(types["local"]) == ()
    paths = secret_paths(
        types["openai"],
        {"api_key": "k", "extra_headers": {"Authorization": "b", "Cookie": "c", "X-Org": "o"}},
    )
    assert paths == [("api_key",), ("extra_headers", "Authorization"), ("extra_headers", "Cookie")]


def test_merge_keeps_secrets_sent_blank_or_masked() -> None:
    cls = provider_types()["openai"]
    stored = {"api_key": SECRET, "text_model": "a", "quality": "hd"}
    assert merge_options(cls, stored, {"api_key": "", "text_model": "b", "quality": None}) == {
        "api_key": SECRET,
        "text_model": "b",
    }
    assert merge_options(cls, stored, {"api_key": SHOWN})["api_key"] == SECRET
    assert merge_options(cls, stored, {"api_key": MASK})["api_key"] == SECRET
    assert merge_options(cls, stored, {"api_key": "sk-new"})["api_key"] == "sk-new"
    assert "api_key" not in merge_options(cls, {}, {"api_key": ""})


def test_box_round_trip_and_wrong_key() -> None:
    box = SecretBox(b"one")
    sealed = box.seal({"api_key": SECRET, "base_url": "u", "other": "${X}"}, [("api_key",)])
    assert SECRET not in str(sealed) and sealed["other"] == "${X}"
    assert box.open(sealed) == ({"api_key": SECRET, "base_url": "u", "other": "${X}"}, {})
    options, problems = SecretBox(b"two").open(sealed)
    assert "api_key" not in options and "api_key" in problems
    with pytest.raises(SecretUnreadable):
        SecretBox(b"two").decrypt(sealed["api_key"])


async def _quote_the_key(request):
    key = request.headers.get("authorization", "")
    return JSONResponse({"error": {"message": f"Incorrect API key {key}"}}, status_code=401)


@pytest.mark.parametrize(
    "upstream", [Starlette(routes=[Route("/v1/{path:path}", _quote_the_key, methods=["GET"])])]
)
async def test_an_upstream_quoting_the_key_is_scrubbed(client, upstream, caplog) -> None:
    r = await client.post(
        "/admin/api/providers/test",
        json={"type": "openai", "options": {"base_url": "http://echo/v1", "api_key": SECRET}},
    )
    assert r.status_code == 200, r.text
    assert not r.json()["ok"] and "bad key" in r.text
    assert SECRET not in r.text and SECRET not in caplog.text
