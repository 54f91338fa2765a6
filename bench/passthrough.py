"""Benchmark: image pass-through on a plain image model (PicGate mode).

`POST /v1/images/generations` on a model served by the fake OpenAI-compatible upstream,
which answers a ~2.3 MB PNG as `b64_json`; the gateway decodes, stores and answers a URL.
Real processes on loopback; closed-loop clients for a fixed time per scenario.

    python -m bench.passthrough --clients 1 8 32 --latency 0 2 --seconds 15

Targets (issue 3): at 32 clients and no upstream latency >= 40 requests/s with 0 errors;
at 2 s upstream latency and 32 clients >= 15 requests/s with p99 <= 2.3 s.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx

from bench.flow import (
    MASTER,
    ROOT,
    free_port,
    proc_cpu_seconds,
    proc_peak_rss_mb,
    spawned_workers,
    wait_ready,
)
from providers.network import use_asyncio_backend


class RawClient:
    """One client of the load generator: a keep-alive HTTP/1.1 connection that sends a
    request serialized once and reads the answer by its Content-Length.

    The load generator shares the machine's two cores with the gateway and the fake, and
    starts all its clients at once. httpx spent ~1.2-1.9 ms of CPU a request here, in
    one event loop: in a burst of 32, the last request left ~35 ms after the first,
    queueing the load generator's own work into the gateway's latencies. This one costs
    ~0.1 ms a request. (`--client httpx` measures with httpx, as before.)
    """

    def __init__(self, host: str, port: int, path: str, headers: dict[str, str], body: bytes):
        self.host, self.port = host, port
        head = [f"POST {path} HTTP/1.1", f"Host: {host}:{port}"]
        head += [f"{k}: {v}" for k, v in headers.items()]
        head += [f"Content-Length: {len(body)}", "", ""]
        self.request = "\r\n".join(head).encode() + body
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self) -> tuple[int, bytes]:
        """(status, body) of one request; raises OSError or ValueError on a broken answer."""
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        try:
            self.writer.write(self.request)
            head = await self.reader.readuntil(b"\r\n\r\n")
            status_line, *lines = head.decode("latin-1").split("\r\n")
            status = int(status_line.split(" ", 2)[1])
            fields = {}
            for line in lines:
                name, sep, value = line.partition(":")
                if sep:
                    fields[name.strip().lower()] = value.strip()
            if "content-length" not in fields:
                raise ValueError("an answer without Content-Length")
            body = await self.reader.readexactly(int(fields["content-length"]))
        except (OSError, ValueError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            await self.close()
            raise
        if fields.get("connection", "").lower() == "close":
            await self.close()
        return status, body

    async def close(self) -> None:
        writer, self.reader, self.writer = self.writer, None, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


REQUEST = {"model": "poster", "prompt": "a cat"}


def _answer_ok(status: int, body: bytes) -> bool:
    try:
        return status == 200 and bool(json.loads(body)["data"][0]["url"])
    except (ValueError, KeyError, IndexError, TypeError):
        return False


async def _clients(
    base: str, clients: int, seconds: float, kind: str = "raw"
) -> tuple[list[float], list[float], int, float]:
    """Closed-loop clients that start requests for `seconds`.

    Returns (latencies, latencies without each client's first request, errors, elapsed):
    `elapsed` runs until the last request finishes, so requests/s = completed / elapsed.
    """
    latencies: list[float] = []
    later: list[float] = []
    errors = 0
    headers = {"Authorization": f"Bearer {MASTER}"}
    begun = time.perf_counter()
    deadline = begun + seconds

    async def run(post: Callable[[], Awaitable[tuple[int, bytes]]]) -> None:
        nonlocal errors
        first = True
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            try:
                async with asyncio.timeout(120):
                    ok = _answer_ok(*await post())
            except (
                OSError,
                ValueError,
                TimeoutError,
                asyncio.IncompleteReadError,
                httpx.HTTPError,
            ):
                ok = False
            if ok:
                latencies.append(time.perf_counter() - started)
                if not first:
                    later.append(latencies[-1])
            else:
                errors += 1
            first = False

    if kind == "raw":
        url = httpx.URL(base)
        body = json.dumps(REQUEST).encode()
        raw = [
            RawClient(url.host, url.port or 80, "/v1/images/generations",
                      {**headers, "Content-Type": "application/json"}, body)
            for _ in range(clients)
        ]  # fmt: skip
        try:
            await asyncio.gather(*(run(c.post) for c in raw))
        finally:
            for c in raw:
                await c.close()
    else:
        limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
        # on the gateway's own network backend and pool (providers.network), which cost
        # ~1.5 ms less CPU a request than httpx's defaults at 32 clients
        async with use_asyncio_backend(
            httpx.AsyncClient(base_url=base, headers=headers, timeout=120, limits=limits)
        ) as http:

            async def post() -> tuple[int, bytes]:
                r = await http.post("/v1/images/generations", json=REQUEST)
                return r.status_code, r.content

            await asyncio.gather(*(run(post) for _ in range(clients)))
    elapsed = time.perf_counter() - begun
    return latencies, later, errors, elapsed


def _gateway_pids(pid: int, workers: int) -> list[int]:
    """The processes doing the gateway's work: `pid`, or its `workers` worker processes
    (`inkgate serve --workers N`: uvicorn's supervisor and its spawned children)."""
    if workers == 1:
        return [pid]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        children = spawned_workers(pid)
        if len(children) == workers:
            return [pid, *children]
        time.sleep(0.2)
    raise RuntimeError(f"gateway {pid}: {workers} workers not found")


def _percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def scenario(
    latency: float,
    clients_list: list[int],
    seconds: float,
    image_bytes: int,
    gateway_root: Path = ROOT,
    workers: int = 1,
    client: str = "raw",
) -> list[dict]:
    up_port, gw_port = free_port(), free_port()
    data_dir = Path(tempfile.mkdtemp(prefix="inkgate-bench-pt-"))
    (data_dir / "inkgate.yaml").write_text(
        "providers:\n"
        f"  fake: {{type: openai, base_url: 'http://127.0.0.1:{up_port}/v1', api_key: sk-fake-upstream}}\n"
        "models:\n  poster: {type: image, provider: fake, model: fake-image}\n"
    )
    env = {**os.environ, "INKGATE_MASTER_KEY": MASTER, "INKGATE_LOG_LEVEL": "WARNING"}
    upstream = subprocess.Popen(
        [sys.executable, "-m", "tests.fakes.openai_upstream", "--port", str(up_port),
         "--image-latency", str(latency), "--image-bytes", str(image_bytes)],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    server = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "serve", "--port", str(gw_port), "--data-dir", str(data_dir)]
        + (["--workers", str(workers)] if workers > 1 else []),
        cwd=gateway_root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    results = []
    try:
        wait_ready(f"http://127.0.0.1:{up_port}/health", upstream)
        wait_ready(f"http://127.0.0.1:{gw_port}/health", server)
        base = f"http://127.0.0.1:{gw_port}"
        asyncio.run(_clients(base, 2, 2, client))  # warm-up: imports, first connections, tables
        gateway = _gateway_pids(server.pid, workers)
        for clients in clients_list:
            cpu0 = sum(map(proc_cpu_seconds, gateway))
            up0 = proc_cpu_seconds(upstream.pid)
            me0 = time.process_time()
            latencies, later, errors, elapsed = asyncio.run(
                _clients(base, clients, seconds, client)
            )
            cpu = sum(map(proc_cpu_seconds, gateway)) - cpu0
            up_cpu = proc_cpu_seconds(upstream.pid) - up0
            client_cpu = time.process_time() - me0
            done = len(latencies)
            results.append(
                {
                    "client": client,
                    "upstream_latency_s": latency,
                    "clients": clients,
                    "requests": done,
                    "errors": errors,
                    # completed requests / the time until the last one finished (every
                    # request started inside the window is waited for and counted)
                    "rps": round(done / elapsed, 1),
                    "p50_s": round(statistics.median(latencies), 3) if latencies else None,
                    "p99_s": round(_percentile(latencies, 99), 3) if latencies else None,
                    # without each client's first request: they all start together, so
                    # the first answers all arrive together too (a cold, synchronized burst)
                    "p99_after_first_s": round(_percentile(later, 99), 3) if later else None,
                    "cpu_ms_per_request": round(cpu * 1000 / max(1, done), 2),
                    # the fake shares the machine's two cores: its cost is in the latencies
                    "fake_upstream_cpu_ms_per_request": round(up_cpu * 1000 / max(1, done), 2),
                    "client_cpu_ms_per_request": round(client_cpu * 1000 / max(1, done), 2),
                }
            )
        peak = sum(map(proc_peak_rss_mb, gateway))
        for r in results:
            r["server_peak_rss_mb"] = round(peak, 1)
    finally:
        for proc in (server, upstream):
            proc.terminate()
        for proc in (server, upstream):
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(data_dir, ignore_errors=True)  # gigabytes of images otherwise
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--latency", type=float, nargs="+", default=[0.0, 2.0])
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--image-bytes", type=int, default=2_300_000)
    parser.add_argument(
        "--gateway-workers",
        type=int,
        default=1,
        help="inkgate serve --workers N (CPU and peak RSS are summed over the processes)",
    )
    parser.add_argument(
        "--gateway-root",
        type=Path,
        default=ROOT,
        help="run the gateway from this checkout (a before/after control on the same "
        "clients and fake upstream)",
    )
    parser.add_argument(
        "--client",
        choices=["raw", "httpx"],
        default="raw",
        help="the load generator's HTTP client: raw (one pre-serialized request per "
        "keep-alive connection, ~0.1 ms of CPU a request) or httpx",
    )
    args = parser.parse_args()
    rows = []
    for latency in args.latency:
        rows += scenario(
            latency, args.clients, args.seconds, args.image_bytes, args.gateway_root.resolve(),
            args.gateway_workers, args.client,
        )  # fmt: skip
    print(json.dumps(rows, indent=2))
    by = {(r["upstream_latency_s"], r["clients"]): r for r in rows}
    fast, slow = by.get((0.0, 32)), by.get((2.0, 32))
    passed = True
    if fast:
        passed &= fast["rps"] >= 40 and fast["errors"] == 0
    if slow:
        passed &= slow["rps"] >= 15 and slow["p99_s"] is not None and slow["p99_s"] <= 2.3
    return 0 if passed else 1


if __name__ == "__main__":
    raise SystemExit(main())
