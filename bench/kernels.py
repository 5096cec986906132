"""Kernel microbenchmark: fused Triton instance norm vs PyTorch.

    python -m instyle.bench.kernels [--out DIR] [--dtypes fp16,bf16,fp32] [--layouts nchw,channels_last]
                                    [--shapes 1x32x2160x3840,...] [--ops in_relu,in_residual] [--smoke]

Per (shape, layout, dtype, op) it times three implementations of the same math:
  fused    instyle.kernels.instance_norm (one op: IN + affine + ReLU / residual add)
  torch    F.instance_norm, then a separate torch.relu / residual add (what eager PyTorch runs)
  compile  torch.compile of instance_norm_ref (Inductor's own fusion of the fp32 reference)
and reports the median of --iters calls timed with CUDA events (the first call -- Triton JIT or Inductor
compile -- and --warmup more calls are timed separately), achieved GB/s over the minimum traffic
(read x [+ residual] + write y; IN's second read of x is not counted, so 100 % is the true roofline)
and that as % of the device's peak DRAM bandwidth (bench/devices.py; "unknown" elsewhere).
Writes kernels.json and kernels.md (GPU name, torch/triton versions, git revision, date) into --out.

Needs CUDA. On a machine without it, --smoke runs one tiny shape through the Triton interpreter to
check that the script works; its timings say nothing about performance.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from instyle.interpreter import interpreting

SHAPES = [(1, 32, 2160, 3840), (1, 64, 1080, 1920), (1, 128, 540, 960), (8, 32, 512, 512)]
SMOKE_SHAPES = [(1, 8, 24, 40)]
OPS = {  # op name -> (activation, has residual)
    "in_relu": ("relu", False),      # conv layers of the Johnson net: relu(IN(conv(x)))
    "in_residual": (None, True),     # residual blocks: IN(conv(...)) + x
}
IMPLS = ("fused", "torch", "compile")


def _parse_shapes(text: str) -> list[tuple[int, ...]]:
    shapes = [tuple(int(v) for v in s.lower().split("x")) for s in text.split(",") if s]
    if any(len(s) != 4 or min(s) < 1 for s in shapes):
        raise argparse.ArgumentTypeError(f"shapes are NxCxHxW, comma-separated: {text!r}")
    return shapes


def _impls(torch, F, kernels, activation, residual):
    """name -> callable(x, w, b) for the three implementations of act(IN(x) * w + b) [+ residual]."""
    def fused(x, w, b):
        return kernels.instance_norm(x, w, b, activation=activation, residual=residual)

    def eager(x, w, b):
        y = F.instance_norm(x, weight=w, bias=b)
        if activation == "relu":
            y = torch.relu(y)
        return y + residual if residual is not None else y

    def ref(x, w, b):
        return kernels.instance_norm_ref(x, w, b, activation=activation, residual=residual)

    torch._dynamo.reset()  # a fresh compile per configuration, no recompile-limit fallbacks to eager
    return {"fused": fused, "torch": eager, "compile": torch.compile(ref, dynamic=False, fullgraph=True)}


def _time(torch, fn, args, iters: int, warmup: int, cuda: bool) -> dict:
    """First-call seconds, warm-up seconds, median/p10/p90 ms of `iters` timed calls and, on CUDA, the
    peak memory they allocate beyond what was allocated before."""
    from instyle import timing

    device = "cuda" if cuda else "cpu"
    first_s = timing.wall(fn, *args, device=device)[1]
    warmup_s = timing.wall(fn, *args, device=device, calls=warmup)[1]
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    ms = timing.time_calls(fn, *args, n=iters, device=device)
    peak_mb = (torch.cuda.max_memory_allocated() - base) / 2**20 if cuda else None
    return dict(**timing.summary(ms), first_call_s=first_s, warmup_s=warmup_s, extra_mem_mb=peak_mb)


def run(shapes, dtypes, layouts, ops, iters, warmup, device_info, log=print) -> list[dict]:
    import torch
    import torch.nn.functional as F

    from instyle import kernels
    from instyle.precision import DTYPES

    cuda = device_info["kind"] == "cuda"
    device = "cuda" if cuda else "cpu"
    peak_gbps = device_info.get("peak_gbps")
    rows = []
    for shape in shapes:
        for layout in layouts:
            fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
            for dtype_name in dtypes:
                dtype = DTYPES[dtype_name]
                for op in ops:
                    activation, has_res = OPS[op]
                    base = dict(shape="x".join(map(str, shape)), layout=layout, dtype=dtype_name, op=op)
                    try:
                        x = torch.randn(shape, device=device, dtype=dtype).contiguous(memory_format=fmt)
                        w = torch.randn(shape[1], device=device, dtype=dtype)
                        b = torch.randn(shape[1], device=device, dtype=dtype)
                        r = torch.randn_like(x) if has_res else None
                    except torch.cuda.OutOfMemoryError as e:
                        rows += [dict(base, impl=i, skipped=f"out of memory allocating inputs: {e}"[:200])
                                 for i in IMPLS]
                        continue
                    nbytes = x.numel() * x.element_size() * (3 if has_res else 2)  # read x [+ r], write y
                    for impl, fn in _impls(torch, F, kernels, activation, r).items():
                        row = dict(base, impl=impl, bytes=nbytes, skipped=None)
                        try:
                            row.update(_time(torch, fn, (x, w, b), iters, warmup, cuda))
                        except Exception as e:  # noqa: BLE001 -- a row that fails is reported, the run goes on
                            row["skipped"] = f"{type(e).__name__}: {e}".splitlines()[0][:200]
                            rows.append(row)
                            log(f"  {base} {impl}: skipped ({row['skipped']})")
                            continue
                        gbps = nbytes / (row["median_ms"] * 1e-3) / 1e9
                        row["gbps"] = gbps
                        row["pct_peak_bw"] = 100 * gbps / peak_gbps if peak_gbps else None
                        rows.append(row)
                        log(f"  {base['shape']:>15} {layout:13} {dtype_name} {op:11} {impl:7} "
                            f"{row['median_ms']:9.3f} ms {gbps:8.1f} GB/s "
                            + (f"{row['pct_peak_bw']:5.1f} % peak" if peak_gbps else "peak unknown"))
                    del x, w, b, r
                    if cuda:
                        torch.cuda.empty_cache()
    return rows


def markdown(result: dict) -> str:
    dev = result["device"]
    peak = f"{dev['peak_gbps']} GB/s peak" if dev.get("peak_gbps") else "peak bandwidth unknown"
    lines = [f"# instyle kernel microbenchmark: instance norm on {dev['name']} ({peak})", "",
             f"{result['date']} · git {result.get('git_rev') or '?'} · torch {result['versions'].get('torch')} · "
             f"triton {result['versions'].get('triton')} · {result['iters']} timed calls after "
             f"{result['warmup']} warm-up (first call timed separately)", ""]
    if result.get("note"):
        lines += [f"**{result['note']}**", ""]
    lines += ["GB/s over the minimum traffic: read x (+ residual) + write y. Median ms per call.", "",
              "| shape | layout | dtype | op | fused ms | torch ms | compile ms | fused GB/s | fused % peak "
              "| vs torch | vs compile |",
              "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    groups: dict[tuple, dict] = {}
    for row in result["rows"]:
        groups.setdefault((row["shape"], row["layout"], row["dtype"], row["op"]), {})[row["impl"]] = row
    fmt = lambda v, f: "–" if v is None else f.format(v)  # noqa: E731
    for key, g in groups.items():
        ms = {i: (g.get(i) or {}).get("median_ms") for i in IMPLS}
        fused = g.get("fused") or {}
        ratio = lambda other: None if not (ms["fused"] and ms[other]) else ms[other] / ms["fused"]  # noqa: E731
        lines.append("| " + " | ".join([*key, fmt(ms["fused"], "{:.3f}"), fmt(ms["torch"], "{:.3f}"),
                                        fmt(ms["compile"], "{:.3f}"), fmt(fused.get("gbps"), "{:.0f}"),
                                        fmt(fused.get("pct_peak_bw"), "{:.1f}"), fmt(ratio("torch"), "{:.2f}×"),
                                        fmt(ratio("compile"), "{:.2f}×")]) + " |")
    skipped = [r for r in result["rows"] if r.get("skipped")]
    if skipped:
        lines += ["", "Skipped:"] + [f"- {r['shape']} {r['layout']} {r['dtype']} {r['op']} {r['impl']}: "
                                     f"{r['skipped']}" for r in skipped]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m instyle.bench.kernels", description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=Path("bench-kernels"), help="output folder (default ./bench-kernels)")
    p.add_argument("--shapes", type=_parse_shapes, help="NxCxHxW,... (default: the four standard shapes)")
    p.add_argument("--dtypes", default="fp16,bf16,fp32")
    p.add_argument("--layouts", default="nchw,channels_last")
    p.add_argument("--ops", default=",".join(OPS))
    p.add_argument("--iters", type=int, default=50)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--smoke", action="store_true", help="without CUDA: one tiny shape in the Triton interpreter")
    args = p.parse_args(argv)
    dtypes, layouts, ops = (args.dtypes.split(","), args.layouts.split(","), args.ops.split(","))
    if not set(dtypes) <= {"fp16", "bf16", "fp32"} or not set(layouts) <= {"nchw", "channels_last"} \
            or not set(ops) <= set(OPS) or args.iters < 1 or args.warmup < 0:
        p.error(f"dtypes from fp16,bf16,fp32; layouts from nchw,channels_last; ops from {','.join(OPS)}; "
                "--iters >= 1, --warmup >= 0")

    import torch

    cuda = torch.cuda.is_available()
    note = None
    if not cuda:
        if not args.smoke:
            print("instyle.bench.kernels needs CUDA; no CUDA device here. (--smoke runs a tiny shape through "
                  "the Triton interpreter to check the script, with no meaningful timings.)", file=sys.stderr)
            return 1
        if "triton" in sys.modules and not interpreting():
            print("--smoke needs TRITON_INTERPRET=1 set before triton is imported", file=sys.stderr)
            return 2
        os.environ["TRITON_INTERPRET"] = "1"  # before instyle.kernels imports triton
        note = "Smoke run on CPU through the Triton interpreter: timings are not performance numbers."
        args.iters, args.warmup = min(args.iters, 2), min(args.warmup, 1)
        if args.dtypes == p.get_default("dtypes"):
            dtypes = ["fp16"]  # each configuration compiles its own Inductor CPU kernel: keep the smoke short
    shapes = args.shapes or (SHAPES if cuda else SMOKE_SHAPES)

    from .devices import device_info, git_rev, now, versions

    dev = device_info(torch.device("cuda" if cuda else "cpu"))
    print(f"instance norm microbenchmark on {dev['name']}" + (f" ({note})" if note else ""))
    rows = run(shapes, dtypes, layouts, ops, args.iters, args.warmup, dev)
    result = dict(kind="kernel-microbench", kernel="instance_norm", device=dev, versions=versions(),
                  git_rev=git_rev(), date=now(), iters=args.iters, warmup=args.warmup, note=note, rows=rows)
    from instyle.atomic import atomic_path

    for name, text in (("kernels.json", json.dumps(result, indent=2) + "\n"), ("kernels.md", markdown(result))):
        with atomic_path(args.out / name) as tmp:
            tmp.write_text(text)
    print(f"wrote {args.out / 'kernels.json'} and {args.out / 'kernels.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
