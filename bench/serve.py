"""Benchmark: serving a stored image, the gateway against nginx on the same file.

Starts the fake OpenAI-compatible upstream and `inkgate serve` as real processes, creates
one ~2 MB PNG through `POST /v1/images/generations` on a plain image model, copies the
stored file into a docroot served by Debian's nginx (own prefix and config, sendfile on),
and drives each target with `wrk` (2 threads, C connections, keep-alive) after a short
warm-up:

- nginx's static copy of the image (the reference);
- the gateway's `GET /images/{id}.png`;
- the gateway's `GET /images/{id}/thumb` (reported unavailable when it does not answer 2xx).

Reports requests/s, p99 latency, errors (non-2xx/3xx, socket errors) and the gateway's
CPU ms per request. Needs `nginx` and `wrk` on PATH (`apt-get install nginx wrk`).

    python -m bench.serve --clients 32 --seconds 10

Target: gateway image requests/s >= 0.5 x nginx's on the same file, with 0 errors.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx

from bench.flow import MASTER, ROOT, free_port, proc_cpu_seconds, wait_ready

NGINX = "/usr/sbin/nginx"
TIME_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
SIZE_UNITS = {"B": 1, "KB": 1024, "MB": 1024**2, "GB": 1024**3, "TB": 1024**4}


def _seconds(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text).groups()
    return float(value) * TIME_UNITS[unit]


def parse_wrk(out: str) -> dict:
    """Requests/s, p99, request count, bytes read and errors from `wrk --latency` output."""
    rps = re.search(r"^Requests/sec:\s+([\d.]+)", out, re.M)
    p99 = re.search(r"^\s+99%\s+(\S+)", out, re.M)
    total = re.search(r"^\s+(\d+) requests in ([\d.]+\w+), ([\d.]+)(\w+) read", out, re.M)
    if not (rps and total):
        raise RuntimeError(f"unexpected wrk output:\n{out}")
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    counts = map(int, sock.groups()) if sock else (0, 0, 0, 0)
    socket_errors = dict(zip(("connect", "read", "write", "timeout"), counts, strict=True))
    return {
        "requests": int(total.group(1)),
        "duration_s": _seconds(total.group(2)),
        "bytes_read": float(total.group(3)) * SIZE_UNITS[total.group(4)],
        "rps": float(rps.group(1)),
        "p99_s": _seconds(p99.group(1)) if p99 else None,
        "non_2xx_3xx": int(non2xx.group(1)) if non2xx else 0,
        "socket_errors": socket_errors,
        "errors": (int(non2xx.group(1)) if non2xx else 0) + sum(socket_errors.values()),
    }


def wrk(url: str, clients: int, seconds: float, timeout: float) -> dict:
    cmd = ["wrk", "-t2", f"-c{clients}", f"-d{seconds:g}s", f"--timeout={timeout:g}s", "--latency"]
    done = subprocess.run(
        [*cmd, "-H", f"Authorization: Bearer {MASTER}", url],
        capture_output=True,
        text=True,
        timeout=seconds + timeout + 60,
    )
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr or done.stdout}")
    return parse_wrk(done.stdout)


def largest_png(root: Path) -> Path:
    pngs = [p for p in root.rglob("*.png") if p.is_file()]
    if not pngs:
        raise RuntimeError(f"no stored *.png under {root}")
    return max(pngs, key=lambda p: p.stat().st_size)


def start_nginx(prefix: Path, docroot: Path, port: int) -> subprocess.Popen:
    """Debian's nginx in the foreground with its own prefix, config, pid, logs and temp dirs."""
    conf = prefix / "nginx.conf"
    temp = {name: prefix / name for name in ("client", "proxy", "fastcgi", "uwsgi", "scgi")}
    for path in temp.values():
        path.mkdir()
    conf.write_text(
        "daemon off;\n"
        "master_process on;\n"
        "worker_processes auto;\n"
        f"pid {prefix / 'nginx.pid'};\n"
        f"error_log {prefix / 'error.log'} warn;\n"
        "events { worker_connections 1024; }\n"
        "http {\n"
        "  types { image/png png; }\n"
        "  default_type application/octet-stream;\n"
        "  access_log off;\n"
        "  sendfile on;\n"
        "  tcp_nopush on;\n"
        "  keepalive_timeout 65;\n"
        "  keepalive_requests 1000000;\n"
        f"  client_body_temp_path {temp['client']};\n"
        f"  proxy_temp_path {temp['proxy']};\n"
        f"  fastcgi_temp_path {temp['fastcgi']};\n"
        f"  uwsgi_temp_path {temp['uwsgi']};\n"
        f"  scgi_temp_path {temp['scgi']};\n"
        "  server {\n"
        f"    listen 127.0.0.1:{port};\n"
        f"    root {docroot};\n"
        "  }\n"
        "}\n"
    )
    # -e: the start-up error log, before the config is read (default /var/log/nginx)
    return subprocess.Popen(
        [NGINX, "-p", str(prefix), "-c", str(conf), "-e", str(prefix / "error.log")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def stop(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()  # nginx: SIGTERM = fast shutdown of master and workers
    for proc in procs:
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def measure(name: str, url: str, args: argparse.Namespace, cpu_pid: int | None = None) -> dict:
    wrk(url, args.clients, args.warmup, args.timeout)
    cpu0 = proc_cpu_seconds(cpu_pid) if cpu_pid else 0.0
    result = wrk(url, args.clients, args.seconds, args.timeout)
    cpu = proc_cpu_seconds(cpu_pid) - cpu0 if cpu_pid else None
    done = result["requests"]
    return {
        "target": name,
        "url": url,
        "available": True,
        "requests": done,
        "rps": round(result["rps"], 1),
        "p99_s": round(result["p99_s"], 4) if result["p99_s"] is not None else None,
        "errors": result["errors"],
        "non_2xx_3xx": result["non_2xx_3xx"],
        "socket_errors": result["socket_errors"],
        "mb_per_s": round(result["bytes_read"] / result["duration_s"] / 1e6, 1),
        # wrk also counts the bodies still in flight at the end: a sanity check only
        "approx_bytes_per_request": round(result["bytes_read"] / max(1, done)),
        "gateway_cpu_ms_per_request": round(cpu * 1000 / max(1, done), 3)
        if cpu is not None
        else None,
    }


def run(args: argparse.Namespace) -> dict:
    up_port, gw_port, ng_port = free_port(), free_port(), free_port()
    data_dir = Path(tempfile.mkdtemp(prefix="inkgate-bench-serve-"))
    ng_dir = Path(tempfile.mkdtemp(prefix="inkgate-bench-nginx-"))
    procs: list[subprocess.Popen] = []
    try:
        (data_dir / "inkgate.yaml").write_text(
            "providers:\n"
            f"  fake: {{type: openai, base_url: 'http://127.0.0.1:{up_port}/v1', api_key: sk-fake-upstream}}\n"
            "models:\n  poster: {type: image, provider: fake, model: fake-image}\n"
        )
        env = {**os.environ, "INKGATE_MASTER_KEY": MASTER, "INKGATE_LOG_LEVEL": "WARNING"}
        upstream = subprocess.Popen(
            [sys.executable, "-m", "tests.fakes.openai_upstream", "--port", str(up_port),
             "--image-latency", "0", "--image-bytes", str(args.image_bytes)],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        procs.append(upstream)
        server = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "serve", "--port", str(gw_port), "--data-dir", str(data_dir)],
            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        procs.append(server)
        wait_ready(f"http://127.0.0.1:{up_port}/health", upstream)
        wait_ready(f"http://127.0.0.1:{gw_port}/health", server)
        base = f"http://127.0.0.1:{gw_port}"
        headers = {"Authorization": f"Bearer {MASTER}"}
        with httpx.Client(base_url=base, headers=headers, timeout=120) as client:
            r = client.post("/v1/images/generations", json={"model": "poster", "prompt": "a cat"})
            r.raise_for_status()
            image_path = httpx.URL(r.json()["data"][0]["url"]).path  # /images/img_xxx.png
            served = client.get(image_path)
            served.raise_for_status()

        # nginx serves a copy of the very bytes the gateway stored
        stored = largest_png(data_dir)
        if stored.read_bytes() != served.content:
            raise RuntimeError(f"{stored} differs from what {image_path} serves")
        docroot = ng_dir / "html"
        docroot.mkdir()
        shutil.copyfile(stored, docroot / stored.name)
        # as root, the workers run as nobody: they must be able to read the copy
        for path in (ng_dir, docroot):
            path.chmod(0o755)
        (docroot / stored.name).chmod(0o644)
        nginx = start_nginx(ng_dir, docroot, ng_port)
        procs.append(nginx)
        nginx_url = f"http://127.0.0.1:{ng_port}/{stored.name}"
        wait_ready(nginx_url, nginx)
        check = httpx.get(nginx_url, timeout=10)
        if check.status_code != 200 or check.content != served.content:
            raise RuntimeError(f"nginx answers {check.status_code} for {nginx_url}")

        image_id = image_path.rsplit("/", 1)[1].rsplit(".", 1)[0]
        rows = [
            measure("nginx_image", nginx_url, args),
            measure("gateway_image", base + image_path, args, server.pid),
        ]
        thumb_url = f"{base}/images/{image_id}/thumb"
        thumb = httpx.get(thumb_url, headers=headers, timeout=30)
        if 200 <= thumb.status_code < 300:
            rows.append(measure("gateway_thumb", thumb_url, args, server.pid))
        else:
            rows.append(
                {"target": "gateway_thumb", "url": thumb_url, "available": False,
                 "status": thumb.status_code}
            )  # fmt: skip
        if server.poll() is not None:
            raise RuntimeError(f"the gateway exited with {server.returncode} during the run")
    finally:
        stop(list(reversed(procs)))
        shutil.rmtree(data_dir, ignore_errors=True)
        shutil.rmtree(ng_dir, ignore_errors=True)

    by = {row["target"]: row for row in rows}
    ratio = by["gateway_image"]["rps"] / by["nginx_image"]["rps"]
    return {
        "clients": args.clients,
        "seconds": args.seconds,
        "wrk_timeout_s": args.timeout,
        "image_bytes": len(served.content),
        "rows": rows,
        "gateway_to_nginx_rps_ratio": round(ratio, 3),
        "pass": ratio >= 0.5 and by["gateway_image"]["errors"] == 0,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--warmup", type=float, default=2, help="seconds of wrk per target first")
    parser.add_argument("--timeout", type=float, default=2, help="wrk's per-request timeout (s)")
    parser.add_argument("--image-bytes", type=int, default=2_000_000)
    args = parser.parse_args()
    for tool in (NGINX, "wrk"):
        if not shutil.which(tool):
            parser.error(f"{tool} not found: apt-get install nginx wrk")
    result = run(args)
    print(json.dumps(result, indent=2))
    return 0 if result["pass"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
