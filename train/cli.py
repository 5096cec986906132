"""`instyle train --style IMG [--style IMG ...] --data DIR --out PATH`: train a feed-forward generator
(several styles: one conditional-IN network for all; torchrun for multi-GPU)."""
from __future__ import annotations

import argparse

from instyle.errors import UsageError  # a leaf: no torch for --help

# Adding a style to a trained zoo: crops of 128 px are what the zoo's weights were calibrated at
# (bench/results/*-zoo-sweep); 8 minutes keeps the command within a coffee break on a laptop CPU, not a
# guarantee of passing the gate (the closing gate line says when more time is needed; docs/styles.md).
FINETUNE_MINUTES, FINETUNE_SIZE = 8.0, 128
# Only the new style's (gamma, beta) rows learn, so a 10x larger step is safe and is what made 8 minutes enough:
# udnie added to zoo v2 without it passed the gate at 1e-2 in the default 8 minutes (440 steps of 4 at 128 px)
# (bench/results/2026-12-07-intel-xeon-finetune/).
FINETUNE_LR = 1e-2
GATE_PHOTOS, GATE_SIDE = 8, 384


def default_workers(given: int | None) -> int:
    import os

    return given if given is not None else min(4, len(os.sched_getaffinity(0)))


def add_arguments(p: argparse.ArgumentParser) -> None:
    from .common import add_loss_arguments

    p.add_argument("--style", action="append", default=[], metavar="IMG[:W]",
                   help="style image (texture mode: the texture to reproduce); repeat it to train one network on "
                        "several styles (conditional instance norm; style names = file names without extension). "
                        "IMG:W multiplies this style's --style-weight by W (e.g. the_scream.jpg:2)")
    p.add_argument("--styles-dir", metavar="DIR", help="every image in DIR is a style (sorted by name)")
    p.add_argument("--finetune", metavar="MODEL", help="add the --style images as new styles to this trained "
                   "generator (e.g. the shipped zoo: instyle models --json lists its path), training only their "
                   "instance-norm gamma/beta rows (the rest stays as it is). Defaults then: --minutes "
                   f"{FINETUNE_MINUTES:g} unless --iterations is given, --image-size {FINETUNE_SIZE}, and a gate of "
                   "the new styles at the end")
    p.add_argument("--init", metavar="MODEL", help="start from this trained generator's weights and train all of "
                   "them (its styles matched by name; a style it lacks starts from the mean of its rows)")
    p.add_argument("--init-optimizer", metavar="FILE", help="with --init: Adam's moments to continue with (default: "
                   "MODEL's .adam.safetensors when it exists, which every run writes beside its output; 'none': fresh)")
    p.add_argument("--data", help="folder of content images, searched recursively (style mode)")
    p.add_argument("--out", required=True, help="output generator .safetensors (state, log, samples go beside it)")
    g = p.add_argument_group("generator")
    g.add_argument("--arch", choices=("johnson", "pyramid"), default="johnson")
    g.add_argument("--mode", choices=("style", "texture"), default="style",
                   help="texture: pyramid generator fed noise only, style loss only")
    g.add_argument("--norm", choices=("instance", "batch", "none"), default="instance")
    g.add_argument("--padding", choices=("reflect", "zero"), default="reflect")
    g.add_argument("--width", type=int, default=32, help="johnson: first-layer channels (default 32)")
    g.add_argument("--blocks", type=int, default=5, help="johnson: residual blocks (default 5)")
    g.add_argument("--upsampling", choices=("nearest", "transposed"), default="nearest", help="johnson")
    g.add_argument("--ratios", default="32,16,8,4,2,1", help="pyramid: scales (default %(default)s)")
    g.add_argument("--channels", type=int, default=8, help="pyramid: channels per scale (default 8)")
    g.add_argument("--noise-channels", type=int, help="pyramid: noise channels (default: 3 texture, 0 style)")
    t = p.add_argument_group("training")
    t.add_argument("--iterations", type=int, help="steps (default 40000; with --finetune: as many as --minutes "
                   "allows)")
    t.add_argument("--minutes", type=float, help="stop after this many minutes of training and save (resumable "
                   f"with --resume); default none, {FINETUNE_MINUTES:g} with --finetune and no --iterations")
    t.add_argument("--batch-size", type=int, default=4, help="per GPU (default 4)")
    t.add_argument("--lr", type=float, help=f"Adam learning rate (default 1e-3; texture mode 1e-2; --finetune "
                   f"{FINETUNE_LR:g})")
    t.add_argument("--warmup", type=int, help="steps of linear learning-rate warm-up (default 200 with --init, else 0)")
    t.add_argument("--image-size", type=int, help=f"training crop size (default 256; {FINETUNE_SIZE} with --finetune)")
    t.add_argument("--max-images", type=int, help="use a seeded random subset of N content images")
    t.add_argument("--workers", type=int, help="DataLoader workers (default: 4, at most the CPUs this process may "
                   "use; more only slows a small machine and makes torch warn)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--amp", choices=("auto", "bf16", "fp16", "off"), default="auto",
                   help="autocast precision (auto: bf16 on CUDA, off on CPU); losses stay fp32")
    t.add_argument("--channels-last", choices=("auto", "on", "off"), default="auto", help="auto: on CUDA")
    t.add_argument("--compile", action="store_true",
                   help="the compiled training step: generator + VGG loss + backward and Adam under torch.compile, "
                        "no host sync per step; bf16 or fp32 (--amp fp16 needs the eager step)")
    t.add_argument("--fused", choices=("auto", "on", "off"), default="off",
                   help="fused Triton instance norm (auto: when CUDA and the kernel are available). Default off: "
                        "on an H100 it trained slower than bf16 + channels_last alone (bench/results/)")
    t.add_argument("--device", default="auto", help="auto | cpu | cuda (torchrun picks the GPU per rank)")
    t.add_argument("--checkpoint-every", type=int, default=1000, help="steps between resumable checkpoints")
    t.add_argument("--sample-every", type=int, default=1000, help="steps between sample grids (0: never)")
    t.add_argument("--log-every", type=int, default=10, help="steps between CSV log rows")
    t.add_argument("--resume", action="store_true", help="continue from OUT's .state.pt")
    t.add_argument("--overwrite", action="store_true", help="start over even if OUT's .state.pt exists")
    t.add_argument("--save-dtype", choices=("fp32", "fp16"), default="fp32", help="of the output generator")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.add_argument("--gate", choices=("auto", "on", "off"), default="auto",
                   help="score the trained styles at the end with the zoo's gate metric on photos of --data "
                        "(auto: with --finetune)")
    add_loss_arguments(p)


