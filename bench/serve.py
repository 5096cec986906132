"""Load test of `instyle serve`: many concurrent clients on loopback, micro-batched vs one image per call.

    python -m instyle.bench.serve [--clients 64] [--duration 60] [--size 256] [--max-batch 8] [--model M]
                                  [--backend auto] [--out DIR]

For each configuration (`--max-batch N`, then `--max-batch 1`) a real server is started as a subprocess
(`python -m instyle serve` on 127.0.0.1, a free port) and waited for (/healthz); then `--clients` asyncio
clients each POST the same JPEG (a photo of the shared data, scaled to `--size` on its longer side) back to back,
first for `--warmup` seconds (not counted: each batch size's first call compiles), then for `--duration` seconds
or until `--max-requests` answers, whichever comes first, and the server is stopped. Reported per
configuration: answers by status, errors (anything but 200), p50/p95/max latency (client-side, request sent to
body received), images/s (200s over the measured wall time) and the mean batch size the server ran (its
/metrics). The clients run in this process, on the same machine: their CPU time is part of what is measured.
The load average before and after each run is recorded beside the figures. Writes results.json and results.md
under --out.
"""
from __future__ import annotations

import argparse
import asyncio
import io as stdio
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

HOST = "127.0.0.1"  # loopback only, by design


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--clients", type=int, default=64)
    p.add_argument("--duration", type=float, default=60.0, help="seconds of load per configuration (default 60)")
    p.add_argument("--warmup", type=float, default=5.0,
                   help="seconds of the same load first, not counted: every batch size's first call (default 5)")
    p.add_argument("--max-requests", type=int, default=100_000, help="stop a configuration after this many answers")
    p.add_argument("--size", type=int, default=256, help="the photo's longer side in pixels (default 256)")
    p.add_argument("--style", default=None, help="style of the shipped model to ask for (default: its first)")
    p.add_argument("--max-batch", type=int, default=8, help="the batched configuration (compared with 1)")
    p.add_argument("--max-wait-ms", type=float, default=10.0)
    p.add_argument("--model")
    p.add_argument("--backend", default="auto")
    p.add_argument("--precision", default="auto")
    p.add_argument("--photo", help="JPEG/PNG to send (default: the shared data's chicago.jpg)")
    p.add_argument("--out", type=Path, help="folder for results.json and results.md (default: print only)")


def payload(photo: Path, size: int) -> bytes:
    from PIL import Image

    with Image.open(photo) as img:
        img = img.convert("RGB")
        img.thumbnail((size, size), Image.Resampling.LANCZOS)
        buffer = stdio.BytesIO()
        img.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def start_server(args, max_batch: int, port: int) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "instyle", "serve", "--host", HOST, "--port", str(port), "--backend", args.backend,
           "--precision", args.precision, "--max-batch", str(max_batch), "--max-wait-ms", str(args.max_wait_ms),
           "--queue", str(max(64, 2 * args.clients))]
    if args.model:
        cmd += ["--model", args.model]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def stop_server(server: subprocess.Popen) -> None:
    """Terminate the server, and kill it if it is still up 30 s later."""
    server.terminate()
    try:
        server.wait(30)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


def wait_healthy(client, server: subprocess.Popen, timeout_s: float = 300) -> dict:
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the server exited ({server.returncode}): {server.stderr.read()[-2000:]}")
        try:
            return client.get("/healthz").json()
        except httpx.TransportError:
            time.sleep(0.2)
    raise RuntimeError(f"the server was not healthy within {timeout_s:g} s")


async def load(url: str, body: bytes, params: dict, clients: int, duration: float, max_requests: int) -> dict:
    """`clients` loops posting `body` until `duration` passes or `max_requests` answers are in."""
    import httpx

    latencies, statuses = [], {}
    deadline = time.perf_counter() + duration
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)

    async def one_client(client):
        while time.perf_counter() < deadline and len(latencies) < max_requests:
            t0 = time.perf_counter()
            try:
                r = await client.post("/v1/stylize", content=body, params=params,
                                      headers={"content-type": "image/jpeg"})
                status = str(r.status_code)
            except httpx.HTTPError as e:
                status = type(e).__name__
            latencies.append(time.perf_counter() - t0)
            statuses[status] = statuses.get(status, 0) + 1

    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        t0 = time.perf_counter()
        await asyncio.gather(*(one_client(client) for _ in range(clients)))
        wall = time.perf_counter() - t0
    return {"latencies": latencies, "statuses": statuses, "wall_s": wall}



