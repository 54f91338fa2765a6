"""The `inkgate` command: `serve`, `keys`, `admin`, `providers test` and `cache`."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from dataclasses import replace
from pathlib import Path

from gateway.settings import Settings


def _settings(args: argparse.Namespace) -> Settings:
    settings = Settings.from_env()
    changes: dict = {}
    if getattr(args, "data_dir", None):
        changes["data_dir"] = Path(args.data_dir)
        if not (os.environ.get("DATABASE_URL") or os.environ.get("INKGATE_DATABASE_URL")):
            changes["database_url"] = ""
        if not os.environ.get("INKGATE_CONFIG"):
            changes["config_path"] = None
    if getattr(args, "host", None):
        changes["host"] = args.host
    if getattr(args, "port", None):
        changes["port"] = args.port
    if getattr(args, "workers", None) is not None:
        changes["workers"] = args.workers
    return replace(settings, **changes) if changes else settings


def tune_allocator() -> bool:
    """Tell glibc's malloc how this process uses memory; False where it isn't glibc.

    Every upstream image answer allocates a few MB. With glibc's defaults each such
    buffer is a fresh mmap, page-faulted in and unmapped again, and every thread
    that touches one grows an arena of its own. Two arenas, a 32 MB mmap threshold
    and a 64 MB trim threshold measured 16.7 -> 12.7 ms CPU per stored image and
    200 -> 160 MB peak RSS (bench/flow.py, BENCHMARKS.md).
    """
    import ctypes
    import ctypes.util

    m_trim_threshold, m_mmap_threshold, m_arena_max = -1, -3, -8
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):  # musl, macOS, ...
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return all(
        mallopt(option, value) == 1
        for option, value in (
            (m_arena_max, 2),
            (m_mmap_threshold, 32 * 1024 * 1024),
            (m_trim_threshold, 64 * 1024 * 1024),
        )
    )


def configure_logging(settings: Settings) -> None:
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # migrations report only problems, so the start-up banner stays readable
    logging.getLogger("alembic").setLevel(max(logging.WARNING, logging.getLogger().level))


def serve(args: argparse.Namespace) -> int:
    import uvicorn

    tune_allocator()

    from gateway.app import create_app, prepare_workers

    try:
        settings = _settings(args)
    except ValueError as exc:
        print(f"inkgate serve: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings)
    # X-Forwarded-* are handled by the gateway itself (INKGATE_TRUSTED_PROXIES),
    # so uvicorn must not rewrite the client address from them.
    options = dict(
        host=settings.host,
        port=settings.port,
        proxy_headers=False,
        log_level=settings.log_level.lower(),
        timeout_graceful_shutdown=10,
    )
    if settings.workers == 1:
        uvicorn.run(create_app(settings, announce=True), **options)
        return 0
    # Several processes on one port (uvicorn's supervisor shares the listening socket).
    # What must happen once happens here first (the signing secret, migrations, the
    # first API key and the banner); each worker builds its app from the environment.
    asyncio.run(prepare_workers(settings))
    os.environ.update(
        INKGATE_DATA_DIR=str(settings.data_dir),
        INKGATE_DATABASE_URL=settings.database_url,
        INKGATE_CONFIG=str(settings.config_path),
        INKGATE_HOST=settings.host,
        INKGATE_PORT=str(settings.port),
    )
    os.environ.pop("DATABASE_URL", None)  # INKGATE_DATABASE_URL holds the one in use
    uvicorn.run("gateway.app:worker_app", factory=True, workers=settings.workers, **options)
    return 0


async def _keys(args: argparse.Namespace) -> int:
    from gateway.auth import KeyService
    from storage.db import Database

    settings = _settings(args)
    db = Database(settings.database_url)
    try:
        await db.migrate()
        keys = KeyService(db)
        if args.keys_command == "create":
            row, plaintext = await keys.create(args.name)
            print(f"Created key {row.id} ({row.name}). Shown once:\n{plaintext}")
        elif args.keys_command == "list":
            rows = await keys.list()
            if not rows:
                print("No keys.")
            for row in rows:
                state = "revoked" if row.revoked_at else "active"
                used = (
                    row.last_used_at.isoformat(timespec="seconds") if row.last_used_at else "never"
                )
                print(f"{row.id}  {row.prefix}…  {state:7}  last used {used}  {row.name}")
        elif args.keys_command == "revoke":
            from gateway.errors import NotFound

            try:
                row = await keys.revoke(args.id)
            except NotFound as exc:
                print(exc.message, file=sys.stderr)
                return 1
            print(f"Revoked key {row.id} ({row.name}).")
        return 0
    finally:
        await db.dispose()


def _read_password(args: argparse.Namespace) -> str:
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\n")
    import getpass

    first = getpass.getpass("New password: ")
    if getpass.getpass("Again: ") != first:
        raise ValueError("the two passwords differ")
    return first


async def _admin(args: argparse.Namespace) -> int:
    """`inkgate admin setup-token | create-user | reset-password`: dashboard users."""
    from admin.auth import AdminAuth
    from gateway.errors import GatewayError
    from storage.db import Database

    settings = _settings(args)
    db = Database(settings.database_url)
    try:
        await db.migrate()
        admin = AdminAuth(db)
        if args.admin_command == "setup-token":
            token = await admin.new_setup_token()
            if token is None:
                print("An admin exists already: sign in, or use `inkgate admin reset-password`.")
                return 1
            print(f"Open /admin/setup and enter (one-time, 24 h):\n{token}")
            return 0
        try:
            password = _read_password(args)
            if args.admin_command == "create-user":
                await admin.add_user(args.username, password)
                print(f"Created admin {args.username!r}.")
            else:
                await admin.reset_password(args.username, password)
                print(f"New password set for {args.username!r}; their sessions were ended.")
        except (GatewayError, ValueError) as exc:
            print(getattr(exc, "message", str(exc)), file=sys.stderr)
            return 1
        return 0
    finally:
        await db.dispose()


async def _providers_test(args: argparse.Namespace) -> int:
    import httpx

    from gateway.config import ConfigError, ConfigSource
    from gateway.config_store import ConfigStore
    from gateway.probe import probe_all
    from gateway.secrets_box import SecretBox
    from providers.network import upstream_client
    from storage.db import Database

    settings = _settings(args)
    db = Database(settings.database_url)  # providers saved on the dashboard count too
    async with upstream_client(
        timeout=httpx.Timeout(settings.upstream_timeout, connect=15)
    ) as http:
        try:
            await db.migrate()
            store = ConfigStore(db, SecretBox(settings.signing_secret()))
            source = ConfigSource(settings.config_path, settings.data_dir, http, os.environ, store)
            await source.load()
        except ConfigError as exc:
            print(f"config error: {exc}", file=sys.stderr)
            return 2
        finally:
            await db.dispose()
        try:
            reports = await probe_all(source.current, args.name, deep=args.deep)
        except KeyError:
            known = ", ".join(source.current.providers)
            print(f"no provider named {args.name!r} (configured: {known})", file=sys.stderr)
            return 2
    for report in reports:
        print(f"{'OK  ' if report.ok else 'FAIL'} {report.provider} ({report.type})")
        for check in report.checks:
            mark = "ok  " if check.ok else "FAIL"
            print(f"     {mark} {check.check:<6} {check.latency_ms:>6} ms  {check.detail}")
    return 0 if all(r.ok for r in reports) else 1


async def _cache(args: argparse.Namespace) -> int:
    """`inkgate cache sweep|stats`: the lifecycle from the command line (cron-friendly)."""
    import json

    from gateway.config import ConfigError, storage_config
    from storage.db import Database
    from storage.service import Storage

    settings = _settings(args)
    try:
        config = storage_config(settings)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    db = Database(settings.database_url)
    try:
        await db.migrate()
        storage = Storage(db, settings.data_dir / "blobs", config)
        if args.cache_command == "sweep":
            report = (await storage.lifecycle.sweep()).as_dict()
            report.pop("details", None)
            print(json.dumps(report, indent=2))
        else:
            print(json.dumps(await storage.lifecycle.stats(), indent=2))
        return 0
    finally:
        await db.dispose()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="inkgate", description="InkGate gateway")
    sub = parser.add_subparsers(dest="command", required=True)
    p_serve = sub.add_parser("serve", help="run the gateway")
    p_serve.add_argument("--host", help="bind address (default 127.0.0.1, env INKGATE_HOST)")
    p_serve.add_argument("--port", type=int, help="port (default 8000, env INKGATE_PORT)")
    p_serve.add_argument("--data-dir", help="data directory (default ./data, env INKGATE_DATA_DIR)")
    p_serve.add_argument(
        "--workers",
        type=int,
        help="worker processes on the one port (default 1, env INKGATE_WORKERS)",
    )
    p_keys = sub.add_parser("keys", help="manage API keys")
    p_keys.add_argument("--data-dir", help="data directory (default ./data)")
    # --data-dir also after the subcommand; SUPPRESS keeps one given before it
    data_dir = argparse.ArgumentParser(add_help=False)
    data_dir.add_argument("--data-dir", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    keys_sub = p_keys.add_subparsers(dest="keys_command", required=True)
    p_create = keys_sub.add_parser("create", help="create a key (printed once)", parents=[data_dir])
    p_create.add_argument("--name", required=True)
    keys_sub.add_parser("list", help="list keys", parents=[data_dir])
    p_revoke = keys_sub.add_parser("revoke", help="revoke a key", parents=[data_dir])
    p_revoke.add_argument("id")
    p_admin = sub.add_parser("admin", help="dashboard users")
    p_admin.add_argument("--data-dir", help="data directory (default ./data)")
    admin_sub = p_admin.add_subparsers(dest="admin_command", required=True)
    admin_sub.add_parser(
        "setup-token", help="a new one-time token for /admin/setup", parents=[data_dir]
    )
    for name, text in (("create-user", "add an admin"), ("reset-password", "set a password")):
        p_user = admin_sub.add_parser(name, help=text, parents=[data_dir])
        p_user.add_argument("username")
        p_user.add_argument(
            "--password-stdin", action="store_true", help="read the password from stdin"
        )
    p_providers = sub.add_parser("providers", help="check the configured upstreams")
    p_providers.add_argument("--data-dir", help="data directory (default ./data)")
    prov_sub = p_providers.add_subparsers(dest="providers_command", required=True)
    p_test = prov_sub.add_parser(
        "test", help="a real, cheap call to each provider (or NAME)", parents=[data_dir]
    )
    p_test.add_argument("name", nargs="?", help="one provider (default: all)")
    p_test.add_argument("--deep", action="store_true", help="also draw one small image")
    p_cache = sub.add_parser("cache", help="the image cache lifecycle")
    p_cache.add_argument("--data-dir", help="data directory (default ./data)")
    cache_sub = p_cache.add_subparsers(dest="cache_command", required=True)
    cache_sub.add_parser(
        "sweep", help="apply TTL, size cap, retention and the orphan sweep now", parents=[data_dir]
    )
    cache_sub.add_parser("stats", help="counts and bytes, local and remote", parents=[data_dir])
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        return serve(args)
    if args.command == "providers":
        return asyncio.run(_providers_test(args))
    if args.command == "cache":
        return asyncio.run(_cache(args))
    if args.command == "admin":
        return asyncio.run(_admin(args))
    return asyncio.run(_keys(args))


if __name__ == "__main__":
    raise SystemExit(main())
