"""ONNX Runtime (CPU) vs eager PyTorch (CPU) on the same generator, same process, same thread count.

    python -m instyle.bench.ort_vs_eager [--model M] [--sizes 512,1024] [--batch 1] [--repeats 7]
                                         [--threads N] [--out DIR]

Both run the whole contract (pad, generator, crop, clamp) through the engine's Stylizer, backends "eager"
and "onnxruntime". Calls are interleaved (eager, ort, ort, eager, ...) so a neighbour's load on a shared
machine hits both alike; each figure is the median of --repeats timed calls after one warm-up call.
Export and session creation are timed separately (setup_s). Goal: ORT >= 1.5x eager.
Writes results.json and results.md under bench/results/<date>-<cpu>-ort-vs-eager/ (or --out).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

GOAL = 1.5


def _time(fn, x) -> float:
    t0 = time.perf_counter()
    fn(x)
    return time.perf_counter() - t0


def measure(model, size: int, batch: int, repeats: int, threads: int) -> dict:
    from instyle.engine import Stylizer
    from instyle.export.parity import photo_batch

    t0 = time.perf_counter()
    eager = Stylizer(model, backend="eager", precision="fp32", device="cpu")
    t1 = time.perf_counter()
    ort = Stylizer(model, backend="onnxruntime", precision="fp32", device="cpu")
    t2 = time.perf_counter()
    x = photo_batch(batch, size, size)
    diff = float((eager(x) - ort(x)).abs().max())  # also the warm-up call of each
    times: dict[str, list[float]] = {"eager": [], "onnxruntime": []}
    for i in range(repeats):
        order = [("eager", eager), ("onnxruntime", ort)]
        for name, fn in order if i % 2 == 0 else order[::-1]:
            times[name].append(_time(fn, x))
    rows = []
    for name, setup in (("eager", t1 - t0), ("onnxruntime", t2 - t1)):
        ms = sorted(1e3 * t for t in times[name])
        med = statistics.median(ms)
        rows.append({"backend": name, "precision": "fp32", "batch": batch, "height": size, "width": size,
                     "threads": threads, "median_ms": round(med, 2), "min_ms": round(ms[0], 2),
                     "max_ms": round(ms[-1], 2), "mpx_per_s": round(batch * size * size / 1e6 / (med / 1e3), 3),
                     "setup_s": round(setup, 2), "repeats": repeats})
    rows[1]["speedup_vs_eager"] = round(rows[0]["median_ms"] / rows[1]["median_ms"], 2)
    rows[1]["max_abs_diff_vs_eager"] = diff
    return rows


def _sci(value) -> str:
    return "–" if value is None else f"{value:.1e}"


def markdown(result: dict) -> str:
    lines = [f"# ONNX Runtime vs eager PyTorch (CPU): {result['device']['name']}", "",
             f"{result['date']} · git {result['git_rev']} · model {result['model']} · threads {result['threads']}"
             f" (torch and ORT intra-op) · 1-min load average start/end {result['load_start']:.1f}/"
             f"{result['load_end']:.1f} on {os.cpu_count()} logical CPUs", "",
             "Versions: " + ", ".join(f"{k} {v}" for k, v in result["versions"].items() if v), "",
             "| backend | batch | H×W | median ms | min ms | max ms | Mpx/s | setup s | speedup | max abs diff |",
             "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in result["rows"]:
        lines.append(f"| {r['backend']} | {r['batch']} | {r['height']}×{r['width']} | {r['median_ms']:.1f} | "
                     f"{r['min_ms']:.1f} | {r['max_ms']:.1f} | {r['mpx_per_s']:.3f} | {r['setup_s']:.1f} | "
                     f"{r.get('speedup_vs_eager', '–')} | {_sci(r.get('max_abs_diff_vs_eager'))} |")
    lines += ["", f"Goal: ORT ≥ {GOAL}× eager. Median of {result['rows'][0]['repeats']} interleaved calls after "
              "one warm-up; setup = Stylizer creation (ORT: ONNX export, or cache hit, plus session).", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    import torch

    from instyle import checkpoint
    from instyle.bench import devices
    from instyle.export.ort_runner import physical_cores
    from instyle.models import JohnsonNet

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", help="style name or model path (default: the shared random-transformernet.pth, "
                                   "else a random JohnsonNet; timings do not depend on the weights)")
    p.add_argument("--sizes", default="512,1024")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--threads", type=int, default=physical_cores())
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    os.environ["INSTYLE_ORT_THREADS"] = str(args.threads)
    from instyle.paths import data_dir

    default = data_dir() / "pretrained" / "random-transformernet.pth"
    if args.model or default.is_file():
        model, meta = checkpoint.load(checkpoint.resolve(args.model or default))
        name = meta.get("style") or "model"
    else:
        model, name = JohnsonNet().eval(), "johnson (random)"
    load_start = os.getloadavg()[0]
    rows = []
    for size in (int(s) for s in args.sizes.split(",")):
        rows += measure(model, size, args.batch, args.repeats, args.threads)
        print(json.dumps(rows[-1]), flush=True)
    cpu = devices.device_info(torch.device("cpu"))
    result = {"device": cpu, "versions": devices.versions(), "git_rev": devices.git_rev(), "date": devices.now(),
              "model": name, "threads": args.threads, "load_start": load_start, "load_end": os.getloadavg()[0],
              "rows": rows}
    out = args.out or (Path(__file__).resolve().parent / "results" /
                       f"{result['date'][:10]}-{devices.slug(cpu['name'])}-ort-vs-eager")
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "results.md").write_text(markdown(result))
    print(markdown(result))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
