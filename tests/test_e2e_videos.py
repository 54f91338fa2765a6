"""End to end: videos on a real `inkgate serve` against the Kling fake on loopback
(uvicorn in a thread, so the test can count what it was asked), driven by the OpenAI
Python SDK.

- `client.videos.create` with an uploaded first frame, `poll`, `list`,
  `download_content` (an MP4: its `ftyp` box), `delete`;
- the gateway killed with SIGKILL while the upstream task runs and started again: the
  video completes by polling the stored task, without a second upstream submission.
"""

from __future__ import annotations

import io
import signal
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
import uvicorn
import yaml
from openai import OpenAI
from PIL import Image

from tests.fakes.kling_upstream import ACCESS_KEY, SECRET_KEY, create_fake_kling
from tests.test_e2e import _free_port, _server_env
from tests.test_e2e_storage import Gateway

MASTER = "sk-e2e-videos-master-0123456789"


class KlingUpstream:
    """The Kling fake served by uvicorn in a thread of this process."""

    def __init__(self, polls: int = 3) -> None:
        self.app = create_fake_kling(polls=polls)
        self.port = _free_port()
        config = uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> KlingUpstream:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert time.monotonic() < deadline, "the Kling fake did not start"
            time.sleep(0.05)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)

    def submissions(self) -> list[dict]:
        return [
            r
            for r in self.app.state.requests
            if r["method"] == "POST" and r["path"].startswith("/v1/videos/")
        ]


@pytest.fixture
def kling() -> Iterator[KlingUpstream]:
    with KlingUpstream() as up:
        yield up


def gateway_for(tmp_path, kling: KlingUpstream) -> Gateway:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    config = {
        "providers": {
            "kl": {
                "type": "kling",
                "base_url": f"http://127.0.0.1:{kling.port}",
                "access_key": ACCESS_KEY,
                "secret_key": SECRET_KEY,
                "poll_interval": 0.05,
                "video_deadline": 120,
            }
        },
        "models": {"kling-video": {"type": "video", "provider": "kl", "model": "kling-v1-6"}},
    }
    (data_dir / "inkgate.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    env = _server_env(None)
    env.update(INKGATE_MASTER_KEY=MASTER, INKGATE_JOB_LEASE_SECONDS="3")
    return Gateway(data_dir, env)


def sdk(gateway: Gateway) -> OpenAI:
    return OpenAI(base_url=f"{gateway.base}/v1", api_key=MASTER, max_retries=0, timeout=30)


def frame() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (640, 480), (220, 150, 60)).save(buffer, "PNG")
    return buffer.getvalue()


def test_openai_sdk_creates_polls_lists_downloads_and_deletes(tmp_path, kling) -> None:
    gateway = gateway_for(tmp_path, kling)
    gateway.start()
    try:
        client = sdk(gateway)
        video = client.videos.create(
            model="kling-video",
            prompt="the lantern swings in the wind",
            input_reference=("frame.png", frame(), "image/png"),
            seconds="5",  # type: ignore[arg-type]  (Kling's durations are 5 and 10)
        )
        assert video.object == "video" and video.status == "queued" and video.seconds == "5"
        done = client.videos.poll(video.id, poll_interval_ms=50)
        assert done.status == "completed" and done.progress == 100, done
        assert done.error is None and done.completed_at is not None
        assert [v.id for v in client.videos.list()] == [video.id]

        content = client.videos.download_content(video.id)
        data = content.read()
        assert data[4:8] == b"ftyp" and data == kling.app.state.mp4
        (sent,) = kling.submissions()
        assert sent["path"] == "/v1/videos/image2video"
        assert (sent["json"]["model_name"], sent["json"]["duration"]) == ("kling-v1-6", "5")

        deleted = client.videos.delete(video.id)
        assert deleted.deleted is True and deleted.object == "video.deleted"
        assert list(client.videos.list()) == []
    finally:
        gateway.stop()


def test_killed_mid_job_then_restarted_completes_without_a_second_submission(
    tmp_path, kling
) -> None:
    kling.app.state.outcome = "never"  # the upstream task runs until the test lets it end
    gateway = gateway_for(tmp_path, kling)
    gateway.start()
    try:
        client = sdk(gateway)
        video = client.videos.create(model="kling-video", prompt="a paper boat on a river")
        deadline = time.monotonic() + 30
        while client.videos.retrieve(video.id).status != "in_progress":
            assert time.monotonic() < deadline, "the job never started"
            time.sleep(0.05)
        assert len(kling.submissions()) == 1
        assert gateway.proc is not None
        gateway.proc.send_signal(signal.SIGKILL)
        gateway.proc.wait(timeout=10)

        for task in kling.app.state.tasks.values():
            task["outcome"] = "succeed"
        gateway.start()  # a new process: the dead one's claim runs out after 3 s
        client = sdk(gateway)
        done = client.videos.poll(video.id, poll_interval_ms=100)
        assert done.status == "completed", (done, "".join(gateway.output)[-3000:])
        assert len(kling.submissions()) == 1  # the stored task id was polled, not resubmitted
        assert client.videos.download_content(video.id).read() == kling.app.state.mp4
        # the gateway's URL works as plain HTTP with the key too
        r = httpx.get(
            f"{gateway.base}/v1/videos/{video.id}/content",
            headers={"Authorization": f"Bearer {MASTER}", "Range": "bytes=0-7"},
            timeout=30,
        )
        assert r.status_code == 206 and r.content[4:8] == b"ftyp"
    finally:
        gateway.stop()
