"""The Kling provider: the JWT (fields, caching, renewal) against a fake that verifies it,
images and videos end to end (what was sent, polls, downloads), failed jobs, deadlines,
every error-code mapping, the input checks, secrets, registration and the gateway path."""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import json
import logging
import time

import httpx
import pytest
from PIL import Image

from gateway.errors import (
    ContentPolicyViolation,
    GatewayError,
    InvalidRequest,
    NotFound,
    RateLimited,
    UpstreamError,
    UpstreamTimeout,
)
from providers.base import ImageData, ImageRequest, Provider
from providers.kling import (
    DEFAULT_BASE_URL,
    KlingOptions,
    KlingProvider,
    TokenSource,
    aspect_ratio_for,
    check_image,
    check_video_inputs,
    code_error,
    encode_jwt,
    split_task_id,
)
from providers.registry import ProviderConfigError, build_provider, provider_types
from tests.fakes.kling_upstream import (
    ACCESS_KEY,
    FAILED_MESSAGE,
    REFUSAL_MESSAGE,
    SECRET_KEY,
    check_image_body,
    check_video_body,
    create_fake_kling,
    fake_mp4,
    verify_jwt,
)
from tests.fakes.openai_upstream import fake_png

BASE = "http://kling.fake"


def picture(width: int, height: int, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (200, 80, 40)).save(buffer, fmt)
    return buffer.getvalue()


def claims_of(token: str) -> dict:
    part = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


@pytest.fixture
def fake():
    return create_fake_kling(polls=3)


@pytest.fixture
async def http(fake):
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=fake)) as client:
        yield client


@pytest.fixture
def make_provider(http):
    def make(clock=None, **options) -> KlingProvider:
        options = {
            "access_key": ACCESS_KEY,
            "secret_key": SECRET_KEY,
            "base_url": BASE,
            "poll_interval": 0.01,
            "deadline": 5,
            "video_deadline": 5,
            **options,
        }
        extra = {"clock": clock} if clock is not None else {}
        return KlingProvider("kl", KlingOptions(**options), http, **extra)

    return make


def api_calls(fake, method: str | None = None) -> list[dict]:
    return [
        r
        for r in fake.state.requests
        if r["path"].startswith("/v1/") and (method is None or r["method"] == method)
    ]


def downloads(fake) -> list[dict]:
    return [r for r in fake.state.requests if r["path"].startswith("/results/")]


# --- the token -------------------------------------------------------------------------


def test_jwt_fields_and_signature(fake):
    now = 1_700_000_000.7
    token = encode_jwt(ACCESS_KEY, SECRET_KEY, now)
    head, body, signature = token.split(".")
    assert "=" not in token  # base64url without padding, as JWT wants
    assert json.loads(base64.urlsafe_b64decode(head + "==")) == {"alg": "HS256", "typ": "JWT"}
    assert claims_of(token) == {"iss": ACCESS_KEY, "exp": 1_700_001_800, "nbf": 1_699_999_995}
    expected = hmac.new(SECRET_KEY.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
    assert base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4)) == expected

    fake.state.clock = lambda: now
    assert verify_jwt(fake.state, f"Bearer {token}") == (claims_of(token), None)
    fake.state.clock = lambda: now + 1800  # exp reached
    assert verify_jwt(fake.state, f"Bearer {token}")[1].code == 1004
    fake.state.clock = lambda: now - 10  # before nbf
    assert verify_jwt(fake.state, f"Bearer {token}")[1].code == 1003


@pytest.mark.parametrize(
    ("authorization", "code"),
    [
        (None, 1001),
        ("Basic abc", 1002),
        (f"Bearer {encode_jwt(ACCESS_KEY, 'another-secret', time.time())}", 1002),
        (f"Bearer {encode_jwt('someone-else', SECRET_KEY, time.time())}", 1000),
        (f"Bearer {encode_jwt(ACCESS_KEY, SECRET_KEY, time.time() - 3600)}", 1004),
        (f"Bearer {encode_jwt(ACCESS_KEY, SECRET_KEY, time.time() + 3600)}", 1003),
    ],
)
def test_fake_refuses_bad_tokens(fake, authorization, code):
    claims, refused = verify_jwt(fake.state, authorization)
    assert claims is None and refused.code == code


def test_token_is_cached_and_renewed_before_expiry():
    now = [1_700_000_000.0]
    tokens = TokenSource(ACCESS_KEY, SECRET_KEY, clock=lambda: now[0])
    first = tokens.token()
    now[0] += 1499  # 301 s before exp: still good
    assert tokens.token() == first
    now[0] += 1  # 300 s before exp: renewed
    second = tokens.token()
    assert second != first
    assert claims_of(second) == {
        "iss": ACCESS_KEY,
        "exp": 1_700_001_500 + 1800,
        "nbf": 1_700_001_500 - 5,
    }
    assert tokens.token() == second
    now[0] -= 3600  # the clock went back before nbf: a token valid now
    assert claims_of(tokens.token())["nbf"] == 1_699_997_900 - 5
    assert SECRET_KEY not in repr(tokens) and ACCESS_KEY not in repr(tokens)


