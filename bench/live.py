"""Live stylization on loopback: simulated webcam viewers on /v1/live, micro-batched vs one frame per call.

    python -m instyle.bench.live [--viewers 1,2,4] [--sizes 320x240,640x480] [--duration 10] [--max-batch 8]
                                 [--model M] [--backend auto] [--precision auto] [--out DIR]

For each configuration (`--max-batch N`, then `--max-batch 1`) a real server is started as a subprocess
(`python -m instyle serve` on 127.0.0.1, a free port) and waited for (/healthz). Then, for each frame size and
each number of viewers, that many WebSocket clients each send the same JPEG frame (a photo of the shared data,
cropped and scaled to the size, quality 85 as the page sends) the way the page does: one frame in flight, the next
sent when the answer comes. First every viewer gets one answer (not counted: each new size and batch size
compiles), then each sends for `--duration` seconds; the frame in flight at the deadline is still waited for
(at most `--timeout` seconds) and counted, so a slow configuration still reports its frames. Reported per row:
frames answered, frames/s per viewer (answers over the row's wall time, averaged over the viewers), p50/p95
end-to-end latency (client-side: frame sent to JPEG received), the server's own p50 (`latency_ms`), the mean
batch the server ran (its /metrics) and the load average before and after. The clients run in this process, on
the same machine: their CPU time is part of what is measured. Writes results.json and results.md under --out
(default bench/results/<date>-<cpu>-live/).
"""
from __future__ import annotations

import argparse
import asyncio
import io as stdio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from instyle.bench.serve import HOST, _batches, _free_port, _loadavg, _percentile, stop_server, wait_healthy


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--viewers", default="1,2,4", help="numbers of viewers at once, comma-separated (default 1,2,4)")
    p.add_argument("--sizes", default="320x240,640x480", help="frame sizes WxH (default 320x240,640x480)")
    p.add_argument("--duration", type=float, default=10.0, help="seconds of frames per row (default 10)")
    p.add_argument("--timeout", type=float, default=120.0, help="longest wait for one answer, warm-up included")
    p.add_argument("--max-batch", type=int, default=8, help="the batched configuration (compared with 1)")
    p.add_argument("--max-wait-ms", type=float, default=10.0)
    p.add_argument("--style", default=None, help="style to ask for (default: the model's first)")
    p.add_argument("--model")
    p.add_argument("--backend", default="auto")
    p.add_argument("--precision", default="auto")
    p.add_argument("--photo", help="JPEG/PNG the frames are made of (default: the shared data's chicago.jpg)")
    p.add_argument("--out", type=Path, help="folder for results.json and results.md")


def frame(photo: Path, width: int, height: int) -> bytes:
    """`photo` cropped to width:height around its centre, scaled to width x height, as a quality-85 JPEG."""
    from PIL import Image, ImageOps

    with Image.open(photo) as img:
        fitted = ImageOps.fit(img.convert("RGB"), (width, height), Image.Resampling.LANCZOS)
    buffer = stdio.BytesIO()
    fitted.save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()


def start_server(args, max_batch: int, port: int, viewers: int) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "instyle", "serve", "--host", HOST, "--port", str(port), "--backend", args.backend,
           "--precision", args.precision, "--max-batch", str(max_batch), "--max-wait-ms", str(args.max_wait_ms),
           "--timeout-s", str(args.timeout), "--live-max-viewers", str(viewers), "--live-max-fps", "1000"]
    if args.model:
        cmd += ["--model", args.model]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


async def viewers(url: str, body: bytes, settings: dict, count: int, duration: float, timeout: float) -> dict:
    """`count` viewers, one frame in flight each: one warm-up answer each, then frames for `duration` seconds."""
    from websockets.asyncio.client import connect

    async def answer(ws) -> dict:
        header = json.loads(await asyncio.wait_for(ws.recv(), timeout))
        if "error" in header:
            raise RuntimeError(f"the server answered {header}")
        await asyncio.wait_for(ws.recv(), timeout)  # the JPEG
        return header

    async def one(ws, started: asyncio.Event, results: list) -> None:
        await started.wait()
        deadline = time.perf_counter() + duration
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            await ws.send(body)
            header = await answer(ws)
            results.append((time.perf_counter() - t0, header["latency_ms"] / 1000))

    sockets = [await connect(url, max_size=None) for _ in range(count)]
    try:
        for ws in sockets:
            await ws.send(json.dumps(settings))
            assert json.loads(await asyncio.wait_for(ws.recv(), timeout)) == {"settings": "ok"}

        async def warm(ws):
            await ws.send(body)
            await answer(ws)

        await asyncio.gather(*(warm(ws) for ws in sockets))
        started, per_viewer = asyncio.Event(), [[] for _ in sockets]
        tasks = [asyncio.ensure_future(one(ws, started, r)) for ws, r in zip(sockets, per_viewer)]
        t0 = time.perf_counter()
        started.set()
        await asyncio.gather(*tasks)
        return {"wall_s": time.perf_counter() - t0, "per_viewer": per_viewer}
    finally:
        for ws in sockets:
            await ws.close()


