"""Browser fixtures: a real `inkgate serve` on loopback, driven by headless Chromium
through Playwright (the sync API, in plain test functions).

The browser is the system's Chromium: `INKGATE_CHROMIUM`, else `/usr/bin/chromium`,
`chromium` or `chromium-browser` on PATH. Playwright never downloads one. Without it
the tests skip, unless `INKGATE_REQUIRE_BROWSER=1` (set by `.ci/run`) makes that an
error. Screenshots of every step (and of a failure) go to `INKGATE_SCREENSHOTS/<test>/`,
else to `screenshots/<test>/` under pytest's temporary directory.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from tests.test_e2e import ROOT, _collect, _free_port, _server_env

# Read at import: the root conftest's autouse fixture removes INKGATE_* before each test.
CHROMIUM_ENV = os.environ.get("INKGATE_CHROMIUM", "")
REQUIRE_BROWSER = os.environ.get("INKGATE_REQUIRE_BROWSER") == "1"
SCREENSHOTS_ENV = os.environ.get("INKGATE_SCREENSHOTS", "")

# Fake secrets, hard-coded so a real key in the environment is never used.
MASTER = "sk-browser-master-0123456789abcdef"
USERNAME = "admin"
PASSWORD = "browser horse battery staple"
# the gateway's config: one plain image model on the built-in offline provider
CONFIG = {"models": {"poster": {"type": "image", "provider": "local"}}}
STARTUP_TIMEOUT = 30.0
# what a step may wait for in the page (ms): long enough for a slow CI machine
STEP_TIMEOUT_MS = 10_000


def find_chromium() -> str | None:
    if CHROMIUM_ENV:
        return CHROMIUM_ENV
    if os.access("/usr/bin/chromium", os.X_OK):
        return "/usr/bin/chromium"
    return shutil.which("chromium") or shutil.which("chromium-browser")


def _unavailable(reason: str) -> None:
    if REQUIRE_BROWSER:
        pytest.fail(f"{reason}, but INKGATE_REQUIRE_BROWSER=1", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def chromium_path() -> str:
    """The Chromium executable, or a skip (a failure under INKGATE_REQUIRE_BROWSER=1)."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        _unavailable("playwright is not installed (pip install -e '.[test]')")
    path = find_chromium()
    if CHROMIUM_ENV and not (path and os.access(path, os.X_OK)):
        pytest.fail(f"INKGATE_CHROMIUM={CHROMIUM_ENV!r} is not an executable", pytrace=False)
    if path is None:
        _unavailable("no Chromium found (apt-get install chromium, or set INKGATE_CHROMIUM)")
    return path


# -- the gateway ------------------------------------------------------------------------


