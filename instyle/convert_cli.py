"""`instyle convert IN.pth OUT.safetensors`: import a pytorch/examples checkpoint once."""
from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("src", metavar="IN.pth", help="pytorch/examples fast_neural_style checkpoint")
    p.add_argument("dst", metavar="OUT.safetensors")
    p.add_argument("--style", help="style name stored in the metadata (default: the file name)")
    p.add_argument("--fp16", action="store_true", help="store weights in fp16 (half the size)")


def run(args) -> int:
    from pathlib import Path

    from instyle import checkpoint
    from instyle.errors import UsageError

    if Path(args.dst).suffix != ".safetensors":
        raise UsageError(f"{args.dst}: output must end in .safetensors")
    import torch

    model, meta = checkpoint.load(args.src)
    checkpoint.save(model, args.dst, style=args.style or meta.get("style", ""),
                    training={"imported_from": Path(args.src).name},
                    dtype=torch.float16 if args.fp16 else None)
    print(f"wrote {args.dst}")
    return 0
