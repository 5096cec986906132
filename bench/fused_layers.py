"""Per-layer roofline of the fused conv-IN chain (backend "fused"): FLOPs and minimum bytes per layer.

    python -m instyle.bench.fused_layers --size 3840x2160 [--batch 1] [--precision fp16] [--iters 20]

Prints, for every launch of engine/backends/fused_gemm.py at the given size, its conv FLOPs (2 x MACs, as
bench/flops.py counts them) and the minimum bytes that launch must move in the fused design: its raw
input once, the skip read/write of residual blocks, its raw output once, weights, and the IN partial
statistics (written by the epilogue, read back by `finalize`). Halo re-reads are cache hits and not
counted. Layers marked +pre normalize their input in a separate pass first (engine/backends/fused_gemm.py
PRENORM_MIN_REUSE; --prenorm all|none forces either way). --first-layer window reads the RGB layer's
input in row windows of a padded NHWC copy (conv1+win; the copy's write and read are counted). On CUDA it
then times each layer (normalize pass + conv + statistics finalize) with CUDA events after a warm-up
(which autotunes) and adds ms, achieved TFLOP/s and GB/s, then times the whole chain as the Stylizer
runs it (CUDA graph replay): first-call time, ms/batch, Mpx/s and peak memory. On CPU it prints the
analytic table only.
"""
from __future__ import annotations

import argparse

import torch

from instyle import timing
from instyle.engine import backends
from instyle.engine.backends import fused_gemm as FC
from instyle.kernels import conv_in_gemm as CI
from instyle.models.johnson import JohnsonNet
from instyle.precision import DTYPES