async def test_provider_reuses_the_token_and_renews_it(fake, make_provider):
    now = [time.time()]
    fake.state.clock = lambda: now[0]
    provider = make_provider(clock=lambda: now[0])
    await provider.generate(ImageRequest(prompt="a fox", aspect_ratio="1:1"))
    calls = api_calls(fake)
    assert len(calls) == 4  # submit + 3 polls
    assert len({c["authorization"] for c in calls}) == 1
    assert calls[0]["claims"] == {
        "iss": ACCESS_KEY,
        "exp": int(now[0]) + 1800,
        "nbf": int(now[0]) - 5,
    }

    now[0] += 1600  # within the renewal margin
    await provider.generate(ImageRequest(prompt="a fox", aspect_ratio="1:1"))
    later = api_calls(fake)[4:]
    assert all(c["claims"] is not None for c in later)
    assert len({c["authorization"] for c in later}) == 1
    assert later[0]["authorization"] != calls[0]["authorization"]
    assert later[0]["claims"]["nbf"] == int(now[0]) - 5


async def test_wrong_secret_or_skewed_clock_is_an_upstream_auth_failure(fake, make_provider):
    with pytest.raises(UpstreamError) as info:
        await make_provider(secret_key="not-the-secret").generate(ImageRequest(prompt="x"))
    err = info.value
    assert err.code == "upstream_auth_failed" and err.status == 502 and not err.retryable
    assert "code 1002" in err.message and "your API key is fine" in err.message
    assert "not-the-secret" not in err.message and not fake.state.tasks

    skewed = make_provider(clock=lambda: time.time() - 7200)  # token expired on arrival
    with pytest.raises(UpstreamError, match="code 1004: Authorization has expired"):
        await skewed.generate(ImageRequest(prompt="x"))


# --- images ----------------------------------------------------------------------------


async def test_image_generation_end_to_end(fake, make_provider):
    images = await make_provider().generate(
        ImageRequest(prompt="a lantern festival", aspect_ratio="3:4", n=2)
    )
    assert [i.data for i in images] == [fake.state.png(0), fake.state.png(1)]
    assert all(i.mime == "image/png" for i in images)
    submit, *polls = api_calls(fake)
    assert (submit["method"], submit["path"]) == ("POST", "/v1/images/generations")
    assert submit["json"] == {
        "model_name": "kling-v1",
        "prompt": "a lantern festival",
        "n": 2,
        "aspect_ratio": "3:4",
    }
    task_id = next(iter(fake.state.tasks))
    assert [p["path"] for p in polls] == [f"/v1/images/generations/{task_id}"] * 3
    assert all(c["code"] == 0 for c in api_calls(fake))
    got = downloads(fake)
    assert sorted(d["path"] for d in got) == [
        f"/results/{task_id}/0.png",
        f"/results/{task_id}/1.png",
    ]
    assert all(d["authorization"] is None for d in got)  # no token to the CDN


async def test_reference_image_is_sent_as_raw_base64(fake, make_provider):
    reference = picture(600, 800)
    provider = make_provider(image_model="kling-v1-5", image_fidelity=0.7, negative_prompt="blur")
    await provider.generate(
        ImageRequest(
            prompt="the same cat, in snow",
            references=(ImageData.from_bytes(reference), ImageData.from_bytes(picture(400, 400))),
            aspect_ratio="21:9",
        )
    )
    sent = api_calls(fake, "POST")[0]["json"]
    assert sent["image"] == base64.b64encode(reference).decode()  # no data: prefix
    assert base64.b64decode(sent["image"]) == reference
    assert sent["image_reference"] == "subject" and sent["image_fidelity"] == 0.7
    assert sent["aspect_ratio"] == "21:9" and sent["model_name"] == "kling-v1-5"
    assert "negative_prompt" not in sent  # Kling takes none with an image

    await provider.generate(ImageRequest(prompt="a cat", aspect_ratio="1:1"))
    sent = api_calls(fake, "POST")[1]["json"]
    assert sent["negative_prompt"] == "blur" and "image" not in sent


async def test_a_bad_reference_is_refused_before_any_call(fake, make_provider):
    small = ImageData.from_bytes(picture(200, 200))
    with pytest.raises(InvalidRequest, match="at least 300 px") as info:
        await make_provider().generate(ImageRequest(prompt="x", references=(small,)))
    assert info.value.param == "image"
    assert not fake.state.requests


