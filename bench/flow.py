"""Benchmark: a whole post through the HTTP API against a slow fake upstream.

Starts the fake OpenAI-compatible upstream (text 1 s, image 2 s, ~2 MB PNGs) and
`inkgate serve` as real processes, asks `/v1/images/generations` for an N-page post
with `redink` (concurrency C), and reports:

- wall time against the ideal: outline + cover + ceil((N-1)/C) image rounds;
- the server's peak RSS (VmHWM);
- the gateway's own CPU time per stored image (process CPU during the request / N).

    python -m bench.flow --pages 15 --concurrency 15 --runs 3

Targets (issue 2): wall <= 1.05 x ideal + 0.3 s for N = 15, C = 15; <= 15 ms CPU per
stored 2 MB image; peak RSS <= 250 MB.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
MASTER = "sk-bench-master-key-0123456789"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: process exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=1).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} not ready after {timeout}s")


def proc_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) / os.sysconf("SC_CLK_TCK")


def spawned_workers(parent: int) -> list[int]:
    """The pids of `parent`'s multiprocessing workers (`inkgate serve --workers N`:
    uvicorn spawns them), not its resource tracker."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (proc / "cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue
        if ppid == parent and b"spawn_main" in cmdline:
            found.append(int(proc.name))
    return found


def proc_peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run(args: argparse.Namespace) -> dict:
    up_port, gw_port = free_port(), free_port()
    data_dir = Path(tempfile.mkdtemp(prefix="inkgate-bench-"))
    (data_dir / "inkgate.yaml").write_text(
        "providers:\n"
        f"  fake: {{type: openai, base_url: 'http://127.0.0.1:{up_port}/v1', api_key: sk-fake-upstream}}\n"
        "models:\n"
        f"  redink: {{type: redink, text_provider: fake, text_model: fake-text,"
        f" image_provider: fake, image_model: fake-image, concurrency: {args.concurrency}}}\n"
    )
    env = {**os.environ, "INKGATE_MASTER_KEY": MASTER, "INKGATE_LOG_LEVEL": "WARNING"}
    upstream = subprocess.Popen(
        [sys.executable, "-m", "tests.fakes.openai_upstream", "--port", str(up_port),
         "--text-latency", str(args.text_latency), "--image-latency", str(args.image_latency),
         "--image-bytes", str(args.image_bytes)],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    server = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "serve", "--port", str(gw_port),
         "--data-dir", str(data_dir)],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_ready(f"http://127.0.0.1:{up_port}/v1/models", upstream)
        wait_ready(f"http://127.0.0.1:{gw_port}/health", server)
        base = f"http://127.0.0.1:{gw_port}"
        headers = {"Authorization": f"Bearer {MASTER}"}
        ideal = (
            args.text_latency
            + args.image_latency
            + math.ceil((args.pages - 1) / args.concurrency) * args.image_latency
        )
        results = []
        with httpx.Client(base_url=base, headers=headers, timeout=300) as client:
            for i in range(args.runs + 1):  # the first run warms up imports and pools
                cpu0 = proc_cpu_seconds(server.pid)
                t0 = time.perf_counter()
                r = client.post(
                    "/v1/images/generations",
                    json={"model": "redink", "prompt": f"bench topic {i}", "n": args.pages},
                )
                wall = time.perf_counter() - t0
                cpu = proc_cpu_seconds(server.pid) - cpu0
                r.raise_for_status()
                stored = len(r.json()["data"])
                if stored != args.pages:
                    raise RuntimeError(f"expected {args.pages} pages, got {stored}")
                if i:
                    results.append({"wall": wall, "cpu_ms_per_image": cpu * 1000 / stored})
        peak = proc_peak_rss_mb(server.pid)
    finally:
        for proc in (server, upstream):
            proc.terminate()
        for proc in (server, upstream):
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(data_dir, ignore_errors=True)  # gigabytes of images otherwise
    wall = statistics.median(r["wall"] for r in results)
    cpu = statistics.median(r["cpu_ms_per_image"] for r in results)
    budget = 1.05 * ideal + 0.3
    return {
        "pages": args.pages,
        "concurrency": args.concurrency,
        "image_bytes": args.image_bytes,
        "runs": args.runs,
        "ideal_s": round(ideal, 3),
        "wall_s_median": round(wall, 3),
        "wall_s_all": [round(r["wall"], 3) for r in results],
        "wall_budget_s": round(budget, 3),
        "cpu_ms_per_image_median": round(cpu, 2),
        "cpu_ms_per_image_all": [round(r["cpu_ms_per_image"], 2) for r in results],
        "peak_rss_mb": round(peak, 1),
        "pass": wall <= budget and cpu <= 15 and peak <= 250,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pages", type=int, default=15)
    parser.add_argument("--concurrency", type=int, default=15)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--text-latency", type=float, default=1.0)
    parser.add_argument("--image-latency", type=float, default=2.0)
    parser.add_argument("--image-bytes", type=int, default=2_000_000)
    result = run(parser.parse_args())
    print(json.dumps(result, indent=2))
    return 0 if result["pass"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