def layer_table(model: torch.nn.Module, n: int, h: int, w: int, precision: str = "fp16",
                prenorm: str = "auto", first_layer: str = "flat") -> list[dict]:
    """One row per fused layer (its conv launch, plus its separate normalize pass where the chain uses
    one): name, shapes, conv FLOPs and minimum bytes moved."""
    b = DTYPES[precision].itemsize
    chain = FC.FusedChain(model, DTYPES[precision], prenorm, first_layer)
    layers = chain.layers()
    rows = []
    stat_m = CI.GPU_STAT_M
    for i, L in enumerate(layers):
        ho, wo = CI.out_size(h, L.kernel, L.stride, L.upsample), CI.out_size(w, L.kernel, L.stride, L.upsample)
        in_b = 4 if i == 0 else b                     # conv1 reads the fp32 NCHW image in place
        out_b = 4 if L.in_weight is None else b       # deconv3 writes the fp32 NCHW output
        act_in = n * h * w * L.cin
        pad = L.kernel // 2
        copy = n * (h + 2 * pad) * (w + 2 * pad) * CI.window_channels(L.cin) * b if L.window else 0
        moved = {
            "input": act_in * in_b + 2 * copy,  # window: the padded copy is written, then read
            # separate normalize pass: read raw (+ skip), write normalized (into the next skip buffer)
            "prenorm": act_in * b * (2 + L.adds_skip) if L.prenorm else 0,
            "skip": 0 if L.prenorm else act_in * b * (L.adds_skip + L.stores_input),
            "weights": L.weight.numel() * b,
            "output": n * ho * wo * L.cout * out_b,
            "stats": 0 if L.in_weight is None else 2 * 2 * n * -(-ho * wo // stat_m) * L.cout * 4,
        }
        rows.append(dict(name=_row_name(L), k=L.kernel, stride=L.stride, up=L.upsample,
                         cin=L.cin, cout=L.cout, hin=h, win=w, hout=ho, wout=wo,
                         flops=2 * n * ho * wo * L.cout * L.cin * L.kernel * L.kernel,
                         bytes=sum(moved.values()), **{f"b_{k}": v for k, v in moved.items()}))
        h, w = ho, wo
    return rows


def _row_name(layer) -> str:
    return layer.name + ("+pre" if layer.prenorm else "") + ("+win" if layer.window else "")


def time_layers(model, x: torch.Tensor, precision: str, iters: int, prenorm: str = "auto",
                first_layer: str = "flat") -> dict[str, float]:
    """Median ms per layer (CUDA events around normalize pass + conv + finalize), after one warm-up run
    that autotunes."""
    chain = FC.FusedChain(model, DTYPES[precision], prenorm, first_layer)
    names = {L.name: _row_name(L) for L in chain.layers()}
    timing.wall(chain, x, device=x.device)
    samples: dict[str, list[float]] = {}
    for _ in range(iters):
        trace: list = []
        chain(x, trace=trace)
        torch.cuda.synchronize()
        for name, start, end in trace:
            samples.setdefault(names[name], []).append(start.elapsed_time(end))
    return {k: timing.summary(v)["median_ms"] for k, v in samples.items()}


def time_whole(model, x: torch.Tensor, precision: str, iters: int, prenorm: str = "auto",
               first_layer: str = "flat") -> dict:
    """The backend as the Stylizer runs it (CUDA graph replay), timed as `instyle bench` times a row:
    first-call (compile + autotune + capture) time, steady-state median/p10/p90 ms per batch, and peak
    memory."""
    run = backends.factory("fused")(model, x.device, DTYPES[precision], prenorm=prenorm, first_layer=first_layer)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    first_s = timing.wall(run, x, device=x.device)[1]
    stats = timing.summary(timing.time_calls(run, x, n=iters, device=x.device))
    return dict(first_s=first_s, **stats, peak_mb=torch.cuda.max_memory_allocated() / 2**20)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m instyle.bench.fused_layers", description=__doc__.splitlines()[0])
    p.add_argument("--size", default="3840x2160", help="WIDTHxHEIGHT (padded to multiples of 4)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--precision", choices=list(DTYPES), default="fp16")
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--blocks", type=int, default=5)
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--prenorm", choices=FC.PRENORM_MODES, default="auto",
                   help="where the previous IN is applied: auto (engine default), all (separate pass), none (prologue)")
    p.add_argument("--first-layer", choices=FC.FIRST_LAYER_MODES, default="flat",
                   help="the RGB layer's K order: flat (engine default) or window (row windows of a padded copy)")
    a = p.parse_args(argv)
    wdt, hgt = (int(v) for v in a.size.lower().split("x"))
    hgt, wdt = max(-(-hgt // 4) * 4, 8), max(-(-wdt // 4) * 4, 8)
    model = JohnsonNet(width=a.width, blocks=a.blocks).eval()
    rows = layer_table(model, a.batch, hgt, wdt, a.precision, a.prenorm, a.first_layer)
    timed = None
    if torch.cuda.is_available():
        model = model.cuda().to(DTYPES[a.precision])
        x = torch.rand(a.batch, 3, hgt, wdt, device="cuda") * 255
        timed = time_layers(model, x, a.precision, a.iters, a.prenorm, a.first_layer)
        whole = time_whole(model, x, a.precision, a.iters, a.prenorm, a.first_layer)
    px = a.batch * hgt * wdt
    print(f"fused chain, JohnsonNet(width={a.width}, blocks={a.blocks}), {a.batch}x3x{hgt}x{wdt}, {a.precision}, "
          f"prenorm={a.prenorm}, first_layer={a.first_layer} (+pre: the layer's input is normalized in a separate "
          f"pass; +win: row windows of a padded copy)")
    head = f"{'layer':<16}{'k':>3}{'s':>2}{'up':>3}{'cin':>5}{'cout':>5}{'out HxW':>12}{'GFLOP':>9}{'MB min':>9}"
    head += f"{'B/px':>7}{'FLOP/B':>8}" + (f"{'ms':>8}{'TFLOP/s':>9}{'GB/s':>8}" if timed else "")
    print(head)
    for r in rows:
        line = (f"{r['name']:<16}{r['k']:>3}{r['stride']:>2}{'x2' if r['up'] else '':>3}{r['cin']:>5}{r['cout']:>5}"
                f"{str(r['hout']) + 'x' + str(r['wout']):>12}{r['flops'] / 1e9:>9.1f}{r['bytes'] / 1e6:>9.1f}"
                f"{r['bytes'] / px:>7.1f}{r['flops'] / r['bytes']:>8.0f}")
        if timed:
            ms = timed[r["name"]]
            line += f"{ms:>8.3f}{r['flops'] / ms / 1e9:>9.1f}{r['bytes'] / ms / 1e6:>8.0f}"
        print(line)
    flops, moved = sum(r["flops"] for r in rows), sum(r["bytes"] for r in rows)
    total = f"{'total':<16}{'':>30}{flops / 1e9:>9.1f}{moved / 1e6:>9.1f}{moved / px:>7.1f}{flops / moved:>8.0f}"
    if timed:
        ms = sum(timed.values())
        total += f"{ms:>8.3f}{flops / ms / 1e9:>9.1f}{moved / ms / 1e6:>8.0f}"
    print(total)
    print(f"per input pixel: {flops / px / 1e6:.3f} MFLOP, {moved / px:.0f} B minimum traffic")
    if not timed:
        print("timings need CUDA (no device here): analytic table only")
        return
    print(f"per layer: {torch.cuda.get_device_name()}, median of {a.iters} runs, CUDA events around each layer "
          "(no graph; includes launch gaps)")
    w = whole
    print(f"whole chain, CUDA graph replay (+ clone of the output): first call {w['first_s']:.1f} s (compile, "
          f"autotune, capture); steady {w['median_ms']:.3f} ms/batch (p10 {w['p10_ms']:.3f}, p90 {w['p90_ms']:.3f}), "
          f"{px / w['median_ms'] / 1e3:.0f} Mpx/s, {flops / w['median_ms'] / 1e9:.0f} TFLOP/s, "
          f"{moved / w['median_ms'] / 1e6:.0f} GB/s of minimum traffic, peak memory {w['peak_mb']:.0f} MB")


if __name__ == "__main__":
    main()
