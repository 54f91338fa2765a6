"""The vidsme provider: the signing scheme against a fake that verifies it, the job
lifecycle (polls, failure, deadline), code mapping, sizes, and one image through the gateway."""

from __future__ import annotations

import base64
import logging

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.padding import PKCS1v15

from gateway.errors import (
    ContentPolicyViolation,
    GatewayError,
    InvalidRequest,
    RateLimited,
    UpstreamError,
    UpstreamTimeout,
)
from providers.base import ImageRequest
from providers.registry import ProviderConfigError, build_provider
from providers.vidsme import (
    TASK_PATH,
    VidsmeOptions,
    VidsmeProvider,
    code_error,
    image_url,
    load_public_key,
    sign_query,
    size_for,
)
from tests.fakes.vidsme_upstream import (
    APP_ID,
    FAILED_MESSAGE,
    REFUSAL_MESSAGE,
    SALT,
    USER_ID,
    create_fake_vidsme,
    private_key,
    public_key_pem,
    verify_signature,
)

BASE = "http://vidsme.fake"


@pytest.fixture
def fake():
    return create_fake_vidsme(polls=3)


@pytest.fixture
async def http(fake):
    transport = httpx.ASGITransport(app=fake)
    async with httpx.AsyncClient(transport=transport) as client:
        yield client


@pytest.fixture
def make_provider(http):
    def make(**options) -> VidsmeProvider:
        options = {
            "base_url": BASE,
            "app_id": APP_ID,
            "salt": SALT,
            "public_key": public_key_pem(),
            "user_id": USER_ID,
            "poll_interval": 0.01,
            "deadline": 5,
            **options,
        }
        return VidsmeProvider("vid", VidsmeOptions(**options), http)

    return make


def task_calls(fake) -> list[dict]:
    return [r for r in fake.state.requests if r["path"] == TASK_PATH]


# --- signing ---------------------------------------------------------------------------


def test_signature_verifies_with_the_private_key(fake):
    query = sign_query(APP_ID, SALT, load_public_key(public_key_pem()))
    assert set(query) == {"app_id", "t", "nonce", "sign", "secret_key"}
    assert verify_signature(fake.state, query) is None
    assert verify_signature(fake.state, query) == "nonce used before"  # replay refused


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"salt": "another-salt"}, "sign does not match"),
        ({"app_id": "other-app"}, "unknown app_id"),
        ({"now": 1_000_000}, "outside the time window"),
    ],
)
def test_fake_rejects_wrong_signatures(fake, change, problem):
    args = {"app_id": APP_ID, "salt": SALT, **change}
    query = sign_query(
        args.pop("app_id"), args.pop("salt"), load_public_key(public_key_pem()), **args
    )
    assert problem in verify_signature(fake.state, query)


def test_fake_rejects_tampered_fields(fake):
    key = load_public_key(public_key_pem())
    query = sign_query(APP_ID, SALT, key)
    assert "does not match" in verify_signature(
        fake.state, {**query, "t": str(int(query["t"]) + 1)}
    )
    forged = base64.b64encode(b"\x00" * 32).decode()
    assert "decrypt" in verify_signature(fake.state, {**query, "sign": forged})


def test_random_key_is_fresh_per_request():
    key = load_public_key(public_key_pem())
    a, b = sign_query(APP_ID, SALT, key), sign_query(APP_ID, SALT, key)
    assert a["secret_key"] != b["secret_key"] and a["nonce"] != b["nonce"]


# --- sizes and URLs --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ratio", "size", "expected"),
    [
        ("1:1", None, (512, 512)),
        ("3:2", None, (768, 512)),
        ("2:3", None, (512, 768)),
        ("3:4", None, (512, 768)),
        ("9:16", None, (512, 768)),
        ("16:9", None, (768, 512)),
        ("6:5", None, (512, 512)),  # log-ratio: nearer 1:1 than 3:2
        ("5:4", None, (768, 512)),  # ... and this one nearer 3:2
        ("3:4", "1536x1024", (768, 512)),
    ],
)
def test_size_for(ratio, size, expected):
    assert size_for(ratio, size) == expected


