"""CPU backends (ONNX Runtime, OpenVINO) vs eager PyTorch fp32 on the same generator, same process.

    python -m instyle.bench.ort_vs_eager [--model M] [--sizes 512,1024] [--batch 1] [--repeats 7]
                                         [--threads N] [--backends onnxruntime,openvino:fp32,openvino:bf16]
                                         [--out DIR]

All run the whole contract (pad, generator, crop, clamp) through the engine's Stylizer on a real photo
(export.parity.photo_batch). Calls are interleaved, the order rotating every round, so a neighbour's load on
a shared machine hits all alike; each figure is the median of --repeats timed calls after one warm-up call.
Stylizer creation (export/conversion/compilation or a cache hit) is setup_s; the warm-up call, the first at
that size, is first_call_s. Each row is compared with eager fp32: speedup, max |diff| and PSNR (0..255).
Writes results.json and results.md under bench/results/<date>-<cpu>-ort-vs-eager/ (--backends onnxruntime,
the default) or <date>-<cpu>-cpu-backends/ (or --out).
"""
from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path

GOAL = 1.5


def measure(model, size: int, batch: int, repeats: int, threads: int,
            others: tuple[tuple[str, str], ...] = (("onnxruntime", "fp32"),)) -> list[dict]:
    import copy

    from instyle import timing
    from instyle.engine import Stylizer
    from instyle.export.parity import photo_batch
    from instyle.metrics import psnr_db

    entries = []  # (backend, precision, stylizer, setup_s)
    for backend, precision in (("eager", "fp32"), *others):
        # a copy each: a Stylizer casts its module in place
        stylizer, setup_s = timing.wall(
            lambda: Stylizer(copy.deepcopy(model), backend=backend, precision=precision, device="cpu"))
        entries.append((backend, precision, stylizer, setup_s))
    x = photo_batch(batch, size, size)
    first, outputs = [], []
    for _, _, stylizer, _ in entries:  # the warm-up call of each: the first at this size
        y, seconds = timing.wall(stylizer, x)
        outputs.append(y)
        first.append(seconds)
    times: list[list[float]] = [[] for _ in entries]  # ms
    for i in range(repeats):
        k = i % len(entries)
        for j in list(range(k, len(entries))) + list(range(k)):
            times[j] += timing.time_calls(entries[j][2], x, n=1, device="cpu")
    rows = []
    for j, (backend, precision, stylizer, setup) in enumerate(entries):
        ms = sorted(times[j])
        med = timing.summary(ms)["median_ms"]
        rows.append({"backend": backend, "precision": stylizer.precision, "batch": batch, "height": size,
                     "width": size, "threads": threads, "median_ms": round(med, 2), "min_ms": round(ms[0], 2),
                     "max_ms": round(ms[-1], 2), "mpx_per_s": round(batch * size * size / 1e6 / (med / 1e3), 3),
                     "setup_s": round(setup, 2), "first_call_s": round(first[j], 2), "repeats": repeats})
        if j:
            psnr = psnr_db(outputs[j], outputs[0])
            rows[-1]["speedup_vs_eager"] = round(rows[0]["median_ms"] / med, 2)
            rows[-1]["max_abs_diff_vs_eager"] = float((outputs[j] - outputs[0]).abs().max())
            rows[-1]["psnr_vs_eager_db"] = round(psnr, 1) if math.isfinite(psnr) else None  # identical: None
    return rows


def _sci(value) -> str:
    return "–" if value is None else f"{value:.1e}"


def markdown(result: dict) -> str:
    isa = result["device"].get("isa")
    lines = [f"# CPU backends vs eager PyTorch fp32: {result['device']['name']}"
             + (f" ({' '.join(isa)}{'' if 'amx_bf16' in isa else '; no AMX'})" if isa is not None else ""), "",
             f"{result['date']} · git {result['git_rev']} · model {result['model']} · threads {result['threads']}"
             f" (torch, ORT and OpenVINO) · 1-min load average start/end {result['load_start']:.1f}/"
             f"{result['load_end']:.1f} on {os.cpu_count()} logical CPUs", "",
             "Versions: " + ", ".join(f"{k} {v}" for k, v in result["versions"].items() if v), "",
             "| backend | precision | batch | H×W | median ms | min ms | max ms | Mpx/s | setup s | first call s "
             "| speedup | max abs diff | PSNR dB |",
             "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in result["rows"]:
        lines.append(f"| {r['backend']} | {r.get('precision', 'fp32')} | {r['batch']} | {r['height']}×{r['width']} | "
                     f"{r['median_ms']:.1f} | {r['min_ms']:.1f} | {r['max_ms']:.1f} | {r['mpx_per_s']:.3f} | "
                     f"{r['setup_s']:.1f} | {r.get('first_call_s', float('nan')):.2f} | "
                     f"{r.get('speedup_vs_eager', '–')} | {_sci(r.get('max_abs_diff_vs_eager'))} | "
                     f"{r.get('psnr_vs_eager_db') or '–'} |")
    lines += ["", f"Median of {result['rows'][0]['repeats']} interleaved calls (order rotating each round) after "
              "one warm-up (first call s); setup = Stylizer creation (export/conversion/compilation, or a cache "
              "hit); speedup, max abs diff and PSNR (0..255 scale) against eager fp32.", ""]
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
    p.add_argument("--backends", default="onnxruntime", help="comma-separated BACKEND[:PRECISION] compared with "
                   "eager fp32, e.g. onnxruntime,openvino:fp32,openvino:bf16 (default: onnxruntime)")
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    others = tuple((b.partition(":")[0].strip(), b.partition(":")[2].strip() or "fp32")
                   for b in args.backends.split(",") if b.strip())

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
        rows += measure(model, size, args.batch, args.repeats, args.threads, others)
        print(json.dumps(rows[-1]), flush=True)
    cpu = devices.device_info(torch.device("cpu"))
    result = {"device": cpu, "versions": devices.versions(), "git_rev": devices.git_rev(), "date": devices.now(),
              "model": name, "threads": args.threads, "load_start": load_start, "load_end": os.getloadavg()[0],
              "rows": rows}
    out = args.out or (Path(__file__).resolve().parent / "results" /
                       f"{result['date'][:10]}-{devices.slug(cpu['name'])}-"
                       f"{'ort-vs-eager' if others == (('onnxruntime', 'fp32'),) else 'cpu-backends'}")
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "results.md").write_text(markdown(result))
    print(markdown(result))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