@pytest.mark.parametrize(
    ("ratio", "size", "model", "expected"),
    [
        ("3:4", None, "kling-v1", "3:4"),
        ("4:5", None, "kling-v1", "3:4"),
        ("9:20", None, "kling-v1", "9:16"),
        ("2:1", None, "kling-v1", "16:9"),
        ("21:9", None, "kling-v1", "16:9"),  # kling-v1 draws no 21:9
        ("21:9", None, "kling-v1-5", "21:9"),
        ("5:2", None, "kling-v2", "21:9"),
        ("1:1", "1536x1024", "kling-v1", "3:2"),
        ("1:1", "1024x1024", "kling-v1", "1:1"),
    ],
)
def test_aspect_ratio_mapping(ratio, size, model, expected):
    assert aspect_ratio_for(ratio, size, model=model) == expected


def test_aspect_ratio_mapping_refuses_nonsense(caplog):
    with caplog.at_level(logging.INFO, logger="inkgate.providers.kling"):
        aspect_ratio_for("4:5")
    assert "nearest aspect ratio 3:4" in caplog.text
    with pytest.raises(InvalidRequest) as info:
        aspect_ratio_for("tall")
    assert info.value.param == "aspect_ratio"


@pytest.mark.parametrize("n", [0, 10])
async def test_n_is_checked(fake, make_provider, n):
    with pytest.raises(InvalidRequest, match="n must be from 1 to 9") as info:
        await make_provider().generate(ImageRequest(prompt="x", n=n))
    assert info.value.param == "n" and not fake.state.requests


async def test_mask_and_long_prompt_are_refused(fake, make_provider):
    mask = ImageData.from_bytes(picture(400, 400))
    with pytest.raises(InvalidRequest) as info:
        await make_provider().generate(ImageRequest(prompt="x", mask=mask))
    assert info.value.param == "mask"
    with pytest.raises(InvalidRequest, match="short_prompt"):
        await make_provider().generate(ImageRequest(prompt="x" * 2501))
    assert not fake.state.requests


async def test_failed_image_task(fake, make_provider):
    fake.state.outcome = "failed"
    with pytest.raises(UpstreamError) as info:
        await make_provider().generate(ImageRequest(prompt="x"))
    assert info.value.code == "upstream_job_failed" and not info.value.retryable
    assert FAILED_MESSAGE in info.value.message

    fake.state.outcome = "refused"
    with pytest.raises(ContentPolicyViolation, match=REFUSAL_MESSAGE):
        await make_provider().generate(ImageRequest(prompt="x"))


async def test_image_task_that_never_finishes_hits_the_deadline(fake, make_provider):
    fake.state.outcome = "never"
    with pytest.raises(UpstreamTimeout) as info:
        await make_provider(deadline=0.1).generate(ImageRequest(prompt="x"))
    assert info.value.code == "upstream_job_timeout" and info.value.status == 504
    assert not info.value.retryable and "0.1 s" in info.value.message
    assert len(api_calls(fake, "GET")) >= 3


async def test_transient_poll_errors_are_tolerated(fake, make_provider):
    fake.state.fail_next_poll = [5000, 1302]
    images = await make_provider().generate(ImageRequest(prompt="x"))
    assert images and len(api_calls(fake, "GET")) == 5


async def test_poll_errors_that_are_not_transient_end_the_wait(fake, make_provider):
    fake.state.fail_next_poll = [1004]
    with pytest.raises(UpstreamError, match="upstream|credentials") as info:
        await make_provider().generate(ImageRequest(prompt="x"))
    assert info.value.code == "upstream_auth_failed"
    assert len(api_calls(fake, "GET")) == 1


async def test_download_is_retried_then_checked(fake, make_provider):
    fake.state.fail_next_download = [503, 502]
    images = await make_provider().generate(ImageRequest(prompt="x"))
    assert images[0].data == fake.state.png(0) and len(downloads(fake)) == 3

    fake.state.fail_next_download = [503, 503, 503]
    with pytest.raises(UpstreamError, match="503"):
        await make_provider().generate(ImageRequest(prompt="x"))

    fake.state.image_content_type = "text/html"
    with pytest.raises(UpstreamError, match="served text/html, not a image"):
        await make_provider().generate(ImageRequest(prompt="x"))

    fake.state.image_content_type = "image/png"
    with pytest.raises(UpstreamError, match="larger than the limit"):
        await make_provider(max_download_bytes=10).generate(ImageRequest(prompt="x"))


# --- videos ----------------------------------------------------------------------------