def test_nearest_size_is_logged(caplog):
    with caplog.at_level(logging.INFO, logger="inkgate.providers.vidsme"):
        size_for("3:4")
    assert "nearest size 512x768" in caplog.text
    with pytest.raises(InvalidRequest):
        size_for("tall")


def test_image_url_joins_relative_urls():
    assert image_url("http://img.fake", "/a/b.png") == "http://img.fake/a/b.png"
    assert image_url("http://img.fake", "a/b.png") == "http://img.fake/a/b.png"
    assert image_url("http://img.fake", "https://cdn.x/b.png") == "https://cdn.x/b.png"
    assert image_url("https://img.fake", "//cdn.x/b.png") == "https://cdn.x/b.png"


# --- the job lifecycle -----------------------------------------------------------------


async def test_happy_path_submit_polls_download(fake, make_provider):
    provider = make_provider()
    images = await provider.generate(ImageRequest(prompt="a fox in snow", aspect_ratio="2:3"))
    assert len(images) == 1
    assert images[0].data == fake.state.png and images[0].mime == "image/png"
    calls = task_calls(fake)
    assert [c["method"] for c in calls] == ["POST", "GET", "GET", "GET"]  # 3 polls
    assert all(c["verified"] for c in calls), [c["problem"] for c in calls]
    assert calls[0]["json"] == {
        "prompt": "a fox in snow",
        "model": "anime",
        "user_id": USER_ID,
        "height": 768,
        "width": 512,
    }
    job_id = next(iter(fake.state.jobs))
    assert all(c["query"]["job_id"] == job_id for c in calls[1:])
    assert all(c["query"]["user_id"] == USER_ID for c in calls[1:])
    assert len({c["query"]["nonce"] for c in calls}) == 4
    assert fake.state.requests[-1]["path"] == f"/images/{job_id}.png"


async def test_model_choice_and_n(fake, make_provider):
    provider = make_provider(image_model="realistic")
    assert provider.configured_models() == {"image": "realistic"}
    images = await provider.generate(ImageRequest(prompt="x", aspect_ratio="1:1", n=2))
    assert len(images) == 2
    assert {job["model"] for job in fake.state.jobs.values()} == {"realistic"}
    with pytest.raises(InvalidRequest, match="not 'flux'"):
        await provider.generate(ImageRequest(prompt="x", model="flux"))


async def test_absolute_generate_url_and_image_base_url(fake, make_provider):
    fake.state.absolute_urls = True
    images = await make_provider().generate(ImageRequest(prompt="x", aspect_ratio="1:1"))
    assert images[0].data == fake.state.png
    fake.state.absolute_urls = False
    await make_provider(image_base_url="http://img.fake/").generate(ImageRequest(prompt="y"))
    # the fake answers every host; the download went to the image base
    assert fake.state.requests[-1]["path"].startswith("/images/")


async def test_wrong_salt_is_rejected_by_the_fake(fake, make_provider):
    provider = make_provider(salt="not-the-salt-9876")
    with pytest.raises(UpstreamError) as info:
        await provider.generate(ImageRequest(prompt="x"))
    err = info.value
    assert err.code == "upstream_auth_failed" and err.status == 502 and not err.retryable
    assert "invalid signature: sign does not match the query" in err.message
    assert "not-the-salt-9876" not in err.message
    assert task_calls(fake)[0]["verified"] is False and not fake.state.jobs


async def test_wrong_public_key_is_rejected(fake, make_provider):
    from cryptography.hazmat.primitives.asymmetric import rsa

    other = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    with pytest.raises(UpstreamError, match="secret_key does not decrypt"):
        await make_provider(public_key=public_key_pem(other)).generate(ImageRequest(prompt="x"))


async def test_failed_job(fake, make_provider):
    fake.state.outcome = "failed"
    with pytest.raises(UpstreamError) as info:
        await make_provider().generate(ImageRequest(prompt="x"))
    assert info.value.code == "upstream_job_failed" and not info.value.retryable
    assert FAILED_MESSAGE in info.value.message


