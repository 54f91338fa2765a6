"""End to end: `inkgate serve --workers 2`, real processes on loopback, on SQLite and
PostgreSQL: one banner, two worker processes behind one port, posts made and images
served whichever worker takes a request, and a clean stop."""

from __future__ import annotations

import concurrent.futures
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest

from bench.flow import spawned_workers
from tests.conftest import DB_BACKENDS, _drop_pg_database, _fresh_pg_database
from tests.test_e2e import ROOT, _free_port, _server_env, _wait_until_ready, start_serve, stop_serve


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads worker processes from /proc")
@pytest.mark.parametrize("backend", DB_BACKENDS)
def test_two_workers_behind_one_port(backend: str, tmp_path) -> None:
    database_url, pg_name = _fresh_pg_database() if backend == "postgresql" else (None, None)
    data_dir = tmp_path / "data"
    port = _free_port()
    proc, output, reader = start_serve(port, data_dir, _server_env(database_url), "--workers", "2")
    base = f"http://127.0.0.1:{port}"
    try:
        key = _wait_until_ready(proc, base, output)
        # the banner once, from the supervisor; its key works on every worker
        text = "".join(output)
        assert text.count("InkGate is starting 2 workers.") == 1
        assert text.count("API key         : sk-ink-") == 1
        assert text.count("Dashboard setup : open") == 1
        assert "InkGate is running." not in text
        deadline = time.monotonic() + 30
        while len(spawned_workers(proc.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        workers = spawned_workers(proc.pid)
        assert len(workers) == 2
        assert (data_dir / "inkgate.db").exists() == (database_url is None)

        # many requests on new connections, whichever worker accepts each
        def models(_: int) -> int:
            r = httpx.get(f"{base}/v1/models", headers={"Authorization": f"Bearer {key}"})
            return r.status_code

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            assert set(pool.map(models, range(24))) == {200}
        bad = httpx.get(f"{base}/v1/models", headers={"Authorization": "Bearer sk-ink-nope"})
        assert bad.status_code == 401 and bad.json()["error"]["code"] == "invalid_api_key"

        # a post's images, each fetched on a new connection: stored by one worker,
        # served by either (the database and the disk are shared)
        sdk = openai.OpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0)
        made = sdk.images.generate(model="redink", prompt="a cat cafe", n=3)
        urls = [item.url for item in made.data]
        assert len(urls) == 3
        for url in urls * 3:
            r = httpx.get(url, timeout=30)
            assert r.status_code == 200 and r.headers["content-type"] == "image/png"
            assert r.content.startswith(b"\x89PNG")
    finally:
        code = stop_serve(proc, reader)
        if pg_name:
            _drop_pg_database(pg_name)
    assert code == 0, "".join(output)[-2000:]
    assert spawned_workers(proc.pid) == []


def test_workers_must_be_at_least_one(tmp_path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "serve", "--workers", "0",
         "--data-dir", str(tmp_path / "data")],
        env=_server_env(None), cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2
    assert "INKGATE_WORKERS must be at least 1" in done.stderr
    assert not (tmp_path / "data").exists()


def test_workers_setting_from_the_environment_and_the_command_line() -> None:
    from gateway.cli import _settings, build_parser
    from gateway.settings import Settings

    assert Settings.from_env({}).workers == 1
    assert Settings.from_env({"INKGATE_WORKERS": "3"}).workers == 3
    with pytest.raises(ValueError, match="at least 1"):
        Settings.from_env({"INKGATE_WORKERS": "0"})
    args = build_parser().parse_args(["serve", "--workers", "4"])
    assert _settings(args).workers == 4
    assert _settings(build_parser().parse_args(["serve"])).workers == Settings.from_env().workers
