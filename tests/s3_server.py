"""A real S3-compatible server for tests: moto's HTTP server in a subprocess.

`MotoServer` runs `python -m moto.server` on a fixed free port chosen at
construction, so it can be stopped (to simulate an R2 outage) and started again
on the same endpoint. moto keeps its state in memory: after a restart every
bucket is gone and must be recreated.

Fixtures: `moto_server` (session-scoped) and `s3_bucket` (per test: makes sure
the server is running and creates a fresh, uniquely named bucket).
"""

from __future__ import annotations

import atexit
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest
from botocore.config import Config

DUMMY_KEY = "testing"
REGION = "us-east-1"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class MotoServer:
    """moto's S3 server over HTTP on 127.0.0.1:<port>, as a subprocess."""

    def __init__(self, port: int | None = None, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = port or _free_port()
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_dir = Path(tempfile.mkdtemp(prefix="moto-server-"))
        self._log_path = self._log_dir / "server.log"
        self._atexit_registered = False
        self._client: Any = None

    @property
    def endpoint_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 20.0) -> None:
        """Spawn the server and wait until it answers HTTP. No-op when running."""
        if self.running:
            return
        env = dict(os.environ)
        env.pop("MOTO_PORT", None)
        # Dummy credentials so nothing in the environment is ever used.
        env.update(AWS_ACCESS_KEY_ID=DUMMY_KEY, AWS_SECRET_ACCESS_KEY=DUMMY_KEY)
        log = self._log_path.open("ab")
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", self.host, "-p", str(self.port)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
        finally:
            log.close()
        if not self._atexit_registered:
            atexit.register(self.stop)
            self._atexit_registered = True
        deadline = time.monotonic() + timeout
        with httpx.Client(trust_env=False, timeout=1.0) as http:
            while True:
                if self._proc.poll() is not None:
                    code = self._proc.returncode
                    self._proc = None
                    raise RuntimeError(
                        f"moto server exited with {code} on port {self.port}:\n{self._log_tail()}"
                    )
                try:
                    http.get(f"{self.endpoint_url}/moto-api/")
                    return
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(
                        f"moto server did not answer within {timeout}s:\n{self._log_tail()}"
                    )
                time.sleep(0.05)

    def stop(self) -> None:
        """Terminate the server and wait for it. No-op when stopped."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)

    def client(self) -> Any:
        """A boto3 S3 client for this server (dummy credentials; created once, reused)."""
        if self._client is None:
            self._client = boto3.session.Session().client(
                "s3",
                endpoint_url=self.endpoint_url,
                region_name=REGION,
                aws_access_key_id=DUMMY_KEY,
                aws_secret_access_key=DUMMY_KEY,
                config=Config(
                    s3={"addressing_style": "path"},
                    retries={"max_attempts": 2, "mode": "standard"},
                    connect_timeout=2,
                    read_timeout=10,
                ),
            )
        return self._client

    def create_bucket(self, name: str) -> str:
        self.client().create_bucket(Bucket=name)
        return name

    def _log_tail(self, chars: int = 4000) -> str:
        try:
            return self._log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def __repr__(self) -> str:
        return f"MotoServer({self.endpoint_url}, running={self.running})"


@pytest.fixture(scope="session")
def moto_server() -> Iterator[MotoServer]:
    """One moto server for the whole session, stopped at the end."""
    server = MotoServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_bucket(moto_server: MotoServer) -> tuple[MotoServer, str]:
    """(server, bucket): the server is running (restarted if a test stopped it) and
    the bucket is new and empty."""
    moto_server.start()
    name = f"test-{uuid.uuid4().hex[:20]}"
    moto_server.create_bucket(name)
    return moto_server, name