async def test_image2video_submit_poll_fetch(fake, make_provider):
    first, last = picture(640, 960), picture(640, 960, "JPEG")
    provider = make_provider()
    task_id = await provider.submit(
        "the girl turns and smiles",
        first_frame=ImageData.from_bytes(first),
        last_frame=ImageData.from_bytes(last),
        mode="pro",
        cfg_scale=0.3,
        negative_prompt="blur",
    )
    upstream_id = next(iter(fake.state.tasks))
    assert task_id == f"image2video:{upstream_id}"
    sent = api_calls(fake, "POST")[0]
    assert sent["path"] == "/v1/videos/image2video"
    assert sent["json"] == {
        "model_name": "kling-v1",
        "mode": "pro",
        "duration": "5",  # a string, as Kling wants
        "prompt": "the girl turns and smiles",
        "negative_prompt": "blur",
        "cfg_scale": 0.3,
        "image": base64.b64encode(first).decode(),
        "image_tail": base64.b64encode(last).decode(),
    }
    statuses = [await provider.poll(task_id) for _ in range(3)]
    assert [s.status for s in statuses] == ["queued", "running", "succeeded"]
    done = statuses[-1]
    assert done.result_url == f"{BASE}/results/{upstream_id}/video.mp4"
    assert done.duration == 5.0 and done.error is None
    assert [c["path"] for c in api_calls(fake, "GET")] == [
        f"/v1/videos/image2video/{upstream_id}"
    ] * 3
    video = await provider.fetch_video(done.result_url)
    assert video == fake_mp4() and video[4:8] == b"ftyp"


async def test_text2video_submit_and_wait(fake, make_provider):
    provider = make_provider(video_model="kling-v1-6")
    task_id = await provider.submit("waves on a rocky shore", duration=10, aspect_ratio="4:5")
    assert task_id.startswith("text2video:")
    sent = api_calls(fake, "POST")[0]
    assert sent["path"] == "/v1/videos/text2video"
    assert sent["json"] == {
        "model_name": "kling-v1-6",
        "mode": "std",
        "duration": "10",
        "prompt": "waves on a rocky shore",
        "aspect_ratio": "1:1",
    }
    status = await provider.wait_video(task_id)
    assert status.status == "succeeded" and status.duration == 10.0
    assert all(c["path"].startswith("/v1/videos/text2video/") for c in api_calls(fake, "GET"))

    await provider.submit("a field of tulips")
    assert api_calls(fake, "POST")[1]["json"]["aspect_ratio"] == "16:9"


async def test_external_id_is_sent_and_jobs_are_found_by_it(fake, make_provider):
    provider = make_provider()
    frame = ImageData.from_bytes(picture(800, 600))
    image_task = await provider.submit("x", first_frame=frame, external_id="video_abc")
    text_task = await provider.submit("y", external_id="video_def")
    sent = api_calls(fake, "POST")
    assert [c["json"]["external_task_id"] for c in sent] == ["video_abc", "video_def"]
    assert await provider.find("video_abc", from_image=True) == image_task
    assert await provider.find("video_def", from_image=False) == text_task
    assert api_calls(fake, "GET")[-1]["path"] == "/v1/videos/text2video/video_def"
    # no such job (Kling code 1203), or one of the other kind: None, so the caller submits
    assert await provider.find("video_zzz", from_image=False) is None
    assert await provider.find("video_abc", from_image=False) is None
    # Kling refuses an external_task_id used twice: never silently a second job
    with pytest.raises(InvalidRequest, match="external_task_id"):
        await provider.submit("x", first_frame=frame, external_id="video_abc")
    assert len(fake.state.tasks) == 2
    # without an id, nothing is sent
    await provider.submit("z")
    assert "external_task_id" not in api_calls(fake, "POST")[-1]["json"]


async def test_find_passes_on_other_errors(fake, make_provider):
    fake.state.fail_next_poll = [1302]
    with pytest.raises(RateLimited):
        await make_provider().find("video_abc", from_image=False)


async def test_cfg_scale_is_not_sent_to_v2_models(fake, make_provider):
    frame = ImageData.from_bytes(picture(800, 600))
    await make_provider().submit("x", first_frame=frame, model="kling-v2-master", cfg_scale=0.5)
    sent = api_calls(fake, "POST")[0]
    assert sent["code"] == 0 and "cfg_scale" not in sent["json"]
    assert sent["json"]["model_name"] == "kling-v2-master"


async def test_failed_video_job(fake, make_provider):
    fake.state.outcome = "failed"
    provider = make_provider()
    status = await provider.wait_video(await provider.submit("a storm"))
    assert status.status == "failed" and status.error == FAILED_MESSAGE
    assert status.result_url is None


