"""End to end: RedInk's provider files drive a real `inkgate serve` against fake
upstreams running as real processes, one case per RedInk provider type.

The gateway reloads the files while it runs, so one server serves every case.
"""

from __future__ import annotations

import io
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import httpx
import openai
import pytest
from PIL import Image

from tests.test_e2e import ROOT, _collect, _free_port, _server_env

MASTER = "sk-e2e-master-0123456789abcdef"
OPENAI_KEY = "sk-e2e-relay"
GEMINI_KEY = "e2e-gemini-key"


def _start(
    args: list[str], env: dict[str, str] | None = None
) -> tuple[subprocess.Popen, list[str]]:
    proc = subprocess.Popen(
        [sys.executable, *args], cwd=ROOT, env=env, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    output: list[str] = []
    threading.Thread(target=_collect, args=(proc, output), daemon=True).start()
    return proc, output


def _wait(url: str, proc: subprocess.Popen, output: list[str], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"{url}: process exited:\n{''.join(output)}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    pytest.fail(f"{url} not ready:\n{''.join(output)}")


def _stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Iterator[dict]:
    up_openai, up_gemini, gw = _free_port(), _free_port(), _free_port()
    data_dir = tmp_path_factory.mktemp("e2e-redink") / "data"
    data_dir.mkdir(parents=True)
    procs = []
    try:
        fake_o = _start(
            ["-m", "tests.fakes.openai_upstream", "--port", str(up_openai), "--api-key", OPENAI_KEY]
        )
        fake_g = _start(
            ["-m", "tests.fakes.gemini_upstream", "--port", str(up_gemini), "--api-key", GEMINI_KEY]
        )
        procs += [fake_o[0], fake_g[0]]
        _wait(f"http://127.0.0.1:{up_openai}/health", *fake_o)
        _wait(f"http://127.0.0.1:{up_gemini}/health", *fake_g)
        env = _server_env(None) | {
            "INKGATE_MASTER_KEY": MASTER,
            "INKGATE_CONFIG_RELOAD_SECONDS": "0.2",
            "RELAY_KEY": OPENAI_KEY,
            "GEMINI_KEY": GEMINI_KEY,
        }
        server = _start(
            ["-m", "gateway.cli", "serve", "--port", str(gw), "--data-dir", str(data_dir)], env
        )
        procs.append(server[0])
        _wait(f"http://127.0.0.1:{gw}/health", *server)
        yield {
            "base": f"http://127.0.0.1:{gw}",
            "data_dir": data_dir,
            "openai": f"http://127.0.0.1:{up_openai}",
            "gemini": f"http://127.0.0.1:{up_gemini}",
            "output": server[1],
        }
    finally:
        for proc in procs:
            _stop(proc)


def _openai_text(url: str, name: str) -> str:
    return (
        f"active_provider: {name}\nproviders:\n  {name}:\n    type: openai_compatible\n"
        f"    api_key: ${{RELAY_KEY}}\n    base_url: {url}/v1/\n"
        "    endpoint_type: /v1/chat/completions\n    model: Qwen3-14B\n"
    )


def _gemini_text(url: str, name: str) -> str:
    return (
        f"active_provider: {name}\nproviders:\n  {name}:\n    type: google_gemini\n"
        f"    api_key: ${{GEMINI_KEY}}\n    base_url: {url}\n    model: gemini-2.5-flash\n"
    )


def _image(kind: str, url: str, name: str, extra: str) -> str:
    return (
        f"active_provider: {name}\nproviders:\n  {name}:\n    type: {kind}\n"
        f"    base_url: {url}\n{extra}"
    )


CASES = {
    # name: (text file, image file, how to recognise the upstream's images)
    "openai+images": (
        lambda s: _openai_text(s["openai"], "t1"),
        lambda s: _image("image_api", s["openai"], "i1",
                         "    api_key: ${RELAY_KEY}\n    model: gpt-image-1\n    endpoint_type: images\n"),
        "openai",
    ),
    "openai+edits-serial": (
        lambda s: _openai_text(s["openai"], "t2"),
        lambda s: _image("image_api", s["openai"], "i2",
                         "    api_key: ${RELAY_KEY}\n    model: gemini-3.0-pro-image-preview\n"
                         "    endpoint_type: /v1/images/edits\n    high_concurrency: false\n"
                         "    short_prompt: false\n"),
        "openai",
    ),
    "openai+chat-image": (
        lambda s: _openai_text(s["openai"], "t3"),
        lambda s: _image("image_api", s["openai"], "i3",
                         "    api_key: ${RELAY_KEY}\n    model: gemini-2.5-flash-image\n"
                         "    endpoint_type: chat\n    high_concurrency: true\n"),
        "openai",
    ),
    "openai+openai_compatible-image": (
        lambda s: _openai_text(s["openai"], "t4"),
        lambda s: _image("openai_compatible", s["openai"] + "/v1", "i4",
                         "    api_key: ${RELAY_KEY}\n    model: dall-e-3\n"),
        "openai",
    ),
    "gemini+genai": (
        lambda s: _gemini_text(s["gemini"], "t5"),
        lambda s: _image("google_genai", s["gemini"], "i5",
                         "    api_key: ${GEMINI_KEY}\n    model: gemini-3-pro-image-preview\n"
                         "    image_size: 1K\n"),
        "gemini",
    ),
}  # fmt: skip


def _use(stack: dict, text: str, image: str, providers: tuple[str, str]) -> None:
    (stack["data_dir"] / "text_providers.yaml").write_text(text, encoding="utf-8")
    (stack["data_dir"] / "image_providers.yaml").write_text(image, encoding="utf-8")
    auth = {"Authorization": f"Bearer {MASTER}"}
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:  # until the running gateway has reloaded them
        r = httpx.get(
            f"{stack['base']}/admin/api/providers/test", params={"name": providers[1]}, headers=auth
        )
        if r.status_code == 200:  # the provider exists: the new files are in use
            return
        time.sleep(0.2)
    pytest.fail("the gateway did not pick up the RedInk files:\n" + "".join(stack["output"]))


@pytest.mark.parametrize("case", list(CASES))
def test_a_post_through_each_redink_provider_type(stack: dict, case: str) -> None:
    text, image, upstream = CASES[case]
    text_name = re.search(r"active_provider: (\w+)", text(stack)).group(1)
    image_name = re.search(r"active_provider: (\w+)", image(stack)).group(1)
    _use(stack, text(stack), image(stack), (f"text:{text_name}", f"image:{image_name}"))
    client = openai.OpenAI(base_url=f"{stack['base']}/v1", api_key=MASTER, max_retries=0)
    answer = client.chat.completions.create(
        model="redink", messages=[{"role": "user", "content": "三岁宝宝冬季保暖攻略 3页"}]
    )
    post = answer.model_extra["post"]
    assert post["status"] == "completed", post
    assert len(post["pages"]) == 3
    for page in post["pages"]:
        data = httpx.get(page["image_url"]).content
        with Image.open(io.BytesIO(data)) as im:
            im.load()  # the fake's marker is a text chunk after the pixels
            if upstream == "openai":  # the fake OpenAI marks its PNGs
                assert "inkgate-serial" in im.info, case
            else:  # the fake Gemini draws 3:4 at gemini-2.5-flash-image's 864x1184
                assert im.size == (864, 1184), case


def test_a_broken_edit_keeps_the_last_good_config(stack: dict) -> None:
    text, image, _ = CASES["openai+images"]
    _use(stack, text(stack), image(stack), ("text:t1", "image:i1"))
    (stack["data_dir"] / "image_providers.yaml").write_text(
        "active_provider: nope\nproviders: {}\n"
    )
    time.sleep(1)
    client = openai.OpenAI(base_url=f"{stack['base']}/v1", api_key=MASTER, max_retries=0)
    answer = client.images.generate(model="redink", prompt="冬季穿搭", n=2)
    assert len(answer.data) == 2
    assert "config not reloaded" in "".join(stack["output"])
