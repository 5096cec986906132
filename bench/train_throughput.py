"""Training throughput on one GPU: a pytorch/examples-style baseline against this trainer's fast path.

    python -m instyle.bench.train_throughput [--size 256] [--batch 16] [--steps 50] [--vgg PATH] [--json OUT]

Rows (each a fresh generator, same loss layers and weights, synthetic content batches already on the
GPU so the data loader is not what is measured):

* ``baseline``: eager fp32 NCHW, reference InstanceNorm2d (what pytorch/examples fast_neural_style runs);
* ``bf16``, ``bf16+cl`` (channels_last), ``bf16+cl+fused`` (Triton instance norm when available),
  ``bf16+cl+fused+compile``: this trainer's options added one at a time;
* ``bf16+cl+compile``: the compiled step (train/compiled_step.py) without the fused norm, as the zoo runs it.

Warm-up (including torch.compile time) is reported separately from the steady state, which is timed
with CUDA synchronisation around the loop. CUDA only: on a machine without a GPU it says so and exits 0.
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from instyle import timing

ROWS = {
    "baseline": dict(amp="off", channels_last=False, fused="off", compile=False),
    "bf16": dict(amp="bf16", channels_last=False, fused="off", compile=False),
    "bf16+cl": dict(amp="bf16", channels_last=True, fused="off", compile=False),
    "bf16+cl+fused": dict(amp="bf16", channels_last=True, fused="auto", compile=False),
    "bf16+cl+fused+compile": dict(amp="bf16", channels_last=True, fused="auto", compile=True),
    "bf16+cl+compile": dict(amp="bf16", channels_last=True, fused="off", compile=True),
}


def _loss(args, device):
    from instyle.train.common import load_image
    from instyle.train.losses import LossSpec, PerceptualLoss
    from instyle.train.vgg import VGGFeatures, load_vgg

    # pytorch/examples' layers: content relu2_2, style relu1_2, relu2_2, relu3_3, relu4_3
    spec = LossSpec(content_layers=["relu2_2"], style_layers=["relu1_2", "relu2_2", "relu3_3", "relu4_3"])
    if args.random_vgg:
        vgg = VGGFeatures(spec.layers(), convention="caffe")
    else:
        vgg = load_vgg(spec.layers(), args.vgg)
    loss = PerceptualLoss(vgg.to(device), spec)
    if args.style:
        style = load_image(args.style, 512)
    else:
        style = torch.rand(1, 3, 512, 512, generator=torch.Generator().manual_seed(0)) * 255
    loss.set_style(style.to(device))
    return loss


def bench_row(name: str, opts: dict, args, folder: Path, device: torch.device) -> dict:
    from instyle.train.trainer import TrainConfig, Trainer

    if opts["compile"] and args.compile_backend != "inductor":
        opts = dict(opts, compile=args.compile_backend)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    cfg = TrainConfig(style="bench", out=str(folder / f"{name}.safetensors"), data=str(folder),
                      image_size=args.size, batch_size=args.batch, iterations=10**9, workers=0, progress=False,
                      checkpoint_every=10**9, sample_every=0, device=str(device), **opts)
    trainer = Trainer(cfg, _loss(args, device))
    g = torch.Generator(device=device).manual_seed(0)
    batches = [torch.rand(args.batch, 3, args.size, args.size, generator=g, device=device) * 255 for _ in range(4)]
    if cfg.channels_last:
        batches = [b.contiguous(memory_format=torch.channels_last) for b in batches]

    def steps(n: int):
        terms = None
        for i in range(n):
            terms = trainer.train_step(batches[i % len(batches)])
        return terms

    # a throughput window: one wall-clock interval around many back-to-back steps (no per-step sync)
    warm_s = timing.wall(steps, args.warmup, device=device)[1]
    terms, dt = timing.wall(steps, args.steps, device=device)
    return {"row": name, **opts, "fused_layers": trainer.n_fused, "it_per_s": args.steps / dt,
            "images_per_s": args.steps * args.batch / dt, "ms_per_step": 1000 * dt / args.steps,
            "warmup_s": warm_s,
            "peak_mem_mb": torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else float("nan"),
            "final_loss": float(terms["total"])}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=50, help="timed steps per row")
    p.add_argument("--warmup", type=int, default=10, help="untimed steps per row (compile happens here)")
    p.add_argument("--rows", default=",".join(ROWS), help="comma-separated subset of: " + ", ".join(ROWS))
    p.add_argument("--vgg", help="VGG weights (default: as instyle train finds them)")
    p.add_argument("--random-vgg", action="store_true", help="random VGG weights (same cost, no file needed)")
    p.add_argument("--style", help="style image (default: random)")
    p.add_argument("--json", help="write the rows as JSON here")
    p.add_argument("--compile-backend", default="inductor",
                   help="torch.compile backend of the compiled rows (default inductor; aot_eager: capture only)")
    p.add_argument("--cpu-smoke", action="store_true", help=argparse.SUPPRESS)  # exercise the code on CPU
    args = p.parse_args(argv)
    if torch.cuda.is_available():
        device = torch.device("cuda")
        torch.backends.cudnn.benchmark = True
        name = torch.cuda.get_device_name()
    elif args.cpu_smoke:
        device, name = torch.device("cpu"), "cpu (smoke test, not a measurement)"
    else:
        print("train_throughput: no CUDA device here; this benchmark measures GPU training throughput only.")
        return 0
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        Image.fromarray(np.zeros((args.size, args.size, 3), np.uint8)).save(folder / "x.png")
        print(f"{name}  size {args.size}  batch {args.batch}  steps {args.steps}")
        print(f"{'row':<24}{'it/s':>8}{'img/s':>9}{'ms/step':>9}{'warm-up s':>11}{'peak MB':>9}{'fused':>7}")
        for row in [r.strip() for r in args.rows.split(",") if r.strip()]:
            if row not in ROWS:
                p.error(f"unknown row {row!r}")
            r = bench_row(row, ROWS[row], args, folder, device)
            results.append(r)
            print(f"{row:<24}{r['it_per_s']:>8.2f}{r['images_per_s']:>9.1f}{r['ms_per_step']:>9.1f}"
                  f"{r['warmup_s']:>11.1f}{r['peak_mem_mb']:>9.0f}{r['fused_layers']:>7}")
    base = next((r for r in results if r["row"] == "baseline"), None)
    if base:
        for r in results:
            r["speedup"] = r["it_per_s"] / base["it_per_s"]
        print("speed-up vs baseline: " + ", ".join(f"{r['row']} {r['speedup']:.2f}x" for r in results))
    if args.json:
        meta = {"device": name, "torch": torch.__version__, "size": args.size,
                "batch": args.batch, "steps": args.steps}
        Path(args.json).write_text(json.dumps({**meta, "rows": results}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