async def test_video_job_that_never_finishes(fake, make_provider):
    fake.state.outcome = "never"
    provider = make_provider(video_deadline=0.1)
    task_id = await provider.submit("a storm")
    assert (await provider.poll(task_id)).status in ("queued", "running")
    with pytest.raises(UpstreamTimeout) as info:
        await provider.wait_video(task_id)
    assert info.value.code == "upstream_job_timeout" and not info.value.retryable


@pytest.mark.parametrize("task_id", ["", "12345", "video:1", "image2video:", "text2video:a/b"])
async def test_poll_refuses_foreign_task_ids(fake, make_provider, task_id):
    with pytest.raises(NotFound):
        await make_provider().poll(task_id)
    assert not fake.state.requests


async def test_poll_of_an_unknown_task(fake, make_provider):
    assert split_task_id("text2video:42") == ("text2video", "42")
    with pytest.raises(NotFound, match="1203"):
        await make_provider().poll("text2video:42")


async def test_fetch_video_checks_what_it_gets(fake, make_provider):
    provider = make_provider()
    status = await provider.wait_video(await provider.submit("x"))
    fake.state.video_content_type = "text/html"
    with pytest.raises(UpstreamError, match="served text/html"):
        await provider.fetch_video(status.result_url)
    fake.state.video_content_type = "video/mp4"
    fake.state.mp4 = b"<html>not a video</html>"
    with pytest.raises(UpstreamError, match="not an MP4"):
        await provider.fetch_video(status.result_url)
    with pytest.raises(UpstreamError, match="larger than the limit"):
        await make_provider(max_video_bytes=4).fetch_video(status.result_url)


async def test_unknown_video_params_are_refused(fake, make_provider):
    with pytest.raises(InvalidRequest) as info:
        await make_provider().submit("x", fps=60)
    assert info.value.param == "fps" and not fake.state.requests


# --- input checks ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (picture(299, 600), "at least 300 px"),
        (picture(400, 400, "GIF"), "JPG or PNG"),
        (b"not an image at all", "JPG or PNG"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 64, "not a readable PNG"),
        (picture(300, 760), "between 1:2.5 and 2.5:1"),  # 1:2.53
        (picture(1260, 500), "between 1:2.5 and 2.5:1"),
    ],
)
async def test_frames_are_checked_before_any_call(fake, make_provider, data, match):
    with pytest.raises(InvalidRequest, match=match) as info:
        check_image(data, "first_frame")
    assert info.value.param == "first_frame"
    frame = ImageData(data, "image/png")
    with pytest.raises(InvalidRequest, match=match):
        await make_provider().submit("x", first_frame=frame)
    assert not fake.state.requests


def test_frames_over_10_mb_are_refused():
    big = fake_png(2000, 2000, 11 * 1024 * 1024).png(0)
    assert len(big) > 10 * 1024 * 1024
    with pytest.raises(InvalidRequest, match="at most 10 MB") as info:
        check_image(big, "last_frame")
    assert info.value.param == "last_frame"


def test_frames_kling_accepts():
    assert check_image(picture(300, 750), "first_frame") == (300, 750)  # exactly 1:2.5
    assert check_image(picture(1000, 400, "JPEG"), "first_frame") == (1000, 400)


async def test_last_frame_needs_duration_5(fake, make_provider):
    frame = ImageData.from_bytes(picture(640, 640))
    with pytest.raises(InvalidRequest, match="duration 5") as info:
        await make_provider().submit("x", first_frame=frame, last_frame=frame, duration=10)
    assert info.value.param == "last_frame" and not fake.state.requests


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"duration": 7}, "duration"),
        ({"duration": True}, "duration"),
        ({"duration": "five"}, "duration"),
        ({"mode": "fast"}, "mode"),
        ({"cfg_scale": 1.5}, "cfg_scale"),
        ({"cfg_scale": -0.1}, "cfg_scale"),
        ({"cfg_scale": "high"}, "cfg_scale"),
        ({"last_frame": picture(640, 640)}, "last_frame"),  # without a first frame
        ({"negative_prompt": "x" * 2501}, "negative_prompt"),
        ({"aspect_ratio": "wide"}, "aspect_ratio"),
    ],
)
def test_check_video_inputs_refuses(kwargs, param):
    with pytest.raises(InvalidRequest) as info:
        check_video_inputs("a prompt", **kwargs)
    assert info.value.param == param


def test_check_video_inputs_normalises():
    frame = picture(640, 480)
    inputs = check_video_inputs(
        "", first_frame=frame, last_frame=frame, duration=5.0, mode="pro", cfg_scale=1
    )
    assert inputs.kind == "image2video" and inputs.duration == "5" and inputs.cfg_scale == 1.0
    assert inputs.first_frame == ImageData(frame, "image/png") and inputs.aspect_ratio is None
    assert check_video_inputs("x", duration="10").duration == "10"
    assert check_video_inputs("x", aspect_ratio="9:16").aspect_ratio == "9:16"
    with pytest.raises(InvalidRequest) as info:
        check_video_inputs("   ")  # text to video needs a prompt
    assert info.value.param == "prompt"