def model_config(args) -> dict:
    if args.arch == "johnson":
        return dict(width=args.width, blocks=args.blocks, norm=args.norm, padding=args.padding,
                    upsampling=args.upsampling)
    ratios = [int(r) for r in args.ratios.split(",") if r.strip()]
    config = dict(ratios=ratios, channels=args.channels, norm=args.norm, padding=args.padding)
    if args.noise_channels is not None:
        config["noise_channels"] = args.noise_channels
    return config


def split_multiplier(text: str) -> tuple[str, float]:
    """'IMG:W' -> (IMG, W); 'IMG' (or a path whose last ':' part is no number) -> (IMG, 1.0)."""
    path, sep, tail = text.rpartition(":")
    if not sep or not path:
        return text, 1.0
    try:
        w = float(tail)
    except ValueError:
        return text, 1.0
    if not w > 0 or w == float("inf"):
        raise UsageError(f"--style {text}: the weight multiplier must be a positive number, got {tail!r}")
    return path, w


def style_paths(args) -> list[str]:
    """--style files (IMG[:W]) then --styles-dir images; checked to exist with distinct names. Sets
    args.style_multipliers (one per style; None when all are 1)."""
    from pathlib import Path

    from instyle.io import IMAGE_EXTENSIONS

    split = [split_multiplier(s) for s in args.style]
    paths = [p for p, _ in split]
    mult = [w for _, w in split]
    if args.styles_dir:
        folder = Path(args.styles_dir)
        if not folder.is_dir():
            raise UsageError(f"--styles-dir {folder}: no such folder")
        found = sorted(str(p) for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
        if not found:
            raise UsageError(f"--styles-dir {folder}: no images")
        paths += found
        mult += [1.0] * len(found)
    args.style_multipliers = mult if any(w != 1.0 for w in mult) else None
    if not paths:
        raise UsageError("give at least one --style IMG (or --styles-dir DIR)")
    for p in paths:
        if not Path(p).is_file():
            raise UsageError(f"--style {p}: no such file")
    names = [Path(p).stem for p in paths]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise UsageError(f"style names must differ (file names without extension): {', '.join(dup)} repeats")
    if args.finetune and not Path(args.finetune).is_file():
        raise UsageError(f"--finetune {args.finetune}: no such model file")
    if args.init and not Path(args.init).is_file():
        raise UsageError(f"--init {args.init}: no such model file")
    if args.init_optimizer and not args.init:
        raise UsageError("--init-optimizer goes with --init MODEL")
    if args.init_optimizer not in (None, "none") and not Path(args.init_optimizer).is_file():
        raise UsageError(f"--init-optimizer {args.init_optimizer}: no such file")
    if args.warmup is not None and args.warmup < 0:
        raise UsageError("--warmup must be >= 0")
    if args.init and args.finetune:
        raise UsageError("--init and --finetune exclude each other (--init trains every weight, --finetune only "
                         "the new styles' rows)")
    if args.finetune and args.mode == "texture":
        raise UsageError("--finetune adds styles to a style-mode generator, not a texture model")
    if len(paths) > 1 and args.norm != "instance":
        raise UsageError("several styles in one network need --norm instance (conditional instance norm)")
    if len(paths) > 1 and args.mode == "texture":
        raise UsageError("texture mode trains one texture per network: give one --style")
    if args.compile and args.amp == "fp16":
        raise UsageError("--compile trains in bf16 or fp32: --amp fp16 needs GradScaler's per-step check (eager)")
    return paths


def run(args) -> int:
    from pathlib import Path

    if args.mode == "style" and not args.data:
        raise UsageError("--data DIR is required in style mode")
    if args.mode == "texture" and args.arch != "pyramid":
        raise UsageError("--mode texture needs --arch pyramid")
    if args.image_size is None:
        args.image_size = FINETUNE_SIZE if args.finetune else 256
    budget_default = args.finetune and args.iterations is None and args.minutes is None
    minutes = FINETUNE_MINUTES if budget_default else args.minutes
    if args.iterations is None:
        args.iterations = 10**9 if minutes is not None else 40000
    if minutes is not None and not minutes > 0:
        raise UsageError("--minutes must be > 0")
    for name in ("iterations", "batch_size", "image_size", "checkpoint_every", "log_every"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 1")
    args.style = style_paths(args)
    out = Path(args.out)
    if out.suffix != ".safetensors":
        raise UsageError(f"--out {out}: use a .safetensors file name")
    try:
        config = model_config(args)
    except ValueError:
        raise UsageError(f"--ratios {args.ratios!r}: expected comma-separated integers") from None

    import os

    import torch

    from instyle.specs import resolve_device

    from .common import loss_from_args
    from .trainer import TrainConfig, train

    device = resolve_device(args.device)
    if device.type == "cuda" and device.index is None:  # torchrun: one GPU per local rank
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    texture = args.mode == "texture"
    loss, spec = loss_from_args(args, device, texture=texture)
    cfg = TrainConfig(
        style=args.style[0] if len(args.style) == 1 else args.style, out=str(out), data=args.data, arch=args.arch,
        model_config=config, mode=args.mode,
        image_size=args.image_size, batch_size=args.batch_size, iterations=args.iterations,
        lr=args.lr if args.lr is not None else (FINETUNE_LR if args.finetune else 1e-2 if texture else 1e-3),
        seed=args.seed, amp=args.amp, channels_last={"auto": None, "on": True, "off": False}[args.channels_last],
        compile=args.compile, fused=args.fused, workers=default_workers(args.workers), max_images=args.max_images,
        checkpoint_every=args.checkpoint_every, sample_every=args.sample_every, log_every=args.log_every,
        resume=args.resume, overwrite=args.overwrite, device=str(device), save_dtype=args.save_dtype,
        finetune=args.finetune, init=args.init, warmup=args.warmup,
        init_optimizer=None if args.init_optimizer == "none" else (args.init_optimizer or "auto"),
        progress=not args.no_progress, time_budget=None if minutes is None else 60 * minutes,
        vgg_info={"file": Path(loss.vgg.path).name, "arch": loss.vgg.arch, "convention": loss.vgg.convention},
    )
    trainer = train(cfg, loss)
    if trainer.dist.is_main:
        final = ", ".join(f"{k} {v:.4g}" for k, v in trainer.final_losses.items())
        source = f"{len(trainer.files)} images" if trainer.files else "noise"
        print(f"{out}: {trainer.step} steps on {source}; final losses: {final}")
        if args.gate == "on" or (args.gate == "auto" and args.finetune and not texture):
            report_gate(out, args, device)
    return 0


def report_gate(model, args, device) -> bool:
    """The zoo's gate (train/style_metric.py) for the styles this run trained, on GATE_PHOTOS photos of --data at
    GATE_SIDE px; one line per style, saying what to do when it falls short. True when all passed."""
    from pathlib import Path

    from instyle.train import style_metric as M
    from instyle.train import zoo
    from instyle.train.data import list_images
    from instyle.train.vgg import resolve_path

    photos = list_images(args.data, GATE_PHOTOS, args.seed)
    styles = {Path(p).stem: Path(p) for p in args.style}
    verdict = zoo.gate(model, Path(args.data), photos, side=GATE_SIDE, device=str(device), only=list(styles),
                       style_images=styles, vgg_path=resolve_path(args.vgg), style_size=args.style_size)
    for name, row in verdict["styles"].items():
        figures = (f"style ratio {row['gram_ratio_median']:.3f} (gate <= {M.GATE_RATIO}), content "
                   f"{row['content_median']:.2f} (<= {M.GATE_CONTENT}), lattice {row['lattice_median']:.1f}")
        if row["passed"]:
            print(f"gate: {name}: passed: {figures} on {len(photos)} photos of --data at {GATE_SIDE} px")
        else:
            print(f"gate: {name}: falls short: {figures} on {len(photos)} photos of --data at {GATE_SIDE} px; train "
                  f"longer (the same command with --resume --minutes N) or weigh the style more (--style IMG:2)")
    return all(r["passed"] for r in verdict["styles"].values())