class Gateway:
    """`inkgate serve` in a subprocess on a free loopback port, with its own data dir."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.port = _free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.output: list[str] = []
        self.env = _server_env(None)
        self.env["INKGATE_MASTER_KEY"] = MASTER
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        (self.data_dir / "inkgate.yaml").write_text(yaml.safe_dump(CONFIG), encoding="utf-8")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "serve", "--host", "127.0.0.1",
             "--port", str(self.port), "--data-dir", str(self.data_dir)],
            env=self.env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, encoding="utf-8",
        )  # fmt: skip
        threading.Thread(target=_collect, args=(self.proc, self.output), daemon=True).start()
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                time.sleep(0.2)  # let the reader catch the last lines
                pytest.fail(f"inkgate serve exited:\n{''.join(self.output)}")
            try:
                if httpx.get(f"{self.base}/health", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        pytest.fail(f"inkgate serve not ready after {STARTUP_TIMEOUT}s:\n{''.join(self.output)}")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)

    def v1(self, method: str, path: str, key: str, **kwargs) -> httpx.Response:
        headers = {"Authorization": f"Bearer {key}"}
        return httpx.request(method, f"{self.base}/v1{path}", headers=headers, timeout=30, **kwargs)

    def admin_api(self, method: str, path: str, **kwargs) -> httpx.Response:
        """`/admin/api` with the master key, to check what the browser changed."""
        headers = {"Authorization": f"Bearer {MASTER}"}
        return httpx.request(
            method, f"{self.base}/admin/api{path}", headers=headers, timeout=30, **kwargs
        )


@pytest.fixture
def gateway(tmp_path) -> Iterator[Gateway]:
    server = Gateway(tmp_path / "data")
    server.start()
    try:
        yield server
    finally:
        server.stop()


# -- the browser ------------------------------------------------------------------------


@pytest.fixture(scope="session")
def screenshots_root(tmp_path_factory) -> Path:
    if SCREENSHOTS_ENV:
        root = Path(SCREENSHOTS_ENV).resolve()
    else:
        root = tmp_path_factory.getbasetemp() / "screenshots"
    root.mkdir(parents=True, exist_ok=True)
    return root


def _file_name(text: str) -> str:
    return re.sub(r"[^\w.-]+", "-", text).strip("-")


class Dashboard:
    """One browser tab on the gateway, with the checks every visited page gets: no
    console error (CSP violations are console errors), no uncaught exception, no 5xx,
    and no secret in the HTML."""

    def __init__(self, page, gateway: Gateway, shots: Path) -> None:
        self.page = page
        self.gateway = gateway
        self.shots = shots
        self.errors: list[str] = []
        # label → value that must never be in a page's HTML
        self.secrets: dict[str, str] = {"master key": MASTER, "admin password": PASSWORD}
        self._count = 0
        page.on("console", self._on_console)
        page.on("pageerror", lambda exc: self.errors.append(f"uncaught: {exc}"))
        page.on("response", self._on_response)

    def _on_console(self, message) -> None:
        if message.type == "error":
            self.errors.append(f"console: {message.text} ({message.location.get('url', '')})")

    def _on_response(self, response) -> None:
        if response.status >= 500:
            self.errors.append(f"{response.status} from {response.request.method} {response.url}")

    def goto(self, path: str):
        response = self.page.goto(self.gateway.base + path)
        assert response is not None
        return response

    def path(self) -> str:
        """The current URL without the origin."""
        return self.page.url.removeprefix(self.gateway.base)

    def shot(self, name: str) -> Path:
        self._count += 1
        file = self.shots / f"{self._count:02d}-{_file_name(name)}.png"
        self.page.screenshot(path=str(file), full_page=True)
        return file

    def check(self, step: str, *, allow: tuple[str, ...] = ()) -> None:
        """Screenshot the page, then: no secret in its HTML, no error so far (except
        console messages containing one of `allow`)."""
        self.shot(step)
        html = self.page.content()
        for label, value in self.secrets.items():
            assert value not in html, f"{step}: the {label} is in the HTML of {self.path()}"
        errors = [e for e in self.errors if not any(a in e for a in allow)]
        self.errors.clear()
        assert not errors, f"{step}: errors on {self.path()}:\n" + "\n".join(errors)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.when == "call":
        item.browser_call_failed = report.failed


@pytest.fixture
def dashboard(request, chromium_path: str, gateway: Gateway, screenshots_root: Path):
    """A fresh headless Chromium with one tab (1280×900, English) on `gateway`."""
    from playwright.sync_api import sync_playwright

    shots = screenshots_root / _file_name(request.node.name)
    shutil.rmtree(shots, ignore_errors=True)
    shots.mkdir(parents=True)
    args = ["--disable-dev-shm-usage", "--disable-gpu"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        args.append("--no-sandbox")  # Chromium's sandbox refuses to run as root
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=chromium_path, headless=True, args=args
        )
        context = browser.new_context(
            viewport={"width": 1280, "height": 900}, locale="en-US", color_scheme="light"
        )
        context.grant_permissions(["clipboard-read", "clipboard-write"], origin=gateway.base)
        context.set_default_timeout(STEP_TIMEOUT_MS)
        page = context.new_page()
        board = Dashboard(page, gateway, shots)
        try:
            yield board
        finally:
            if getattr(request.node, "browser_call_failed", False):
                try:
                    board.shot("failure")
                except Exception:  # the page may be gone; the failure itself matters more
                    pass
            context.close()
            browser.close()