# --- the fake is strict ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"prompt": "x", "model_name": "kling-v9"}, "model_name"),
        ({"model_name": "kling-v1"}, "prompt"),
        ({"prompt": "x", "n": 10}, "n"),
        ({"prompt": "x", "aspect_ratio": "21:9"}, "aspect_ratio"),
        ({"prompt": "x", "size": "1024x1024"}, "size"),
        ({"prompt": "x", "image": "data:image/png;base64,iVBORw0KGgo="}, "image"),
    ],
)
def test_fake_checks_image_bodies(body, field):
    with pytest.raises(Exception) as info:
        check_image_body(body)
    assert info.value.code == 1201 and info.value.message.startswith(field)


@pytest.mark.parametrize(
    ("kind", "body", "field"),
    [
        ("text2video", {"prompt": "x", "duration": 5}, "duration"),
        ("text2video", {"duration": "5"}, "prompt"),
        ("text2video", {"prompt": "x", "model_name": "kling-v1-5"}, "model_name"),
        ("image2video", {"prompt": "x"}, "image"),
        ("image2video", {"prompt": "x", "image": "abc", "aspect_ratio": "1:1"}, "aspect_ratio"),
    ],
)
def test_fake_checks_video_bodies(kind, body, field):
    with pytest.raises(Exception) as info:
        check_video_body(kind, body)
    assert info.value.code == 1201 and info.value.message.startswith(field)


def test_fake_refuses_a_tail_frame_for_10_s():
    frame = base64.b64encode(picture(640, 640)).decode()
    body = {"image": frame, "image_tail": frame, "duration": "10"}
    with pytest.raises(Exception, match="image_tail"):
        check_video_body("image2video", body)


# --- error codes -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "kind", "status", "retryable", "error_code"),
    [
        (1000, UpstreamError, 502, False, "upstream_auth_failed"),
        (1001, UpstreamError, 502, False, "upstream_auth_failed"),
        (1002, UpstreamError, 502, False, "upstream_auth_failed"),
        (1003, UpstreamError, 502, False, "upstream_auth_failed"),
        (1004, UpstreamError, 502, False, "upstream_auth_failed"),
        (1103, UpstreamError, 502, False, "upstream_auth_failed"),
        (1101, UpstreamError, 502, False, "upstream_quota_exceeded"),
        (1102, UpstreamError, 502, False, "upstream_quota_exceeded"),
        (1201, InvalidRequest, 400, False, "upstream_invalid_request"),
        (1203, NotFound, 404, False, "upstream_not_found"),
        (1300, ContentPolicyViolation, 400, False, "content_policy_violation"),
        (1301, ContentPolicyViolation, 400, False, "content_policy_violation"),
        (1302, RateLimited, 429, True, "rate_limit_exceeded"),
        (1303, RateLimited, 429, True, "rate_limit_exceeded"),
        (5000, UpstreamError, 502, True, "upstream_error"),
        (5001, UpstreamError, 502, True, "upstream_error"),
        (5002, UpstreamTimeout, 504, True, "upstream_timeout"),
    ],
)
async def test_submit_codes_are_mapped(
    fake, make_provider, code, kind, status, retryable, error_code
):
    fake.state.fail_next_submit = [code]
    with pytest.raises(GatewayError) as info:
        await make_provider().generate(ImageRequest(prompt="x"))
    err = info.value
    assert type(err) is kind, err
    assert (err.status, err.retryable, err.code) == (status, retryable, error_code)
    assert f"code {code}" in err.message
    # the provider itself never retries a submit: the gateway decides
    assert len(api_calls(fake, "POST")) == 1 and not fake.state.tasks


async def test_quota_and_auth_messages_blame_the_gateway_config(fake, make_provider):
    fake.state.fail_next_submit = [1102]
    with pytest.raises(UpstreamError, match="Resource pack depleted") as info:
        await make_provider().generate(ImageRequest(prompt="x"))
    assert "topped up" in info.value.message
    fake.state.auth_error = 1002  # every call refused, the task list too
    with pytest.raises(UpstreamError, match="your API key is fine"):
        await make_provider().list_models()


async def test_rate_limit_retry_after_is_passed_on(fake, make_provider):
    fake.state.fail_next_submit = [1303]
    fake.state.retry_after = 7
    with pytest.raises(RateLimited, match="concurrency limit") as info:
        await make_provider().generate(ImageRequest(prompt="x"))
    assert info.value.retry_after == 7 and info.value.headers() == {"Retry-After": "7"}


