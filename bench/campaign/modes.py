"""`campaign --stage verify`, step `modes`: the fused chain's layer variants timed against each other at 4K.

Per layer: conv1 with first_layer=flat vs window, deconv1/deconv2 with upsample=direct vs phase, the first
block's convs with conv3x3=prologue vs tma (kernels/conv_tma.py), each the
whole launch sequence of that layer as the chain runs it (separate normalize pass, conv launch(es),
statistics finalize) on the input the chain hands it; then the whole chain (CUDA-graph replay, as the
Stylizer runs it) for every combination. GPU: triton.testing.do_bench medians (ms; it flushes L2 between
calls). Dry run (CPU, interpreter, tiny size): one wall-clock call each, only to exercise the path.
Written to <stage>/modes.json and returned as the step's result.
"""
from __future__ import annotations

import itertools
import json
import time
from pathlib import Path

import torch

# the layer each option changes; the options' values, the default first
VARIANTS = {"first_layer": ("conv1",), "upsample": ("deconv1", "deconv2"), "conv3x3": ("res2.conv1", "res1.conv2")}
DRY_SIZE, FULL_SIZE = (32, 24), (3840, 2160)


def _median_ms(fn, dry: bool, graph: bool = False) -> float:
    """Median ms of fn. graph: fn's launches captured in a CUDA graph and the replays timed (a layer's launch
    sequence as the Stylizer runs it, without Python's per-launch cost and host-side descriptor encoding);
    else fn timed as called (the whole-chain rows, which replay their own graphs)."""
    if dry:
        t0 = time.perf_counter()
        fn()
        return (time.perf_counter() - t0) * 1e3
    import triton.testing

    if graph:
        return float(triton.testing.do_bench_cudagraph(fn, rep=50, return_mode="median"))
    return float(triton.testing.do_bench(fn, warmup=10, rep=50, return_mode="median"))


def _recorded_calls(chain, x) -> dict:
    """Run the chain once, keeping each layer's _conv arguments (its input as the chain hands it)."""
    calls, conv = {}, chain._conv

    def record(layer, *args, **kwargs):
        calls[layer.name] = (layer, args, kwargs)
        return conv(layer, *args, **kwargs)

    chain._conv = record
    try:
        chain(x)
    finally:
        del chain._conv  # back to the class's method
    return {name: (lambda c=c: conv(c[0], *c[1], **c[2])) for name, c in calls.items()}


@torch.no_grad()
def modes(out: Path, dry: bool, model: torch.nn.Module, x: torch.Tensor, name: str = "given") -> dict:
    """Times every mode of `model` on the photo batch `x` (both on the device to measure) into out/modes.json."""
    from instyle.engine import backends
    from instyle.engine.backends import fused_gemm as FC

    device = x.device
    model = model.to(device).eval()
    dtype = torch.float16
    layers, whole = [], []
    options = {"first_layer": FC.FIRST_LAYER_MODES, "upsample": FC.UPSAMPLE_MODES, "conv3x3": FC.CONV3X3_MODES}
    for option, values in options.items():
        for value in values:
            chain = FC.FusedChain(model, dtype, **{option: value})
            calls = _recorded_calls(chain, x)
            for layer in (name for name in VARIANTS[option] if name in calls):  # a one-block net has no res2
                layers.append({"layer": layer, option: value,
                               "median_ms": round(_median_ms(calls[layer], dry, graph=True), 4)})
            del chain, calls
    for combo in itertools.product(*options.values()):
        kwargs = dict(zip(options, combo))
        run = backends.factory("fused")(model, device, dtype, **kwargs)  # graphed on CUDA
        if not dry:  # compile and capture outside the timing (the dry run's one call is the path's check)
            run(x)
        whole.append({**kwargs, "median_ms": round(_median_ms(lambda: run(x), dry), 4)})
        run = None  # the next combination's graphs replace these
        if device.type == "cuda":
            torch.cuda.empty_cache()
    result = {"size": [int(x.shape[3]), int(x.shape[2])], "batch": int(x.shape[0]), "precision": "fp16",
              "device": str(device), "timer": "wall, one call (dry run)" if dry else "triton.testing.do_bench median",
              "model": name,
              "layers": layers, "whole": whole}
    (out / "modes.json").write_text(json.dumps(result, indent=2))
    return result
