from __future__ import annotations

import subprocess
import sys

import httpx
import pytest

from gateway.config import ConfigFile, build_config
from gateway.probe import probe_all
from tests.conftest import MASTER_KEY
from tests.fakes.gemini_upstream import create_fake_gemini
from tests.fakes.openai_upstream import create_fake_openai


def _config(providers: dict, models: dict, fake) -> tuple:
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=fake))
    return build_config(
        ConfigFile.model_validate({"providers": providers, "models": models}), http
    ), http


async def test_good_openai_provider() -> None:
    config, http = _config(
        {"relay": {"type": "openai", "base_url": "http://fake/v1", "api_key": "sk-fake-upstream"}},
        {"redink": {"type": "redink", "text_provider": "relay", "image_provider": "relay",
                    "image_model": "gpt-image-1"}},
        create_fake_openai(),
    )  # fmt: skip
    async with http:
        [report] = await probe_all(config, "relay", deep=True)
    assert report.ok, report
    assert [c.check for c in report.checks] == ["text", "models", "image"]
    assert "'gpt-image-1' among them" in report.checks[1].detail


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"api_key": "sk-wrong"}, "bad key"),
        ({"api_key": "sk-fake-upstream", "image_model": "dall-e-9"}, "wrong model"),
    ],
)
async def test_openai_problems_in_plain_words(options: dict, expected: str) -> None:
    config, http = _config(
        {"relay": {"type": "openai", "base_url": "http://fake/v1", **options}},
        {"poster": {"type": "image", "provider": "relay"}},
        create_fake_openai(),
    )
    async with http:
        [report] = await probe_all(config, "relay")
    assert not report.ok
    assert report.checks[0].detail.startswith(expected), report.checks[0].detail


async def test_unreachable() -> None:
    file = ConfigFile.model_validate(
        {"providers": {"dead": {"type": "openai", "base_url": "http://127.0.0.1:9/v1"}},
         "models": {"poster": {"type": "image", "provider": "dead"}}}
    )  # fmt: skip
    async with httpx.AsyncClient() as http:
        [report] = await probe_all(build_config(file, http), "dead")
    assert not report.ok and report.checks[0].detail.startswith("unreachable")


async def test_gemini_bad_key_and_good_key() -> None:
    fake = create_fake_gemini()
    for key, ok in (("nope", False), ("fake-gemini-key", True)):
        config, http = _config(
            {"g": {"type": "gemini", "base_url": "http://fake", "api_key": key}},
            {"redink": {"type": "redink", "text_provider": "g", "image_provider": "g"}},
            fake,
        )
        async with http:
            [report] = await probe_all(config, "g")
        assert report.ok is ok, report
        if not ok:
            assert all(c.detail.startswith("bad key") for c in report.checks)


async def test_admin_endpoint(client: httpx.AsyncClient, services) -> None:
    r = await client.get("/admin/api/providers/test")
    assert r.status_code == 200 and r.json()["ok"] is True
    assert r.json()["providers"][0]["provider"] == "local"
    assert (await client.get("/admin/api/providers/test?name=nope")).status_code == 404
    _, key = await services.keys.create("not-admin")
    r = await client.get("/admin/api/providers/test", headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 403 and r.json()["error"]["code"] == "permission_denied"
    assert MASTER_KEY not in r.text


def test_cli(tmp_path) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "providers", "test", "--data-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("OK   local (local)")
    missing = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "providers", "test", "nope", "--data-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert missing.returncode == 2 and "no provider named 'nope'" in missing.stderr
