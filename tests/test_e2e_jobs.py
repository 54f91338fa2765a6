"""End to end: durable posts on a real `inkgate serve` against a fake OpenAI upstream
(uvicorn in a thread, so the test can count what it was asked).

- the gateway killed with SIGKILL mid-post and started again: the post completes and
  the pages stored before the kill are not requested again;
- a chat client that disconnects mid-stream finds the finished post afterwards;
- four posts at once never mix their pages: every URL answers with its own image.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import uvicorn
import yaml

from tests.fakes.openai_upstream import create_fake_openai
from tests.test_e2e import _free_port, _server_env
from tests.test_e2e_storage import Gateway

MASTER = "sk-e2e-jobs-master-0123456789"
AUTH = {"Authorization": f"Bearer {MASTER}"}
UPSTREAM_KEY = "sk-upstream-jobs"


class Upstream:
    """The fake OpenAI upstream served by uvicorn in a thread of this process."""

    def __init__(self, image_latency: float) -> None:
        self.app = create_fake_openai(
            api_key=UPSTREAM_KEY, image_latency=image_latency, outline_pages=6,
            image_width=240, image_height=320,
        )  # fmt: skip
        self.port = _free_port()
        config = uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> Upstream:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert time.monotonic() < deadline, "fake upstream did not start"
            time.sleep(0.05)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)

    def image_requests(self) -> list[dict]:
        return [r for r in self.app.state.requests if r["path"].startswith("/v1/images")]


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    with Upstream(image_latency=0.8) as up:
        yield up


def gateway_for(tmp_path, upstream: Upstream, **env_extra: str) -> Gateway:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    config = {
        "providers": {
            "fake": {
                "type": "openai",
                "base_url": f"http://127.0.0.1:{upstream.port}/v1",
                "api_key": UPSTREAM_KEY,
            }
        },
        "models": {
            "redink": {
                "type": "redink",
                "text_provider": "fake",
                "text_model": "gpt-4o-mini",
                "image_provider": "fake",
                "image_model": "gpt-image-1",
                "concurrency": 2,
            }
        },
    }
    (data_dir / "inkgate.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    env = _server_env(None)
    env.update(INKGATE_MASTER_KEY=MASTER, INKGATE_JOB_LEASE_SECONDS="3", **env_extra)
    return Gateway(data_dir, env)


def get_post(gateway: Gateway, post_id: str) -> dict:
    return httpx.get(f"{gateway.base}/v1/posts/{post_id}", headers=AUTH, timeout=30).json()


def wait_status(gateway: Gateway, post_id: str, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        post = get_post(gateway, post_id)
        if post["status"] not in ("generating",):
            return post
        time.sleep(0.2)
    pytest.fail(f"post still generating: {post}\n{''.join(gateway.output)[-3000:]}")


def test_killed_mid_post_then_restarted_finishes_without_redrawing(tmp_path, upstream) -> None:
    gateway = gateway_for(tmp_path, upstream)
    gateway.start()
    try:
        r = httpx.post(f"{gateway.base}/v1/posts", json={"topic": "秋天的咖啡馆探店"},
                       headers=AUTH, timeout=30)  # fmt: skip
        assert r.status_code == 200, r.text
        post_id = r.json()["id"]
        # the cover and the next two pages (2 at a time), then kill -9 mid-page
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            done = [p for p in get_post(gateway, post_id)["pages"] if p["status"] == "done"]
            if len(done) >= 3:
                break
            time.sleep(0.05)
        assert gateway.proc is not None
        gateway.proc.send_signal(signal.SIGKILL)
        gateway.proc.wait(timeout=10)
        asked_before = len(upstream.image_requests())

        gateway.start()  # a new process: the dead one's claim runs out after 3 s
        stored = {p["index"]: p["image_url"] for p in get_post(gateway, post_id)["pages"]
                  if p["status"] == "done"}  # fmt: skip
        assert 3 <= len(stored) < 6, stored
        post = wait_status(gateway, post_id)
        assert post["status"] == "completed", post
        # every page stored before the kill kept its image and was not asked for again
        for index, url in stored.items():
            assert post["pages"][index]["image_url"] == url
        asked_after = len(upstream.image_requests()) - asked_before
        assert asked_after == 6 - len(stored), (asked_after, stored)
        # the events tell the story: the outline again after the restart, one finish
        events = httpx.get(f"{gateway.base}/v1/posts/{post_id}/events", headers=AUTH,
                           timeout=30).text  # fmt: skip
        names = [ln[7:] for ln in events.splitlines() if ln.startswith("event: ")]
        assert names.count("outline") == 2 and names[-1] == "finished"
        assert names.count("page_done") == 6
        for page in post["pages"]:
            assert httpx.get(page["image_url"], timeout=30).status_code == 200
    finally:
        gateway.stop()


def test_disconnected_chat_client_finds_the_finished_post(tmp_path, upstream) -> None:
    gateway = gateway_for(tmp_path, upstream)
    gateway.start()
    try:
        payload = {"model": "redink", "stream": True,
                   "messages": [{"role": "user", "content": "雨天的书店 4页"}]}  # fmt: skip
        text = ""
        with httpx.stream("POST", f"{gateway.base}/v1/chat/completions", json=payload,
                          headers=AUTH, timeout=30) as r:  # fmt: skip
            for line in r.iter_lines():
                if line.startswith("data: {"):
                    choices = json.loads(line[6:])["choices"]
                    text += (choices[0]["delta"].get("content") or "") if choices else ""
                if "**大纲**" in text:
                    break  # the tab is closed after the outline
        post_id = text.split("]", 1)[0].lstrip("[")
        assert post_id.startswith("post_")
        post = wait_status(gateway, post_id)
        assert post["status"] == "completed" and len(post["pages"]) == 4
        assert all(httpx.get(p["image_url"], timeout=30).status_code == 200 for p in post["pages"])
    finally:
        gateway.stop()


def test_four_concurrent_posts_never_mix_pages(tmp_path) -> None:
    with Upstream(image_latency=0.2) as up:
        gateway = gateway_for(tmp_path, up)
        gateway.start()
        try:
            topics = ["秋天的咖啡馆", "rainy bookshop", "城市骑行路线", "weekend picnic"]

            def make(topic: str) -> dict:
                r = httpx.post(
                    f"{gateway.base}/v1/images/generations",
                    json={"model": "redink", "prompt": topic, "n": 5},
                    headers=AUTH,
                    timeout=120,
                )
                assert r.status_code == 200, r.text
                return r.json()

            with ThreadPoolExecutor(4) as pool:
                answers = list(pool.map(make, topics))
            urls = [item["url"] for answer in answers for item in answer["data"]]
            assert len(urls) == 20 and len(set(urls)) == 20
            for answer in answers:
                post = get_post(gateway, answer["post_id"])
                assert post["status"] == "completed"
                # the post's pages are exactly the URLs it answered, in order
                assert [p["image_url"] for p in post["pages"]] == [d["url"] for d in answer["data"]]
                for item in answer["data"]:
                    image = httpx.get(item["url"], timeout=30)
                    assert image.status_code == 200, item["url"]
                    assert image.headers["content-type"].startswith("image/")
            assert len({a["post_id"] for a in answers}) == 4
        finally:
            gateway.stop()