async def test_refused_job_is_a_content_policy_violation(fake, make_provider):
    fake.state.outcome = "refused"
    with pytest.raises(ContentPolicyViolation, match="nsfw"):
        await make_provider().generate(ImageRequest(prompt="x"))
    assert REFUSAL_MESSAGE
    fake.state.content_policy = True  # refused at submit
    with pytest.raises(ContentPolicyViolation, match="sensitive words"):
        await make_provider().generate(ImageRequest(prompt="x"))


async def test_job_that_never_finishes_hits_the_deadline(fake, make_provider):
    fake.state.outcome = "never"
    with pytest.raises(UpstreamTimeout) as info:
        await make_provider(poll_interval=0.01, deadline=0.1).generate(ImageRequest(prompt="x"))
    assert info.value.code == "upstream_job_timeout" and info.value.status == 504
    assert not info.value.retryable and "0.1 s" in info.value.message
    assert len(task_calls(fake)) >= 3


async def test_transient_poll_errors_are_tolerated(fake, make_provider):
    fake.state.fail_next_poll = [(500, "busy"), (429, "too many requests")]
    images = await make_provider().generate(ImageRequest(prompt="x"))
    assert images and len([c for c in task_calls(fake) if c["method"] == "GET"]) == 5


@pytest.mark.parametrize(
    ("code", "msg", "kind", "status", "retryable"),
    [
        (401, "app not authorized", UpstreamError, 502, False),
        (403, "forbidden", UpstreamError, 502, False),
        (429, "slow down", RateLimited, 429, True),
        (1005, "request too frequent", RateLimited, 429, True),
        (400, "prompt contains sensitive words", ContentPolicyViolation, 400, False),
        (500, "internal error", UpstreamError, 502, True),
        (1002, "insufficient credits", UpstreamError, 502, False),
    ],
)
async def test_submit_codes_are_mapped(fake, make_provider, code, msg, kind, status, retryable):
    fake.state.fail_next_submit = [(code, msg)]
    with pytest.raises(kind) as info:
        await make_provider().generate(ImageRequest(prompt="x"))
    assert info.value.status == status and info.value.retryable is retryable
    assert msg in info.value.message


def test_code_error_auth_code():
    err = code_error("vid", 401, "bad app")
    assert err.code == "upstream_auth_failed" and "bad app" in err.message


async def test_http_errors_are_mapped(make_provider):
    def refuse(request: httpx.Request) -> httpx.Response:
        return httpx.Response(503, text="down")

    async with httpx.AsyncClient(transport=httpx.MockTransport(refuse)) as client:
        provider = make_provider()
        provider.http = client
        with pytest.raises(UpstreamError, match=r"failed \(503\)") as info:
            await provider.generate(ImageRequest(prompt="x"))
    assert info.value.retryable


async def test_download_is_retried_then_checked(fake, make_provider):
    fake.state.fail_next_download = [503, 502]
    images = await make_provider().generate(ImageRequest(prompt="x"))
    assert images[0].data == fake.state.png
    downloads = [r for r in fake.state.requests if r["path"].startswith("/images/")]
    assert len(downloads) == 3

    fake.state.fail_next_download = [503, 503, 503]
    with pytest.raises(UpstreamError, match="503"):
        await make_provider().generate(ImageRequest(prompt="x"))

    fake.state.image_content_type = "text/html"
    with pytest.raises(UpstreamError, match="served text/html, not an image"):
        await make_provider().generate(ImageRequest(prompt="x"))

    fake.state.image_content_type = "image/png"
    with pytest.raises(UpstreamError, match="larger than the limit"):
        await make_provider(max_download_bytes=10).generate(ImageRequest(prompt="x"))