def _percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


def run_config(args, body: bytes, max_batch: int) -> dict:
    import httpx

    port = _free_port()
    url = f"http://{HOST}:{port}"
    server = start_server(args, max_batch, port)
    try:
        with httpx.Client(base_url=url, timeout=120) as client:
            health = wait_healthy(client, server)
            params = {"style": args.style} if args.style else {}
            client.post("/v1/stylize", content=body, params=params, headers={"content-type": "image/jpeg"})
            if args.warmup > 0:  # the backends compile kernels at each new batch size's first call
                asyncio.run(load(url, body, params, args.clients, args.warmup, args.max_requests))
            before = client.get("/metrics").text
            load_before = _loadavg()
            measured = asyncio.run(load(url, body, params, args.clients, args.duration, args.max_requests))
            load_after = _loadavg()
            after = client.get("/metrics").text
    finally:
        stop_server(server)
    ok = measured["statuses"].get("200", 0)
    lat = sorted(measured["latencies"])
    batches = _batches(before, after)
    return {"max_batch": max_batch, "backend": health["backend"], "precision": health["precision"],
            "clients": args.clients, "requests": len(lat), "ok": ok, "errors": len(lat) - ok,
            "statuses": measured["statuses"], "wall_s": round(measured["wall_s"], 2),
            "p50_ms": round(1000 * _percentile(lat, 50), 1) if lat else None,
            "p95_ms": round(1000 * _percentile(lat, 95), 1) if lat else None,
            "max_ms": round(1000 * lat[-1], 1) if lat else None,
            "images_per_s": round(ok / measured["wall_s"], 2), "mean_batch": batches,
            "loadavg_before": load_before, "loadavg_after": load_after}


def _batches(before: str, after: str) -> float | None:
    """The mean batch size over the measured window (the warm-up's batches subtracted)."""
    def sums(text):
        s = re.search(r"^instyle_batch_size_sum (\S+)$", text, re.M)
        c = re.search(r"^instyle_batch_size_count (\S+)$", text, re.M)
        return (float(s[1]), float(c[1])) if s and c else (0.0, 0.0)

    (s0, c0), (s1, c1) = sums(before), sums(after)
    return round((s1 - s0) / (c1 - c0), 2) if c1 > c0 else None


def _loadavg() -> str:
    try:
        return Path("/proc/loadavg").read_text().strip()
    except OSError:
        return "unknown"


def markdown(result: dict) -> str:
    lines = [f"# instyle serve load test, {result['date']}", "",
             f"{result['cpu']}, {result['cpus']} CPUs; git {result['git_rev']}; {result['clients']} clients, "
             f"{result['duration_s']:g} s per configuration, a {result['image']} JPEG per request; clients and "
             "server on the same machine (loopback).", "",
             "| max batch | backend | requests | errors | p50 ms | p95 ms | max ms | images/s | mean batch | "
             "1-min load avg before → after |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['max_batch']} | {r['backend']} {r['precision']} | {r['requests']} | {r['errors']} | "
                     f"{r['p50_ms']} | {r['p95_ms']} | {r['max_ms']} | {r['images_per_s']} | {r['mean_batch']} | "
                     f"{r['loadavg_before'].split()[0]} → {r['loadavg_after'].split()[0]} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m instyle.bench.serve", description=__doc__.split("\n")[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    if args.clients < 1 or not args.duration > 0 or args.max_batch < 1 or args.max_requests < 1 or args.warmup < 0:
        parser.error("--clients, --duration, --max-batch and --max-requests must be positive, --warmup >= 0")
    from instyle.bench.devices import cpu_name, git_rev, now
    from instyle.paths import data_dir

    photo = Path(args.photo) if args.photo else data_dir() / "content" / "demo" / "chicago.jpg"
    body = payload(photo, args.size)
    from PIL import Image

    with Image.open(stdio.BytesIO(body)) as img:
        image = f"{img.width}x{img.height}"
    rows = [run_config(args, body, n) for n in dict.fromkeys((args.max_batch, 1))]
    result = {"date": now(), "git_rev": git_rev(), "cpu": cpu_name(), "cpus": os.cpu_count(), "clients": args.clients,
              "duration_s": args.duration, "warmup_s": args.warmup, "max_wait_ms": args.max_wait_ms, "image": image,
              "photo": photo.name, "rows": rows}
    print(markdown(result))
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
        (args.out / "results.md").write_text(markdown(result))
    return 0 if all(r["errors"] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
