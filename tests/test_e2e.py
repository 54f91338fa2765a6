"""End to end: `inkgate serve` as a real process, driven by the official `openai` SDK.

The server runs on the built-in offline provider, once per database backend for
the whole module. The `inkgate keys` commands run as subprocesses next to it.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest
from PIL import Image as PILImage

from tests.conftest import DB_BACKENDS, _drop_pg_database, _fresh_pg_database

ROOT = Path(__file__).resolve().parents[1]
STARTUP_TIMEOUT = 30.0
BANNER_KEY = re.compile(r"^\s*API key\s*:\s*(sk-ink-\S+)\s*$", re.M)
IMAGE_MD = re.compile(r"!\[(?:第\d+页|Page \d+)[^\]]*\]\((http://[^)\s]+/images/img_[\w-]+\.png)\)")
ZIP_MD = re.compile(r"\((http://[^)\s]+/v1/posts/(post_[\w-]+)/download\?expires=\d+&sig=\w+)\)")
WRONG_KEY = "sk-ink-this-key-does-not-exist-0000000000"


@dataclass
class Server:
    base: str
    key: str
    data_dir: Path
    env: dict[str, str]
    output: list[str]

    def sdk(self, key: str | None = None) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.base}/v1", api_key=key or self.key, max_retries=0)

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """`inkgate keys --data-dir DIR ARGS...` against the running server's data."""
        return subprocess.run(
            [sys.executable, "-m", "gateway.cli", "keys", "--data-dir", str(self.data_dir), *args],
            env=self.env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )

    def create_key(self, name: str) -> tuple[str, str]:
        """A new key's (id, plaintext)."""
        done = self.cli("create", "--name", name)
        assert done.returncode == 0, done.stderr
        key_id = re.search(r"Created key (\w+)", done.stdout).group(1)
        plaintext = re.search(r"^(sk-ink-\S+)$", done.stdout, re.M).group(1)
        return key_id, plaintext


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _server_env(database_url: str | None) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("INKGATE_") and k not in ("DATABASE_URL", "PYTHONPATH")
    }
    env["PYTHONUNBUFFERED"] = "1"
    env["INKGATE_LOG_LEVEL"] = "WARNING"
    if database_url:
        env["DATABASE_URL"] = database_url
    return env


@pytest.fixture(scope="module", params=DB_BACKENDS)
def server(request: pytest.FixtureRequest, tmp_path_factory) -> Iterator[Server]:
    pg_name = None
    database_url = None
    if request.param == "postgresql":
        database_url, pg_name = _fresh_pg_database()
    data_dir = tmp_path_factory.mktemp("e2e") / "data"
    port = _free_port()
    env = _server_env(database_url)
    proc, output, reader = start_serve(port, data_dir, env)
    base = f"http://127.0.0.1:{port}"
    try:
        key = _wait_until_ready(proc, base, output)
        # the server really uses the backend under test
        assert (data_dir / "inkgate.db").exists() == (database_url is None)
        yield Server(base, key, data_dir, env, output)
    finally:
        stop_serve(proc, reader)
        if pg_name:
            _drop_pg_database(pg_name)