async def test_no_secret_in_any_error(fake, make_provider, caplog):
    """The salt and the per-request key (nor the sign / secret_key built from it) never
    reach a client message or the log, whatever the upstream echoes."""
    caplog.set_level(logging.DEBUG)
    seen: list[dict] = []

    def echo(request: httpx.Request) -> httpx.Response:
        query = dict(request.url.params)
        seen.append(query)
        return httpx.Response(
            200, json={"code": 500, "msg": f"bad {query['sign']} {query['secret_key']} {SALT}"}
        )

    async with httpx.AsyncClient(transport=httpx.MockTransport(echo)) as client:
        provider = make_provider()
        provider.http = client
        with pytest.raises(GatewayError) as info:
            await provider.generate(ImageRequest(prompt="x"))
    message = info.value.message
    assert SALT not in message and seen[0]["sign"] not in message
    assert seen[0]["secret_key"] not in message and "[redacted]" in message
    random_key = private_key().decrypt(base64.b64decode(seen[0]["secret_key"]), PKCS1v15()).decode()
    assert len(random_key) == 16 and random_key not in message
    assert SALT not in caplog.text and random_key not in caplog.text


def test_options_are_checked(http):
    good = {
        "base_url": BASE,
        "app_id": APP_ID,
        "salt": SALT,
        "public_key": public_key_pem().replace("\n", "\\n"),  # as an env var may carry it
        "user_id": USER_ID,
    }
    provider = build_provider("vid", "vidsme", good, http)
    assert isinstance(provider, VidsmeProvider)
    assert provider.options.models == ["anime", "realistic"]
    assert (provider.options.poll_interval, provider.options.deadline) == (3.0, 240.0)
    with pytest.raises(ProviderConfigError, match="public_key"):
        build_provider("vid", "vidsme", {**good, "public_key": "nope"}, http)
    with pytest.raises(ProviderConfigError, match="image_model"):
        build_provider("vid", "vidsme", {**good, "image_model": "flux"}, http)
    with pytest.raises(ProviderConfigError, match="salt"):
        build_provider("vid", "vidsme", {k: v for k, v in good.items() if k != "salt"}, http)
    assert SALT not in repr(provider.options)


# --- through the gateway ---------------------------------------------------------------


async def test_images_api_through_the_gateway(settings, fake, monkeypatch):
    from gateway.app import create_app
    from tests.conftest import MASTER_KEY

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    (settings.data_dir / "inkgate.yaml").write_text(
        "providers:\n"
        "  vid:\n"
        "    type: vidsme\n"
        f"    base_url: {BASE}\n"
        f"    app_id: {APP_ID}\n"
        "    salt: ${VIDSME_SALT}\n"
        "    public_key: ${VIDSME_PUBLIC_KEY}\n"
        f"    user_id: {USER_ID}\n"
        "    poll_interval: 0.01\n"
        "models:\n"
        "  anime-art:\n"
        "    type: image\n"
        "    provider: vid\n"
        "    model: anime\n",
        encoding="utf-8",
    )
    monkeypatch.setenv("VIDSME_SALT", SALT)
    monkeypatch.setenv("VIDSME_PUBLIC_KEY", public_key_pem())
    real_client = httpx.AsyncClient

    def to_fake(*args, **kwargs):
        kwargs["transport"] = httpx.ASGITransport(app=fake)
        return real_client(*args, **kwargs)

    monkeypatch.setattr("gateway.app.httpx.AsyncClient", to_fake)
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        async with real_client(
            transport=httpx.ASGITransport(app=application),
            base_url="http://t",
            headers={"Authorization": f"Bearer {MASTER_KEY}"},
        ) as c:
            r = await c.post(
                "/v1/images/generations",
                json={
                    "model": "anime-art",
                    "prompt": "a lantern festival",
                    "size": "1536x1024",
                    "response_format": "b64_json",
                },
                timeout=30,
            )
    assert r.status_code == 200, r.text
    assert base64.b64decode(r.json()["data"][0]["b64_json"]) == fake.state.png
    calls = task_calls(fake)
    assert calls and all(c["verified"] for c in calls)
    assert calls[0]["json"]["model"] == "anime"
    assert (calls[0]["json"]["width"], calls[0]["json"]["height"]) == (768, 512)