def run_config(args, photo: Path, sizes, counts, max_batch: int) -> list[dict]:
    import httpx

    port = _free_port()
    server = start_server(args, max_batch, port, max(counts))
    rows = []
    try:
        with httpx.Client(base_url=f"http://{HOST}:{port}", timeout=60) as client:
            health = wait_healthy(client, server)
            for width, height in sizes:
                body = frame(photo, width, height)
                for count in counts:
                    before, load_before = client.get("/metrics").text, _loadavg()
                    measured = asyncio.run(viewers(f"ws://{HOST}:{port}/v1/live", body,
                                                   {"style": args.style} if args.style else {}, count,
                                                   args.duration, args.timeout))
                    after, load_after = client.get("/metrics").text, _loadavg()
                    rows.append(_row(health, max_batch, width, height, count, measured, _batches(before, after),
                                     load_before, load_after))
                    print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    finally:
        stop_server(server)
    return rows


def _row(health, max_batch, width, height, count, measured, mean_batch, load_before, load_after) -> dict:
    every = [r for rs in measured["per_viewer"] for r in rs]
    e2e, server = sorted(r[0] for r in every), sorted(r[1] for r in every)
    wall = measured["wall_s"]

    def ms(values, q):
        return round(1000 * _percentile(values, q), 1) if values else None

    return {"max_batch": max_batch, "backend": health["backend"], "precision": health["precision"],
            "device": health["device"], "size": f"{width}x{height}", "viewers": count, "frames": len(every),
            "wall_s": round(wall, 2), "fps_per_viewer": round(len(every) / wall / count, 2),
            "fps_total": round(len(every) / wall, 2), "p50_ms": ms(e2e, 50), "p95_ms": ms(e2e, 95),
            "server_p50_ms": ms(server, 50), "mean_batch": mean_batch, "loadavg_before": load_before,
            "loadavg_after": load_after, "skipped": None}


NOT_MEASURED = {"max_batch": None, "backend": None, "precision": None, "device": "cuda", "size": "1280x720",
                "viewers": None, "frames": None, "skipped": "not measured: no GPU run of the live bench yet"}


def markdown(result: dict) -> str:
    lines = [f"# instyle live (/v1/live) on loopback, {result['date']}", "",
             f"{result['cpu']}, {result['cpus']} CPUs; git {result['git_rev']}; {result['duration_s']:g} s of frames "
             "per row, one frame in flight per viewer, the same JPEG each time (quality 85); viewers and server "
             "on the same machine. Load averages are /proc/loadavg's, before → after each row (other jobs ran "
             "on this machine).", "",
             "| max batch | backend | size | viewers | frames | frames/s per viewer | p50 ms | p95 ms | "
             "server p50 ms | mean batch | load avg before → after |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        if r["skipped"]:
            lines.append(f"| – | {r['device']} | {r['size']} | – | – | {r['skipped']} | | | | | |")
            continue
        lines.append(f"| {r['max_batch']} | {r['backend']} {r['precision']} | {r['size']} | {r['viewers']} | "
                     f"{r['frames']} | {r['fps_per_viewer']} | {r['p50_ms']} | {r['p95_ms']} | {r['server_p50_ms']} | "
                     f"{r['mean_batch']} | {' '.join(r['loadavg_before'].split()[:3])} → "
                     f"{' '.join(r['loadavg_after'].split()[:3])} |")
    return "\n".join(lines) + "\n"


def _pairs(text: str) -> list[tuple[int, int]]:
    out = []
    for part in text.split(","):
        w, _, h = part.strip().lower().partition("x")
        out.append((int(w), int(h)))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m instyle.bench.live", description=__doc__.split("\n")[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        sizes, counts = _pairs(args.sizes), [int(n) for n in args.viewers.split(",")]
    except ValueError:
        parser.error("--sizes takes WxH,WxH... and --viewers N,N...")
    if min(counts) < 1 or min(min(s) for s in sizes) < 1 or not args.duration > 0 or args.max_batch < 1:
        parser.error("--viewers, --sizes, --duration and --max-batch must be positive")
    from instyle.bench.devices import cpu_name, git_rev, now, slug, versions
    from instyle.paths import data_dir

    photo = Path(args.photo) if args.photo else data_dir() / "content" / "demo" / "chicago.jpg"
    load_before = _loadavg()
    rows = [r for n in dict.fromkeys((args.max_batch, 1)) for r in run_config(args, photo, sizes, counts, n)]
    result = {"date": now(), "git_rev": git_rev(), "cpu": cpu_name(), "cpus": os.cpu_count(),
              "versions": versions(), "duration_s": args.duration, "max_wait_ms": args.max_wait_ms,
              "photo": photo.name, "loadavg_before": load_before, "loadavg_after": _loadavg(),
              "rows": rows + [NOT_MEASURED]}
    print(markdown(result))
    out = args.out or Path(__file__).parent / "results" / f"{result['date'][:10]}-{slug(result['cpu'])}-live"
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "results.md").write_text(markdown(result))
    print(f"wrote {out}/results.json and results.md", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