def test_code_error_falls_back_on_the_http_status():
    assert code_error("kl", 9999, "who knows", http_status=401).code == "upstream_auth_failed"
    assert isinstance(code_error("kl", 9999, "slow", http_status=429), RateLimited)
    assert code_error("kl", 9999, "boom", http_status=500).retryable
    other = code_error("kl", 9999, "odd", http_status=400)
    assert other.code == "upstream_bad_request" and not other.retryable


@pytest.mark.parametrize(
    ("status", "text", "code", "retryable"),
    [
        (503, "down", "upstream_error", True),
        (401, "<html>no</html>", "upstream_auth_failed", False),
    ],
)
async def test_http_errors_without_a_kling_body(make_provider, status, text, code, retryable):
    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, text=text)

    async with httpx.AsyncClient(transport=httpx.MockTransport(answer)) as client:
        provider = make_provider()
        provider.http = client
        with pytest.raises(UpstreamError) as info:
            await provider.generate(ImageRequest(prompt="x"))
    assert (info.value.code, info.value.retryable) == (code, retryable)


# --- secrets ---------------------------------------------------------------------------


@pytest.mark.parametrize("as_json", [True, False])
async def test_no_secret_in_any_error_or_log(make_provider, caplog, as_json):
    """The keys and the token never reach a client message or the log, whatever the
    upstream echoes."""
    caplog.set_level(logging.DEBUG)
    seen: list[str] = []

    def echo(request: httpx.Request) -> httpx.Response:
        token = request.headers["authorization"].removeprefix("Bearer ")
        seen.append(token)
        text = f"bad token {token} for {ACCESS_KEY} signed with {SECRET_KEY}"
        if as_json:
            return httpx.Response(401, json={"code": 1002, "message": text, "request_id": "r"})
        return httpx.Response(500, text=text)

    async with httpx.AsyncClient(transport=httpx.MockTransport(echo)) as client:
        provider = make_provider()
        provider.http = client
        with pytest.raises(GatewayError) as info:
            await provider.generate(ImageRequest(prompt="x"))
    shown = info.value.message + json.dumps(info.value.body())
    assert "[redacted]" in info.value.message
    for secret in (ACCESS_KEY, SECRET_KEY, seen[0]):
        assert secret not in shown
        assert secret not in caplog.text
    assert "bad token" in caplog.text  # the operator still sees what the upstream said


def test_secrets_are_not_in_reprs(http):
    provider = build_provider(
        "kl", "kling", {"access_key": ACCESS_KEY, "secret_key": SECRET_KEY}, http
    )
    for text in (repr(provider.options), str(provider.options), repr(provider._tokens)):
        assert ACCESS_KEY not in text and SECRET_KEY not in text


def test_secret_fields_are_declared():
    from providers.gemini import GeminiProvider
    from providers.openai import OpenAIProvider
    from providers.vidsme import VidsmeProvider

    assert Provider.SECRET_FIELDS == ("api_key",)
    assert KlingProvider.SECRET_FIELDS == ("access_key", "secret_key")
    assert VidsmeProvider.SECRET_FIELDS == ("salt",)
    for cls in (KlingProvider, VidsmeProvider, OpenAIProvider, GeminiProvider):
        assert set(cls.SECRET_FIELDS) <= set(cls.Options.model_fields), cls


# --- options, registration, probe ------------------------------------------------------


def test_options_are_checked(http):
    good = {"access_key": ACCESS_KEY, "secret_key": SECRET_KEY}
    provider = build_provider("kl", "kling", good, http)
    assert isinstance(provider, KlingProvider) and provider_types()["kling"] is KlingProvider
    assert provider.options.base_url == DEFAULT_BASE_URL == "https://api-singapore.klingai.com"
    assert (provider.options.poll_interval, provider.options.deadline) == (3.0, 300.0)
    assert provider.configured_models() == {"image": "kling-v1", "video": "kling-v1"}
    with pytest.raises(ProviderConfigError, match="secret_key") as info:
        build_provider("kl", "kling", {"access_key": ACCESS_KEY}, http)
    assert ACCESS_KEY not in str(info.value)
    with pytest.raises(ProviderConfigError, match="base_url"):
        build_provider("kl", "kling", {**good, "base_url": "api.klingai.com"}, http)
    with pytest.raises(ProviderConfigError, match="api_key"):
        build_provider("kl", "kling", {**good, "api_key": "sk-x"}, http)
    with pytest.raises(ProviderConfigError, match="video_duration"):
        build_provider("kl", "kling", {**good, "video_duration": 7}, http)


