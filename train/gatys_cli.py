"""`instyle gatys CONTENT STYLE -o OUT`: optimise one image with the perceptual loss (Gatys et al.)."""
from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    from .common import add_loss_arguments

    p.add_argument("content", help="content image")
    p.add_argument("style", help="style image")
    p.add_argument("-o", "--output", required=True, help="output image (format from the extension)")
    p.add_argument("--steps", type=int, default=300, help="loss evaluations (default %(default)s)")
    p.add_argument("--optimizer", choices=("lbfgs", "adam"), default="lbfgs")
    p.add_argument("--lr", type=float, help="learning rate (default: lbfgs 1, adam 4 pixel units)")
    p.add_argument("--size", type=int, default=512, help="longer side of the result (default %(default)s)")
    p.add_argument("--init", choices=("content", "noise"), default="content")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda[:N]")
    add_loss_arguments(p)


def run(args) -> int:
    import sys

    import torch
    from tqdm import tqdm

    from instyle.errors import UsageError
    from instyle.specs import resolve_device

    from .common import load_image, loss_from_args, save_image
    from .gatys import stylize

    if args.steps < 1 or args.size < 16:
        raise UsageError("--steps must be >= 1 and --size >= 16")
    torch.manual_seed(args.seed)
    device = resolve_device(args.device)
    loss, _ = loss_from_args(args, device)
    content = load_image(args.content, args.size).to(device)
    bar = tqdm(total=args.steps, desc="gatys", disable=not sys.stderr.isatty(), dynamic_ncols=True)

    def progress(i, terms):
        bar.update(1)
        bar.set_postfix(content=f"{terms['content']:.3g}", style=f"{terms['style']:.3g}", tv=f"{terms['tv']:.3g}")

    image, history = stylize(loss, content, steps=args.steps, optimizer=args.optimizer, lr=args.lr,
                             init=args.init, seed=args.seed, callback=progress)
    bar.close()
    save_image(args.output, image)
    first, last = history[0], history[-1]
    print(f"{args.output}: loss {first['total']:.4g} -> {last['total']:.4g} "
          f"(content {last['content']:.3g}, style {last['style']:.3g}, tv {last['tv']:.3g}) in {len(history)} steps")
    return 0