def start_serve(
    port: int, data_dir: Path, env: dict[str, str], *extra: str
) -> tuple[subprocess.Popen, list[str], threading.Thread]:
    """`inkgate serve` on 127.0.0.1:`port`; its output lines are collected as they come."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "serve", "--host", "127.0.0.1",
         "--port", str(port), "--data-dir", str(data_dir), *extra],
        env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, encoding="utf-8",
    )  # fmt: skip
    output: list[str] = []
    reader = threading.Thread(target=_collect, args=(proc, output), daemon=True)
    reader.start()
    return proc, output, reader


def stop_serve(proc: subprocess.Popen, reader: threading.Thread) -> int | None:
    """SIGTERM, then its exit code (None when it had to be killed)."""
    proc.send_signal(signal.SIGTERM)
    try:
        code = proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)
        code = None
    reader.join(timeout=5)
    if proc.stdout is not None:
        proc.stdout.close()
    return code


def _collect(proc: subprocess.Popen, output: list[str]) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        output.append(line)


def _wait_until_ready(proc: subprocess.Popen, base: str, output: list[str]) -> str:
    """The API key from the first-start banner, once `/health` answers."""
    deadline = time.monotonic() + STARTUP_TIMEOUT
    healthy = False
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            time.sleep(0.2)  # let the reader catch the last lines
            pytest.fail(f"inkgate serve exited with {proc.returncode}:\n{''.join(output)}")
        if not healthy:
            try:
                healthy = httpx.get(f"{base}/health", timeout=2).status_code == 200
            except httpx.TransportError:
                pass
        if healthy:
            match = BANNER_KEY.search("".join(output))
            if match:
                return match.group(1)
        time.sleep(0.1)
    pytest.fail(f"inkgate serve not ready after {STARTUP_TIMEOUT}s:\n{''.join(output)}")


def _open_png(data: bytes) -> PILImage.Image:
    image = PILImage.open(io.BytesIO(data))
    image.load()
    assert image.format == "PNG"
    return image


def _download_card(url: str) -> PILImage.Image:
    r = httpx.get(url, timeout=30)  # image URLs are public: no key
    assert r.status_code == 200, (url, r.text[:200])
    assert r.headers["content-type"] == "image/png"
    image = _open_png(r.content)
    assert image.size == (1080, 1440)
    return image


@pytest.fixture(scope="module")
def zh_post(server: Server):
    """One Chinese post made through the SDK, shared by the tests that read it."""
    return server.sdk().chat.completions.create(
        model="redink", messages=[{"role": "user", "content": "秋天的咖啡馆探店 4页"}]
    )


def test_models_list(server: Server) -> None:
    ids = [m.id for m in server.sdk().models.list()]
    assert "redink" in ids and "redink-plan" in ids


def test_chat_non_stream(server: Server, zh_post) -> None:
    message = zh_post.choices[0].message
    assert message.role == "assistant" and zh_post.choices[0].finish_reason == "stop"
    link, _, content = message.content.partition("\n\n")
    post_id = zh_post.model_extra["post"]["id"]
    assert link.startswith(f"[{post_id}]: {server.base}/v1/posts/{post_id}/download?")
    assert content.startswith("**大纲**（共 4 页）")
    assert "![第1页" in content and "### 发布文案" in content
    urls = IMAGE_MD.findall(content)
    assert len(urls) == 4
    assert all(url.startswith(server.base) for url in urls)

    post = zh_post.model_extra["post"]
    assert post == zh_post.to_dict()["post"]
    assert post["status"] == "completed"
    assert len(post["pages"]) == 4
    assert [p["status"] for p in post["pages"]] == ["done"] * 4
    assert [p["image_url"] for p in post["pages"]] == urls
    for url in urls:
        _download_card(url)
    assert zh_post.usage is not None and zh_post.usage.total_tokens > 0


def test_chat_stream(server: Server) -> None:
    stream = server.sdk().chat.completions.create(
        model="redink",
        messages=[{"role": "user", "content": "home coffee brewing in 3 pages"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert len(chunks) > 3
    assert chunks[0].choices[0].delta.role == "assistant"
    content_chunks = [c for c in chunks if c.choices and c.choices[0].delta.content]
    assert "Download all images (ZIP)" in content_chunks[-1].choices[0].delta.content
    assert ZIP_MD.search(content_chunks[-1].choices[0].delta.content)
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    usage = [c for c in chunks if c.usage is not None]
    assert len(usage) == 1 and usage[0].choices == [] and usage[0].usage.total_tokens > 0
    assert chunks[-1] is usage[0]

    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert content.count("![Page ") == 3
    urls = IMAGE_MD.findall(content)
    assert len(urls) == 3
    for url in urls:
        _download_card(url)


def test_raw_stream_lines_are_small_and_carry_no_base64(server: Server) -> None:
    lines: list[str] = []
    with httpx.stream(
        "POST",
        f"{server.base}/v1/chat/completions",
        headers={"Authorization": f"Bearer {server.key}"},
        json={
            "model": "redink",
            "stream": True,
            "messages": [{"role": "user", "content": "home coffee brewing in 3 pages"}],
        },
        timeout=60,
    ) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            lines.append(line)
    assert lines
    for line in lines:
        assert len(line.encode()) < 64 * 1024
        assert "base64" not in line
    data = [line for line in lines if line.startswith("data: ")]
    assert data[-1] == "data: [DONE]"
    for line in data[:-1]:
        assert json.loads(line.removeprefix("data: "))["object"] == "chat.completion.chunk"


def test_images_generate_urls(server: Server) -> None:
    result = server.sdk().images.generate(
        model="redink", prompt="a weekend in Kyoto: temples and tea", n=3
    )
    assert len(result.data) == 3
    for item in result.data:
        assert item.url and item.revised_prompt
        assert item.b64_json is None
        _download_card(item.url)


def test_images_generate_b64(server: Server) -> None:
    result = server.sdk().images.generate(
        model="redink",
        prompt="a weekend in Kyoto: temples and tea",
        n=3,
        response_format="b64_json",
    )
    assert len(result.data) == 3
    for item in result.data:
        assert item.url is None and item.revised_prompt
        image = _open_png(base64.b64decode(item.b64_json))
        assert image.size == (1080, 1440)


def test_zip_link_without_header_and_other_owner_404(server: Server, zh_post) -> None:
    match = ZIP_MD.search(zh_post.choices[0].message.content)
    assert match, zh_post.choices[0].message.content
    link, post_id = match.groups()
    r = httpx.get(link, timeout=30)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(r.content)) as archive:
        names = sorted(archive.namelist())
        assert names == ["page_01.png", "page_02.png", "page_03.png", "page_04.png"]
        for name in names:
            assert _open_png(archive.read(name)).size == (1080, 1440)

    # the owner may download with the header; another key may not see the post
    download = f"{server.base}/v1/posts/{post_id}/download"
    own = httpx.get(download, headers={"Authorization": f"Bearer {server.key}"}, timeout=30)
    assert own.status_code == 200
    _, other = server.create_key("other")
    r = httpx.get(download, headers={"Authorization": f"Bearer {other}"}, timeout=30)
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "post_not_found"
    # a tampered signature is the same 404
    tampered = re.sub(r"sig=\w+", "sig=" + "0" * 32, link)
    assert httpx.get(tampered, timeout=30).status_code == 404


def test_wrong_key_is_authentication_error(server: Server) -> None:
    with pytest.raises(openai.AuthenticationError) as info:
        server.sdk(WRONG_KEY).models.list()
    assert info.value.status_code == 401
    assert WRONG_KEY not in str(info.value)


def test_unknown_model_is_not_found(server: Server) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        server.sdk().chat.completions.create(
            model="no-such-model", messages=[{"role": "user", "content": "hi"}]
        )
    assert info.value.code == "model_not_found"
    assert info.value.body["type"] == "invalid_request_error"


def test_keys_list_and_revoke(server: Server) -> None:
    listed = server.cli("list")
    assert listed.returncode == 0, listed.stderr
    default = [line for line in listed.stdout.splitlines() if line.endswith("  default")]
    assert len(default) == 1 and "active" in default[0]
    assert default[0].split()[1].rstrip("…") == server.key[:13]

    key_id, plaintext = server.create_key("doomed")
    assert server.sdk(plaintext).models.list().data
    revoked = server.cli("revoke", key_id)
    assert revoked.returncode == 0, revoked.stderr
    assert f"Revoked key {key_id}" in revoked.stdout
    with pytest.raises(openai.AuthenticationError):
        server.sdk(plaintext).models.list()
    assert server.sdk().models.list().data  # the default key still works
    listed = server.cli("list").stdout
    assert any(key_id in line and "revoked" in line for line in listed.splitlines())


def test_keys_accepts_data_dir_after_the_subcommand(server: Server) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "gateway.cli",
            "keys",
            "create",
            "--name",
            "trailing",
            "--data-dir",
            str(server.data_dir),
        ],
        env=server.env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "Created key" in done.stdout