def test_kling_through_build_config(http):
    from gateway.config import ConfigFile, build_config

    file = ConfigFile.model_validate(
        {
            "providers": {
                "kl": {
                    "type": "kling",
                    "access_key": ACCESS_KEY,
                    "secret_key": SECRET_KEY,
                    "base_url": "https://api.klingai.com/",
                    "image_model": "kling-v1-5",
                    "max_concurrency": 2,
                }
            },
            "models": {"kling-art": {"type": "image", "provider": "kl", "model": "kling-v2"}},
        }
    )
    config = build_config(file, http)
    provider = config.providers["kl"]
    assert isinstance(provider, KlingProvider) and provider.type == "kling"
    assert provider.options.base_url == "https://api.klingai.com"
    assert config.provider_limits == {"kl": 2}
    assert config.image_provider("kl") is provider
    assert "kling-art" in config.model_ids()


async def test_probe_checks_the_keys(fake, make_provider):
    from gateway.config import GatewayConfig
    from gateway.probe import probe

    config = GatewayConfig(providers={"kl": make_provider()})
    report = await probe(config, "kl")
    assert report.ok and "no model list" in report.checks[0].detail
    listed = api_calls(fake)[0]
    assert (listed["method"], listed["path"], listed["code"]) == (
        "GET",
        "/v1/images/generations",
        0,
    )
    fake.state.auth_error = 1000
    report = await probe(config, "kl")
    assert not report.ok and report.checks[0].detail.startswith("bad key")


# --- through the gateway ---------------------------------------------------------------


@pytest.fixture
def gateway_client(settings, fake, monkeypatch):
    from gateway.app import create_app
    from tests.conftest import MASTER_KEY

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    (settings.data_dir / "inkgate.yaml").write_text(
        "providers:\n"
        "  kl:\n"
        "    type: kling\n"
        f"    base_url: {BASE}\n"
        "    access_key: ${KLING_ACCESS_KEY}\n"
        "    secret_key: ${KLING_SECRET_KEY}\n"
        "    poll_interval: 0.01\n"
        "models:\n"
        "  kling-art:\n"
        "    type: image\n"
        "    provider: kl\n"
        "    model: kling-v1-5\n",
        encoding="utf-8",
    )
    monkeypatch.setenv("KLING_ACCESS_KEY", ACCESS_KEY)
    monkeypatch.setenv("KLING_SECRET_KEY", SECRET_KEY)
    real_client = httpx.AsyncClient

    def to_fake(*args, **kwargs):
        kwargs["transport"] = httpx.ASGITransport(app=fake)
        return real_client(*args, **kwargs)

    monkeypatch.setattr("gateway.app.httpx.AsyncClient", to_fake)

    async def post(body: dict) -> httpx.Response:
        application = create_app(settings)
        async with application.router.lifespan_context(application):
            async with real_client(
                transport=httpx.ASGITransport(app=application),
                base_url="http://t",
                headers={"Authorization": f"Bearer {MASTER_KEY}"},
            ) as c:
                return await c.post("/v1/images/generations", json=body, timeout=30)

    return post


async def test_images_api_retries_rate_limits_then_succeeds(fake, gateway_client, caplog):
    caplog.set_level(logging.DEBUG)
    fake.state.fail_next_submit = [1302, 1303]
    r = await gateway_client(
        {
            "model": "kling-art",
            "prompt": "a lantern festival",
            "size": "1536x1024",
            "response_format": "b64_json",
        }
    )
    assert r.status_code == 200, r.text
    assert base64.b64decode(r.json()["data"][0]["b64_json"]) == fake.state.png(0)
    submits = api_calls(fake, "POST")
    assert [s["code"] for s in submits] == [1302, 1303, 0]
    assert submits[-1]["json"]["model_name"] == "kling-v1-5"
    assert submits[-1]["json"]["aspect_ratio"] == "3:2"
    assert all(c["claims"] is not None for c in api_calls(fake))
    assert ACCESS_KEY not in caplog.text and SECRET_KEY not in caplog.text


async def test_images_api_content_policy_is_never_retried(fake, gateway_client):
    fake.state.fail_next_submit = [1301, 1301, 1301]
    r = await gateway_client({"model": "kling-art", "prompt": "something forbidden"})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == "content_policy_violation"
    assert len(api_calls(fake, "POST")) == 1


async def test_images_api_upstream_auth_failure_is_not_the_clients_key(fake, gateway_client):
    fake.state.auth_error = 1004
    r = await gateway_client({"model": "kling-art", "prompt": "x"})
    assert r.status_code == 502, r.text
    error = r.json()["error"]
    assert error["code"] == "upstream_auth_failed" and "your API key is fine" in error["message"]
    assert ACCESS_KEY not in r.text and SECRET_KEY not in r.text
    assert len(api_calls(fake, "POST")) == 1
