"""End to end: `inkgate serve` as a real process with its bucket on a real S3 server
(moto over HTTP): uploads, read-through after local copies are cleared, an R2
outage (the S3 server stopped and started again; moto forgets its objects, so it comes
last), a restart with uploads still pending, and the `inkgate cache` commands."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import openai
import pytest

from tests.s3_server import DUMMY_KEY
from tests.test_e2e import ROOT, _collect, _free_port, _server_env

MASTER = "sk-e2e-storage-master-0123456789"
AUTH = {"Authorization": f"Bearer {MASTER}"}


class Gateway:
    def __init__(self, data_dir: Path, env: dict[str, str]) -> None:
        self.data_dir, self.env = data_dir, env
        self.port = _free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.output: list[str] = []

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "serve", "--port", str(self.port),
             "--data-dir", str(self.data_dir)],
            env=self.env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, encoding="utf-8",
        )  # fmt: skip
        threading.Thread(target=_collect, args=(self.proc, self.output), daemon=True).start()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"inkgate serve exited:\n{''.join(self.output)}")
            try:
                if httpx.get(f"{self.base}/health", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        pytest.fail(f"inkgate serve not ready:\n{''.join(self.output)}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                pytest.fail(f"inkgate serve did not stop:\n{''.join(self.output)}")

    def admin(self, method: str, path: str, **kwargs) -> httpx.Response:
        return httpx.request(
            method, f"{self.base}/admin/api{path}", headers=AUTH, timeout=30, **kwargs
        )

    def images(self, state: str | None = None) -> list[dict]:
        params = {"per_page": 200, **({"state": state} if state else {})}
        return self.admin("GET", "/images", params=params).json()["data"]

    def wait_uploaded(self, ids: set[str], timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if ids <= {i["id"] for i in self.images("uploaded")}:
                return
            time.sleep(0.2)
        pytest.fail(f"not uploaded: {ids}; images: {self.images()}")

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "gateway.cli", *args, "--data-dir", str(self.data_dir)],
            env=self.env, cwd=ROOT, capture_output=True, text=True, timeout=60,
        )  # fmt: skip


def image_id(url: str) -> str:
    return url.rsplit("/", 1)[1].rpartition(".")[0]


def test_storage_end_to_end(s3_bucket, tmp_path) -> None:
    server, bucket = s3_bucket
    env = _server_env(None)
    env.update(
        INKGATE_MASTER_KEY=MASTER,
        INKGATE_STORAGE="s3",
        INKGATE_S3_BUCKET=bucket,
        INKGATE_S3_ACCESS_KEY_ID=DUMMY_KEY,
        INKGATE_S3_SECRET_ACCESS_KEY=DUMMY_KEY,
        INKGATE_S3_ENDPOINT_URL=server.endpoint_url,
        INKGATE_S3_PREFIX="e2e/",
        INKGATE_LOG_LEVEL="INFO",
    )
    gateway = Gateway(tmp_path / "data", env)
    gateway.start()
    sdk = openai.OpenAI(base_url=f"{gateway.base}/v1", api_key=MASTER, max_retries=0)
    try:
        # 1. pages are uploaded by the worker in the app
        result = sdk.images.generate(model="redink", prompt="秋天的咖啡馆 2页", n=2)
        urls = [d.url for d in result.data]
        gateway.wait_uploaded({image_id(u) for u in urls})
        objects = server.client().list_objects_v2(Bucket=bucket)["Contents"]
        assert len(objects) == 2 and all(o["Key"].startswith("e2e/images/") for o in objects)

        # 2. local copies cleared: served again by reading through from the bucket
        original = httpx.get(urls[0], timeout=30).content
        cleared = gateway.admin("POST", "/cache/clear-local").json()
        assert cleared["cleared"] == 2
        again = httpx.get(urls[0], timeout=30)
        assert again.status_code == 200 and again.content == original
        thumb = httpx.get(urls[1].rsplit(".", 1)[0] + "/thumb", timeout=30)
        assert thumb.status_code == 200, (thumb.text, "".join(gateway.output)[-3000:])
        assert thumb.headers["content-type"] == "image/webp"

        # 3. an outage: images are still made and served; the upload waits
        server.stop()
        during = sdk.images.generate(model="redink", prompt="雨天的书店 2页", n=2).data[0].url
        assert httpx.get(during, timeout=30).status_code == 200
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            stats = gateway.admin("GET", "/cache/stats").json()
            errors = [i["last_error"] for i in gateway.images("pending") if i["last_error"]]
            if errors:
                break
            time.sleep(0.2)
        assert stats["pending"]["count"] == 2 and errors
        assert DUMMY_KEY not in "".join(gateway.output)  # never the secret in logs

        # 4. a restart while uploads are pending; R2 comes back meanwhile
        gateway.stop()
        server.start()
        server.create_bucket(bucket)
        gateway.start()
        gateway.wait_uploaded({image_id(during)}, timeout=40)
    finally:
        gateway.stop()
        if not server.running:
            server.start()

    # 5. the lifecycle from the command line
    stats = gateway.cli("cache", "stats")
    assert stats.returncode == 0, stats.stderr
    assert '"remote": {\n    "count": 4' in stats.stdout
    swept = gateway.cli("cache", "sweep")
    assert swept.returncode == 0 and '"ttl_evicted": 0' in swept.stdout, swept.stderr
