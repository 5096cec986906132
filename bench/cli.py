"""`instyle bench`: latency/throughput across backends, precisions, sizes and batch sizes.

    instyle bench                                   # every backend, default sizes, this device
    instyle bench --backends eager,onnxruntime --sizes 256,512 --iters 20
    instyle bench --compare bench/results/A/results.json bench/results/B/results.json

Writes results.json, results.csv, results.md and latency.png to --out (default
bench/results/<date>-<device>/). Heavy imports happen in run(), so `instyle --help` stays fast.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from instyle.errors import UsageError  # a leaf: no torch for --help
from instyle.specs import PRECISION_NAMES

GPU_SIZES, CPU_SIZES = "256,512,1024,1920x1080,3840x2160", "256,512,1024"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", metavar="M", help="shipped style, model file, or an architecture name "
                        "(johnson, pyramid) for random weights; default: the first shipped style, else a "
                        "random JohnsonNet (timings do not depend on weight values)")
    parser.add_argument("--backends", default="all", metavar="LIST",
                        help="comma-separated (eager, triton, compile, onnxruntime, openvino, tensorrt, ...), or all; "
                        "unavailable ones become rows marked skipped (default: all)")
    parser.add_argument("--backend-option", action="append", default=[], metavar="KEY=VALUE",
                        help="a backend's own option, repeatable; each backend of --backends gets those it takes "
                        "(e.g. mode=default for compile, prenorm=all for fused)")
    parser.add_argument("--precisions", metavar="LIST", help="fp32,fp16,bf16 (default: all three on CUDA; on CPU "
                        "fp32, and fp32,bf16 for openvino)")
    parser.add_argument("--sizes", metavar="LIST", help=f"N (square) or WxH, comma-separated "
                        f"(default: {GPU_SIZES} on CUDA, {CPU_SIZES} on CPU)")
    parser.add_argument("--batch", metavar="LIST", help="batch sizes, comma-separated (default: 1,8 on CUDA, 1 on CPU)")
    parser.add_argument("--iters", type=int, default=20, metavar="N", help="timed calls per row (default 20)")
    parser.add_argument("--warmup", type=int, default=3, metavar="N", help="untimed warm-up calls per row, "
                        "reported as warmup_s (default 3; at least 1 is always made)")
    parser.add_argument("--threads", type=int, metavar="N", help="torch intra-op threads on CPU (eager/compile "
                        "rows; onnxruntime sizes its own pool to the physical cores); default: torch's choice")
    parser.add_argument("--image", type=Path, metavar="PHOTO", help="time on this photo resized to each size "
                        "(default: uniform noise); rows after an eager fp32 row of the same shape get "
                        "psnr_vs_eager_db")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N (default auto)")
    parser.add_argument("--tile", default="off", help="off (default: whole images), auto, or a tile side in "
                        "pixels; every row records the tile side that ran (`tiled`)")
    parser.add_argument("--out", type=Path, metavar="DIR",
                        help="output folder (default bench/results/<date>-<device>/)")
    parser.add_argument("--compare", nargs=2, metavar=("A.json", "B.json"),
                        help="print B's speed relative to A's, row by row, and exit (no benchmark run)")


def parse_sizes(text: str) -> list[tuple[int, int]]:
    """'256,1920x1080' -> [(256, 256), (1080, 1920)]: (height, width); WxH is width first, like 1920x1080."""
    from instyle.specs import parse_size

    sizes = []
    for item in text.split(","):
        try:
            w, h = parse_size(item)
        except ValueError:
            raise UsageError(f"bad size {item.strip()!r} in --sizes (use N or WxH, e.g. 512 or 1920x1080)") from None
        sizes.append((h, w))
    return sizes


def parse_list(text: str, choices: tuple[str, ...], flag: str) -> list[str]:
    items = [s.strip() for s in text.split(",") if s.strip()]
    for item in items:
        if item not in choices:
            raise UsageError(f"unknown {flag[2:].rstrip('s')} {item!r} in {flag} (choose from {', '.join(choices)})")
    if not items:
        raise UsageError(f"{flag} is empty")
    return list(dict.fromkeys(items))


def parse_batches(text: str) -> list[int]:
    try:
        batches = [int(s) for s in text.split(",")]
    except ValueError:
        raise UsageError(f"bad --batch {text!r} (use positive integers, e.g. 1,8)") from None
    if any(b < 1 for b in batches):
        raise UsageError(f"bad --batch {text!r} (batch sizes must be >= 1)")
    return list(dict.fromkeys(batches))


def load_model(spec: str | None):
    """(module, name, note) for --model; random weights where no file is involved."""
    import torch

    from instyle import checkpoint, models

    def random(arch: str):
        # seeded, so the same weights come back each run and export caches (ONNX, TensorRT) hit
        with torch.random.fork_rng():
            torch.manual_seed(0)
            return models.build(arch)

    if spec is None:
        try:
            path = checkpoint.resolve(None)
        except checkpoint.CheckpointError:
            return random("johnson"), "johnson (random)", \
                "no shipped style yet: randomly initialised JohnsonNet() (timings do not depend on weights)"
    elif spec in models.ARCHS and not Path(spec).exists() and spec not in checkpoint.shipped():
        return random(spec), f"{spec} (random)", f"randomly initialised {spec} generator, default config"
    else:
        path = checkpoint.resolve(spec)
    module, meta = checkpoint.load(path)
    return module, meta.get("style") or path.stem, None


def _read_image(path: Path | None):
    """3,H,W float 0..255 tensor of a photo (EXIF orientation applied), or None."""
    if path is None:
        return None
    import numpy as np
    import torch
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as img:
            rgb = np.asarray(ImageOps.exif_transpose(img).convert("RGB"), dtype=np.float32)
    except OSError as e:
        raise UsageError(f"--image {path}: {e}") from None
    return torch.from_numpy(rgb).permute(2, 0, 1).contiguous()


def default_out(date: str, device_name: str) -> Path:
    from instyle.paths import PROJECT_ROOT

    from .devices import slug

    root = PROJECT_ROOT / "bench" / "results" if (PROJECT_ROOT / "bench").is_dir() else Path("bench-results")
    return root / f"{date}-{slug(device_name)}"


NOTES = {
    "timing": "Steady-state figures exclude setup (setup_s: building the Stylizer, export/conversion or cache "
              "load included), the first call at each new size (first_call_s: per-shape compilation) and the "
              "other warm-up calls (warmup_s counts all warm-up calls, the first included); each of `iters` "
              "calls is timed alone: CUDA events on GPU, time.perf_counter on CPU.",
    "flops": "tflops counts convolution FLOPs only (2 x MACs of every conv/transposed conv, from forward "
             "hooks on the real modules, at the padded size); norms, activations and bias adds are not in it.",
    "bound": "bound_ms = max(conv FLOPs / peak FLOP/s, min bytes / peak GB/s) with min bytes = float32 input "
             "read + float32 output written + weights read once at the run precision; fp32 uses the TF32 "
             "tensor-core peak (cuDNN's default for fp32 convs); null where the device's peak is unknown.",
    "memory": "peak_mem_mb: CUDA = torch.cuda.max_memory_allocated over warm-up and timed calls (PyTorch "
              "allocator only; null for onnxruntime/tensorrt, which allocate outside it); CPU = the process's "
              "peak RSS so far (ru_maxrss), a high-water mark of the whole run, not of the row alone.",
}


def _tile(text: str):
    from instyle.engine.stylizer import parse_tile

    try:
        return parse_tile(text)
    except ValueError as e:
        raise UsageError(f"--tile: {e}") from None


def _loadavg() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def run(args: argparse.Namespace) -> int:
    if args.compare:
        from . import report

        print(report.compare(report.load(args.compare[0]), report.load(args.compare[1])))
        return 0
    from instyle.engine import BACKENDS

    backends = list(BACKENDS) if args.backends.strip() == "all" else parse_list(args.backends, BACKENDS, "--backends")
    from instyle.specs import parse_option

    try:
        options = dict(parse_option(t) for t in args.backend_option)
    except ValueError as e:
        raise UsageError(f"--backend-option: {e}") from None
    if args.precisions is not None:
        parse_list(args.precisions, PRECISION_NAMES, "--precisions")
    for text, parse in ((args.sizes, parse_sizes), (args.batch, parse_batches)):
        if text is not None:
            parse(text)
    if args.iters < 1 or args.warmup < 0:
        raise UsageError("--iters must be >= 1 and --warmup >= 0")
    if args.threads is not None and args.threads < 1:
        raise UsageError("--threads must be >= 1")
    from instyle.errors import require

    require("matplotlib", "the latency plot of instyle bench")  # before any timing, not after it

    import torch

    from instyle.engine.backends import split_options
    from instyle.specs import resolve_device

    from . import devices, flops, harness, report

    try:
        per_backend = split_options(backends, options)
    except ValueError as e:
        raise UsageError(f"--backend-option: {e}") from None
    device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    cuda = device.type == "cuda"
    matrix = harness.Matrix(
        backends=backends,
        precisions=parse_list(args.precisions or ("fp32,fp16,bf16" if cuda else "fp32"), PRECISION_NAMES,
                              "--precisions"),
        sizes=parse_sizes(args.sizes or (GPU_SIZES if cuda else CPU_SIZES)),
        batches=parse_batches(args.batch or ("1,8" if cuda else "1")),
        iters=args.iters, warmup=args.warmup, tile=_tile(args.tile),
        # on CPU only openvino has a fast bf16 (the CPU's BF16 units); other backends' bf16 is opt-in
        per_backend={} if cuda or args.precisions else {"openvino": ["fp32", "bf16"]},
        image=_read_image(args.image), options=per_backend)
    model, name, note = load_model(args.model)
    counted = flops.count(model)
    info = devices.device_info(device)
    result = {
        "device": info,
        "versions": devices.versions(),
        "git_rev": devices.git_rev(),
        "date": devices.now(),
        "model": {"name": name, "arch": getattr(model, "arch", type(model).__name__),
                  "config": getattr(model, "config", None), "params": sum(p.numel() for p in model.parameters()),
                  "conv_flops_per_px": counted["conv"], "other_flops_per_px": counted["other"], "note": note},
        "matrix": {"iters": matrix.iters, "warmup": matrix.warmup, "torch_threads": torch.get_num_threads(),
                   "input": str(args.image) if args.image else "uniform noise",
                   "options": {b: o for b, o in per_backend.items() if o}},
        "notes": NOTES,
    }
    load_before = _loadavg()
    measured = harness.run(model, matrix, device, info)
    # other processes on the machine change the numbers (CPU runs above all): record how busy it was
    result["matrix"]["load_avg_1m"] = {"start": load_before, "end": _loadavg()}
    result["interrupted"] = measured.interrupted
    result["rows"] = measured.rows
    out = args.out or default_out(result["date"][:10], info["name"])
    paths = report.write_all(result, out)
    print(report.markdown(result))
    print(f"wrote {', '.join(str(p) for p in paths.values())}", file=sys.stderr)
    return 130 if measured.interrupted else 0
