"""The video API (`/v1/videos`), durable video jobs and video models in chat, in process
against the strict Kling fake (the app's HTTP client goes to it through ASGITransport):
what is submitted, progress, paging, byte ranges, ownership, input errors, every way a
job fails, a job resumed by another runner without a second submission, and chat."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import re
import time

import httpx
import pytest
from openai.types import Video as SdkVideo
from PIL import Image
from sqlalchemy import select, update

from gateway.config import ConfigError, ConfigFile, build_config
from gateway.flow.videos import VideoRunner, estimated_progress
from providers.base import VideoStatus
from storage.tables import UsageRow
from storage.video_tables import Video
from tests.conftest import MASTER_KEY
from tests.fakes.kling_upstream import (
    ACCESS_KEY,
    FAILED_MESSAGE,
    REFUSAL_MESSAGE,
    SECRET_KEY,
    create_fake_kling,
)

BASE = "http://kling.fake"
MASTER = {"Authorization": f"Bearer {MASTER_KEY}"}
# the app fixture points httpx.AsyncClient (the gateway's upstream client) at the fake
RealAsyncClient = httpx.AsyncClient


def picture(width: int, height: int, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (30, 120, 200)).save(buffer, fmt)
    return buffer.getvalue()


def data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


@pytest.fixture
def fake():
    return create_fake_kling(polls=3)


@pytest.fixture
def kling_extra() -> dict:
    return {}


@pytest.fixture
async def app(settings, fake, kling_extra, monkeypatch):
    """The gateway with a `kling` provider whose calls go to the fake."""
    import yaml

    from gateway.app import create_app

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    config = {
        "providers": {
            "kl": {
                "type": "kling",
                "base_url": BASE,
                "access_key": ACCESS_KEY,
                "secret_key": SECRET_KEY,
                "poll_interval": 0.01,
                "video_deadline": 20,
                **kling_extra,
            }
        },
        "models": {
            "redink": {"type": "redink"},
            "kling-video": {"type": "video", "provider": "kl", "model": "kling-v1-6"},
            "kling-art": {"type": "image", "provider": "kl", "model": "kling-v1-5"},
        },
    }
    settings.config_path.write_text(yaml.safe_dump(config), encoding="utf-8")

    def to_fake(*args, **kwargs):
        kwargs["transport"] = httpx.ASGITransport(app=fake)
        return RealAsyncClient(*args, **kwargs)

    monkeypatch.setattr("gateway.app.httpx.AsyncClient", to_fake)
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture
async def client(app):
    async with RealAsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://testserver",
        headers=MASTER,
        timeout=60,
    ) as c:
        yield c


def submissions(fake) -> list[dict]:
    return [
        r
        for r in fake.state.requests
        if r["method"] == "POST" and r["path"].startswith("/v1/videos/")
    ]


async def wait_video(client, video_id: str, until, timeout: float = 15) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        r = await client.get(f"/v1/videos/{video_id}")
        assert r.status_code == 200, r.text
        video = r.json()
        if until(video):
            return video
        assert time.monotonic() < deadline, video
        await asyncio.sleep(0.02)


def finished(video: dict) -> bool:
    return video["status"] in ("completed", "failed")


async def make(client, **fields) -> dict:
    r = await client.post("/v1/videos", json={"model": "kling-video", "prompt": "x", **fields})
    assert r.status_code == 200, r.text
    return r.json()


# --- creating, progress, the object -------------------------------------------------


async def test_text_to_video_goes_queued_in_progress_completed(client, fake, services):
    fake.state.polls = 1000  # processing until the test says otherwise
    r = await client.post(
        "/v1/videos",
        json={"model": "kling-video", "prompt": "a paper boat", "seconds": "5", "size": "720x1280"},
    )
    assert r.status_code == 200, r.text
    video = r.json()
    SdkVideo.model_validate(video)  # the OpenAI SDK's own type parses it
    assert video["id"].startswith("video_") and video["object"] == "video"
    assert (video["status"], video["progress"], video["error"]) == ("queued", 0, None)
    assert (video["seconds"], video["size"], video["model"]) == ("5", "720x1280", "kling-video")
    assert video["expires_at"] - video["created_at"] == 7 * 24 * 3600
    assert video["completed_at"] is None

    running = await wait_video(client, video["id"], lambda v: v["status"] == "in_progress")
    assert 1 <= running["progress"] < 100
    r = await client.get(f"/v1/videos/{video['id']}")
    assert r.headers["openai-poll-after-ms"] == "2000"
    (sent,) = submissions(fake)
    assert sent["path"] == "/v1/videos/text2video"
    assert sent["json"] == {
        "model_name": "kling-v1-6",
        "mode": "std",
        "duration": "5",
        "prompt": "a paper boat",
        "aspect_ratio": "9:16",
        "external_task_id": video["id"],
    }
    row = await services.videos.get(video["id"])
    assert row.task_id == f"text2video:{next(iter(fake.state.tasks))}"  # stored before waiting

    fake.state.polls = 0
    done = await wait_video(client, video["id"], finished)
    SdkVideo.model_validate(done)
    assert (done["status"], done["progress"], done["error"]) == ("completed", 100, None)
    assert done["completed_at"] >= done["created_at"]
    assert "openai-poll-after-ms" not in (await client.get(f"/v1/videos/{video['id']}")).headers
    content = await client.get(f"/v1/videos/{video['id']}/content")
    assert content.status_code == 200 and content.content == fake.state.mp4
    assert content.headers["content-type"] == "video/mp4"
    assert len(submissions(fake)) == 1


async def test_multipart_upload_is_the_first_frame(client, fake):
    frame, tail = picture(640, 480), picture(640, 480, "JPEG")
    r = await client.post(
        "/v1/videos",
        data={
            "model": "kling-video",
            "prompt": "the lantern swings",
            "seconds": "5",
            "mode": "pro",
            "cfg_scale": "0.4",
            "negative_prompt": "blur",
        },
        files={
            "input_reference": ("frame.png", frame, "image/png"),
            "image_tail": ("tail.jpg", tail, "image/jpeg"),
        },
    )
    assert r.status_code == 200, r.text
    video = await wait_video(client, r.json()["id"], finished)
    assert video["status"] == "completed" and video["size"] == "960x720"
    (sent,) = submissions(fake)
    assert sent["path"] == "/v1/videos/image2video"
    body = sent["json"]
    assert base64.b64decode(body["image"]) == frame
    assert base64.b64decode(body["image_tail"]) == tail
    assert (body["mode"], body["duration"], body["cfg_scale"]) == ("pro", "5", 0.4)
    assert (body["prompt"], body["negative_prompt"]) == ("the lantern swings", "blur")
    assert "aspect_ratio" not in body


async def test_json_reference_is_read_from_our_store_never_over_http(client, fake, services):
    frame = picture(600, 800)
    stored = await services.images.put(frame, owner_key_id=None)
    tail = picture(600, 800, "WEBP")  # converted to PNG for Kling
    video = await make(
        client,
        input_reference={"image_url": f"https://elsewhere.example/images/{stored.id}.png"},
        image_tail=data_url(tail, "image/webp"),
    )
    video = await wait_video(client, video["id"], finished)
    assert video["status"] == "completed" and video["size"] == "720x960"
    body = submissions(fake)[0]["json"]
    assert base64.b64decode(body["image"]) == frame
    assert base64.b64decode(body["image_tail"]).startswith(b"\x89PNG")
    assert not [r for r in fake.state.requests if "elsewhere" in r["path"]]


# --- list, content, delete, ownership -----------------------------------------------


async def test_list_pages_newest_first(client, fake):
    fake.state.outcome = "never"
    ids = [(await make(client, prompt=f"clip {i}"))["id"] for i in range(3)]
    r = await client.get("/v1/videos", params={"limit": 2})
    page = r.json()
    assert page["object"] == "list" and page["has_more"] is True
    assert [v["id"] for v in page["data"]] == ids[:0:-1]
    assert (page["first_id"], page["last_id"]) == (ids[2], ids[1])
    rest = (await client.get("/v1/videos", params={"limit": 2, "after": page["last_id"]})).json()
    assert [v["id"] for v in rest["data"]] == [ids[0]] and rest["has_more"] is False
    asc = (await client.get("/v1/videos", params={"order": "asc"})).json()
    assert [v["id"] for v in asc["data"]] == ids
    bad = await client.get("/v1/videos", params={"limit": 0})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "limit"


async def test_content_ranges_etag_variants(client, fake):
    video = await wait_video(client, (await make(client))["id"], finished)
    url = f"/v1/videos/{video['id']}/content"
    mp4 = fake.state.mp4
    size = len(mp4)
    whole = await client.get(url)
    assert whole.status_code == 200 and whole.content == mp4
    assert whole.headers["accept-ranges"] == "bytes"
    part = await client.get(url, headers={"Range": "bytes=4-11"})
    assert part.status_code == 206 and part.content == mp4[4:12] == b"ftypisom"
    assert part.headers["content-range"] == f"bytes 4-11/{size}"
    assert part.headers["content-length"] == "8"
    tail = await client.get(url, headers={"Range": "bytes=-6"})
    assert tail.status_code == 206 and tail.content == mp4[-6:]
    open_end = await client.get(url, headers={"Range": f"bytes={size - 3}-"})
    assert open_end.content == mp4[-3:]
    beyond = await client.get(url, headers={"Range": f"bytes={size}-{size + 10}"})
    assert beyond.status_code == 416
    assert beyond.headers["content-range"] == f"bytes */{size}"
    assert beyond.json()["error"]["code"] == "range_not_satisfiable"
    head = await client.head(url)
    assert head.status_code == 200 and head.headers["content-length"] == str(size)
    cached = await client.get(url, headers={"If-None-Match": whole.headers["etag"]})
    assert cached.status_code == 304
    thumb = await client.get(url, params={"variant": "thumbnail"})
    assert thumb.status_code == 404 and thumb.json()["error"]["code"] == "variant_not_available"
    odd = await client.get(url, params={"variant": "poster"})
    assert odd.status_code == 400 and odd.json()["error"]["param"] == "variant"


async def test_content_of_an_unfinished_video_is_409(client, fake):
    fake.state.outcome = "never"
    video = await make(client)
    r = await client.get(f"/v1/videos/{video['id']}/content")
    assert r.status_code == 409 and r.headers["x-should-retry"] == "false"
    error = r.json()["error"]
    assert error["code"] == "video_not_ready" and "completed" in error["message"]


async def test_delete_removes_row_and_file(client, fake, services):
    video = await wait_video(client, (await make(client))["id"], finished)
    row = await services.videos.get(video["id"])
    path = services.images.blobs.path(row.file_key)
    assert path.is_file()
    r = await client.delete(f"/v1/videos/{video['id']}")
    assert r.json() == {"id": video["id"], "object": "video.deleted", "deleted": True}
    assert not path.exists()
    assert (await client.get(f"/v1/videos/{video['id']}")).status_code == 404
    assert (await client.delete(f"/v1/videos/{video['id']}")).status_code == 404


async def test_another_key_gets_404(client, fake, services):
    _row, alice = await services.keys.create("alice")
    _row, bob = await services.keys.create("bob")
    as_alice = {"Authorization": f"Bearer {alice}"}
    as_bob = {"Authorization": f"Bearer {bob}"}
    r = await client.post(
        "/v1/videos", json={"model": "kling-video", "prompt": "x"}, headers=as_alice
    )
    video = await wait_video(client, r.json()["id"], finished)
    base = f"/v1/videos/{video['id']}"
    for method, path in [("GET", base), ("GET", f"{base}/content"), ("DELETE", base)]:
        r = await client.request(method, path, headers=as_bob)
        assert r.status_code == 404 and r.json()["error"]["code"] == "video_not_found"
    assert (await client.get("/v1/videos", headers=as_bob)).json()["data"] == []
    mine = (await client.get("/v1/videos", headers=as_alice)).json()["data"]
    assert [v["id"] for v in mine] == [video["id"]]
    assert (await client.get(f"{base}/content", headers=as_alice)).status_code == 200
    assert (await client.get(base)).status_code == 200  # the master key sees all
    no_key = await client.get(f"{base}/content", headers={"Authorization": ""})
    assert no_key.status_code == 401


# --- input errors: 400 before anything is stored or sent ----------------------------


@pytest.mark.parametrize(
    ("fields", "status", "param", "code"),
    [
        ({"input_reference": data_url(picture(200, 200))}, 400, "input_reference", None),
        (
            {
                "input_reference": data_url(picture(640, 480)),
                "image_tail": data_url(picture(640, 480)),
                "seconds": 10,
            },
            400,
            "image_tail",
            None,
        ),
        ({"seconds": "7"}, 400, "seconds", None),
        ({"size": "huge"}, 400, "size", None),
        ({"mode": "turbo"}, 400, "mode", None),
        ({"cfg_scale": 3}, 400, "cfg_scale", None),
        ({"input_reference": {"file_id": "file-1"}}, 400, "input_reference.file_id", None),
        ({"model": "no-such-model"}, 404, "model", "model_not_found"),
        ({"model": "kling-art"}, 400, "model", "model_not_video"),
        ({"prompt": "   "}, 400, "prompt", None),
        ({"duration": 5}, 400, "duration", "unknown_parameter"),
    ],
)
async def test_input_errors(client, fake, fields, status, param, code):
    r = await client.post("/v1/videos", json={"model": "kling-video", "prompt": "x", **fields})
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["param"] == param and set(error) == {"message", "type", "param", "code"}
    if code:
        assert error["code"] == code
    assert fake.state.requests == []
    assert (await client.get("/v1/videos")).json()["data"] == []


async def test_video_models_elsewhere(client, fake):
    ids = [m["id"] for m in (await client.get("/v1/models")).json()["data"]]
    assert "kling-video" in ids and "kling-art" in ids
    r = await client.post("/v1/images/generations", json={"model": "kling-video", "prompt": "x"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "model"
    r = await client.post("/v1/posts", json={"model": "kling-video", "topic": "x"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "model"


async def test_allowed_models_and_usage_rows(client, fake, services):
    _row, limited = await services.keys.create("limited", allowed_models=json.dumps(["kling-art"]))
    r = await client.post(
        "/v1/videos",
        json={"model": "kling-video", "prompt": "x"},
        headers={"Authorization": f"Bearer {limited}"},
    )
    assert r.status_code == 403 and r.json()["error"]["code"] == "model_not_allowed"
    video = await make(client)
    await client.get(f"/v1/videos/{video['id']}")
    await services.usage.flush()
    async with services.db.session() as session:
        rows = list((await session.execute(select(UsageRow).order_by(UsageRow.id))).scalars())
    assert [(u.method, u.endpoint, u.model, u.status) for u in rows] == [
        ("POST", "/v1/videos", "kling-video", 403),
        ("POST", "/v1/videos", "kling-video", 200),
        ("GET", "/v1/videos/{video_id}", "kling-video", 200),
    ]


# --- how jobs fail --------------------------------------------------------------------


async def test_upstream_failed_job(client, fake):
    fake.state.outcome = "failed"
    video = await wait_video(client, (await make(client))["id"], finished)
    SdkVideo.model_validate(video)
    assert video["status"] == "failed" and video["completed_at"] is not None
    assert video["error"]["code"] == "upstream_job_failed"
    assert FAILED_MESSAGE in video["error"]["message"]
    r = await client.get(f"/v1/videos/{video['id']}/content")
    assert r.status_code == 409 and r.json()["error"]["code"] == "video_failed"


async def test_upstream_refusal_is_a_content_policy_failure(client, fake):
    fake.state.outcome = "refused"
    video = await wait_video(client, (await make(client))["id"], finished)
    assert video["error"]["code"] == "content_policy_violation"
    assert REFUSAL_MESSAGE in video["error"]["message"]


async def test_content_policy_code_on_submit(client, fake):
    fake.state.fail_next_submit = [1301]
    video = await wait_video(client, (await make(client))["id"], finished)
    assert video["status"] == "failed"
    assert video["error"]["code"] == "content_policy_violation"
    assert "code 1301" in video["error"]["message"]
    assert len(submissions(fake)) == 1  # never retried


async def test_rate_limited_submit_is_retried(client, fake):
    fake.state.fail_next_submit = [1303]
    video = await wait_video(client, (await make(client))["id"], finished)
    assert video["status"] == "completed"
    assert [s["code"] for s in submissions(fake)] == [1303, 0]


async def test_upstream_auth_error_is_not_the_clients_key(client, fake):
    fake.state.auth_error = 1004
    video = await wait_video(client, (await make(client))["id"], finished)
    error = video["error"]
    assert error["code"] == "upstream_auth_failed"
    assert "your API key is fine" in error["message"] and "code 1004" in error["message"]
    assert ACCESS_KEY not in error["message"] and SECRET_KEY not in error["message"]


@pytest.mark.parametrize("kling_extra", [{"video_deadline": 0.3}])
async def test_never_finishing_job_fails_after_the_deadline(client, fake):
    fake.state.outcome = "never"
    video = await wait_video(client, (await make(client))["id"], finished)
    assert video["error"]["code"] == "upstream_job_timeout"
    assert "did not finish within 0.3 s" in video["error"]["message"]


async def test_transient_poll_errors_are_tolerated(client, fake):
    fake.state.fail_next_poll = [5000, 1302]
    video = await wait_video(client, (await make(client))["id"], finished)
    assert video["status"] == "completed"


async def test_a_broken_download_fails_the_video(client, fake):
    fake.state.video_content_type = "text/html"
    video = await wait_video(client, (await make(client))["id"], finished)
    assert video["status"] == "failed" and "not a video" in video["error"]["message"]


# --- durability -------------------------------------------------------------------------


async def test_a_job_whose_claim_ran_out_is_resumed_without_a_second_submission(
    client, fake, services
):
    first = services.videos
    fake.state.outcome = "never"
    video = await make(client, prompt="resume me")
    row = await wait_video(client, video["id"], lambda v: v["status"] == "in_progress")
    stored = await first.get(row["id"])
    assert stored.task_id is not None and stored.claimed_by == first.process_id
    # the process "dies": its job and its maintenance stop, nothing is released
    first._maintainer.cancel()
    first._running[row["id"]].cancel()
    await asyncio.sleep(0.05)
    table = Video.__table__
    async with services.db.engine.begin() as conn:
        await conn.execute(update(table).values(claimed_until=time.time() - 1))

    second = VideoRunner(
        services.settings, services.db, services.images, services.config, services.runner.slots
    )
    try:
        assert await second.resume_now() == 1
        assert await second.resume_now() == 0  # claimed now: nobody takes it twice
        resumed = await second.get(row["id"])
        assert resumed.claimed_by == second.process_id and resumed.runs == 2
        assert resumed.task_id == stored.task_id
        for task in fake.state.tasks.values():
            task["outcome"] = "succeed"
        done = await wait_video(client, row["id"], finished)
        assert done["status"] == "completed"
        assert len(submissions(fake)) == 1
        content = await client.get(f"/v1/videos/{row['id']}/content")
        assert content.content == fake.state.mp4
    finally:
        await second.shutdown()


async def _die_and_resume(services, video_id: str, between=None, **values) -> VideoRunner:
    """The first runner "dies" (its job and maintenance stop, nothing released), then
    `between()`, the row is changed by `values`, and a second runner takes the job over."""
    first = services.videos
    first._maintainer.cancel()
    first._running[video_id].cancel()
    await asyncio.sleep(0.05)
    if between is not None:
        between()
    async with services.db.engine.begin() as conn:
        await conn.execute(update(Video.__table__).values(claimed_until=time.time() - 1, **values))
    second = VideoRunner(
        services.settings, services.db, services.images, services.config, services.runner.slots
    )
    assert await second.resume_now() == 1
    return second


@pytest.mark.parametrize("from_image", [False, True])
async def test_a_lost_task_id_is_found_by_our_id_not_submitted_twice(
    client, fake, services, from_image
):
    # The crash between Kling accepting the job and its task id being stored: the
    # resumed job asks Kling for the job by its external_task_id (our video id).
    fake.state.outcome = "never"
    fields = {"input_reference": data_url(picture(400, 600))} if from_image else {}
    video = await make(client, prompt="lost id", **fields)
    await wait_video(client, video["id"], lambda v: v["status"] == "in_progress")
    [sent] = submissions(fake)
    assert sent["json"]["external_task_id"] == video["id"]
    stored = await services.videos.get(video["id"])
    second = await _die_and_resume(services, video["id"], task_id=None, submitted_at=None)
    try:
        for task in fake.state.tasks.values():
            task["outcome"] = "succeed"
        done = await wait_video(client, video["id"], finished)
        assert done["status"] == "completed"
        assert len(submissions(fake)) == 1
        resumed = await second.get(video["id"])
        assert resumed.task_id == stored.task_id and resumed.runs == 2
        # the deadline counts from the job's creation, the submission time being lost
        assert resumed.submitted_at == pytest.approx(resumed.created_at)
        lookups = [
            r for r in fake.state.requests
            if r["method"] == "GET" and r["path"].endswith("/" + video["id"])
        ]  # fmt: skip
        kind = "image2video" if from_image else "text2video"
        assert [r["path"] for r in lookups] == [f"/v1/videos/{kind}/{video['id']}"]
    finally:
        await second.shutdown()


async def test_a_resumed_job_kling_never_saw_is_submitted_once(client, fake, services):
    fake.state.outcome = "never"
    video = await make(client, prompt="never arrived")
    await wait_video(client, video["id"], lambda v: v["status"] == "in_progress")
    # as if the first submission never reached Kling
    second = await _die_and_resume(
        services, video["id"], fake.state.tasks.clear, task_id=None, submitted_at=None
    )
    try:
        fake.state.outcome = "succeed"
        done = await wait_video(client, video["id"], finished)
        assert done["status"] == "completed"
        assert len(submissions(fake)) == 2  # the lost one, and this one
        assert len(fake.state.tasks) == 1
    finally:
        await second.shutdown()


async def test_shutdown_releases_jobs_for_the_next_process(client, fake, services):
    fake.state.outcome = "never"
    video = await make(client)
    await wait_video(client, video["id"], lambda v: v["status"] == "in_progress")
    await services.videos.shutdown()
    stored = await services.videos.get(video["id"])
    assert stored.status == "in_progress" and stored.claimed_until == 0.0


async def test_expired_videos_are_swept(client, fake, services):
    video = await wait_video(client, (await make(client))["id"], finished)
    runner = services.videos
    row = await runner.get(video["id"])
    path = services.images.blobs.path(row.file_key)
    assert await runner.sweep_expired() == 0
    async with services.db.engine.begin() as conn:
        await conn.execute(update(Video.__table__).values(expires_at=time.time() - 1))
    assert await runner.sweep_expired() == 1
    assert await runner.get(video["id"]) is None and not path.exists()


def test_progress_estimate_never_goes_back():
    running = VideoStatus("running")
    assert estimated_progress(VideoStatus("queued"), 50, 0) == 0
    assert estimated_progress(running, 0, 0) == 1
    assert 50 < estimated_progress(running, 90, 0) < 70
    assert estimated_progress(running, 1e6, 0) == 95
    assert estimated_progress(running, 1, 40) == 40
    assert estimated_progress(VideoStatus("running", progress=0.5), 1, 10) == 50
    assert estimated_progress(VideoStatus("running", progress=1.0), 1, 10) == 99


# --- chat -------------------------------------------------------------------------------

LINK = re.compile(r"\((http://testserver/v1/videos/(video_[\w-]+)/content\?expires=\d+&sig=\w+)\)")


async def test_chat_streams_progress_and_a_signed_link(client, fake, app):
    fake.state.polls = 6
    payload = {
        "model": "kling-video",
        "stream": True,
        "messages": [{"role": "user", "content": "a paper boat on a river"}],
    }
    text = ""
    async with client.stream("POST", "/v1/chat/completions", json=payload) as r:
        assert r.status_code == 200
        async for line in r.aiter_lines():
            if line.startswith("data: {"):
                choices = json.loads(line[6:])["choices"]
                text += (choices[0]["delta"].get("content") or "") if choices else ""
    assert "🎬 `video_" in text and "⏳ in_progress" in text
    url, video_id = LINK.search(text).groups()
    assert text.rstrip().endswith(f"[{video_id}.mp4]({url})")
    async with RealAsyncClient(transport=httpx.ASGITransport(app=app)) as anonymous:
        r = await anonymous.get(url)
        assert r.status_code == 200 and r.content == fake.state.mp4
        forged = await anonymous.get(url[:-4] + "0000")
        assert forged.status_code == 404
    assert submissions(fake)[0]["json"]["prompt"] == "a paper boat on a river"


async def test_chat_without_stream_waits_and_takes_the_image_as_first_frame(client, fake):
    frame = picture(512, 512)
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "make it move"},
                {"type": "image_url", "image_url": {"url": data_url(frame)}},
            ],
        }
    ]
    r = await client.post(
        "/v1/chat/completions", json={"model": "kling-video", "messages": messages}
    )
    assert r.status_code == 200, r.text
    content = r.json()["choices"][0]["message"]["content"]
    assert "⏳" not in content and LINK.search(content)
    (sent,) = submissions(fake)
    assert sent["path"] == "/v1/videos/image2video"
    assert base64.b64decode(sent["json"]["image"]) == frame


async def test_chat_failure_is_an_error(client, fake):
    fake.state.outcome = "refused"
    messages = [{"role": "user", "content": "something forbidden"}]
    r = await client.post(
        "/v1/chat/completions", json={"model": "kling-video", "messages": messages}
    )
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == "content_policy_violation"
    small = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "x"},
                {"type": "image_url", "image_url": {"url": data_url(picture(100, 100))}},
            ],
        }
    ]
    r = await client.post("/v1/chat/completions", json={"model": "kling-video", "messages": small})
    assert r.status_code == 400 and r.json()["error"]["param"] == "input_reference"


# --- image models on Kling, and the config -----------------------------------------------


async def test_image_model_on_kling_through_images_generations(client, fake):
    r = await client.post(
        "/v1/images/generations",
        json={"model": "kling-art", "prompt": "a lantern", "response_format": "b64_json"},
    )
    assert r.status_code == 200, r.text
    assert base64.b64decode(r.json()["data"][0]["b64_json"]) == fake.state.png(0)
    (sent,) = [r for r in fake.state.requests if r["method"] == "POST"]
    assert sent["path"] == "/v1/images/generations" and sent["json"]["model_name"] == "kling-v1-5"


def test_a_video_model_needs_a_video_provider():
    raw = {
        "providers": {"kl": {"type": "kling", "access_key": "a", "secret_key": "b"}},
        "models": {"clip": {"type": "video", "provider": "local"}},
    }
    with pytest.raises(ConfigError, match="cannot do video"):
        build_config(ConfigFile.model_validate(raw), RealAsyncClient())
    raw["models"]["clip"]["provider"] = "kl"
    config = build_config(ConfigFile.model_validate(raw), RealAsyncClient())
    assert config.video_models["clip"].seconds == 5 and "clip" in config.model_ids()
