"""`inkgate admin setup-token | create-user | reset-password` against a real database file."""

from __future__ import annotations

import subprocess
import sys

from tests.admin.conftest import sign_in


def run(data_dir, *args: str, stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", "admin", *args, "--data-dir", str(data_dir)],
        input=stdin, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def test_setup_token_create_user_and_reset_password(tmp_path) -> None:
    data = tmp_path / "data"
    r = run(data, "setup-token")
    assert r.returncode == 0 and "setup-" in r.stdout
    r = run(data, "create-user", "ops", "--password-stdin", stdin="short\n")
    assert r.returncode == 1 and "at least 10" in r.stderr
    r = run(data, "create-user", "ops", "--password-stdin", stdin="a long password 1\n")
    assert r.returncode == 0, r.stderr
    r = run(data, "create-user", "ops", "--password-stdin", stdin="a long password 1\n")
    assert r.returncode == 1 and "exists" in r.stderr
    r = run(data, "setup-token")
    assert r.returncode == 1 and "exists already" in r.stdout
    r = run(data, "reset-password", "nobody", "--password-stdin", stdin="a long password 2\n")
    assert r.returncode == 1 and "No admin named" in r.stderr
    r = run(data, "reset-password", "ops", "--password-stdin", stdin="a long password 2\n")
    assert r.returncode == 0, r.stderr


async def test_reset_password_ends_sessions_and_clears_the_throttle(
    admin_browser, browser, services
) -> None:
    for _ in range(5):
        await sign_in(browser, password="not the password")
    assert (await sign_in(browser)).status_code == 429
    await services.admin.reset_password("admin", "the new password 9")
    assert (await admin_browser.get("/admin/api/keys")).status_code == 401
    assert (await sign_in(browser, password="the new password 9")).status_code == 303
