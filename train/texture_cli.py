"""`instyle texture --model M --size WxH -o OUT.png`: sample a texture of any size from a texture model."""
from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="texture-mode generator (.safetensors from instyle train "
                   "--mode texture)")
    p.add_argument("--size", required=True, help="WxH of the texture, e.g. 1024x512 (or one number: square)")
    p.add_argument("-o", "--output", required=True, help="output image (format from the extension)")
    p.add_argument("--seed", type=int, default=0, help="noise seed (default 0)")
    p.add_argument("--count", type=int, default=1, help="samples; N > 1 writes OUT-0, OUT-1, ...")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda[:N]")


def sample(model, width: int, height: int, *, seed: int = 0, count: int = 1, device=None):
    """`count` textures (count,3,height,width, 0..255): noise at the generator's stride multiple, then
    a crop to the size asked for."""
    import torch

    m = model.stride_multiple
    h = max(model.min_size, -(-height // m) * m)
    w = max(model.min_size, -(-width // m) * m)
    g = torch.Generator(device=device or "cpu").manual_seed(seed)
    with torch.no_grad():
        z = model.sample_noise(count, h, w, generator=g, device=device)
        y = model(z).clamp(0, 255)
    top, left = (h - height) // 2, (w - width) // 2
    return y[..., top:top + height, left:left + width]


def run(args) -> int:
    from pathlib import Path

    from instyle.checkpoint import load
    from instyle.errors import UsageError
    from instyle.specs import parse_size, resolve_device

    from .common import save_image

    try:
        width, height = parse_size(args.size)
    except ValueError as e:
        raise UsageError(str(e)) from None
    if args.count < 1:
        raise UsageError("--count must be >= 1")
    device = resolve_device(args.device)
    model, _ = load(args.model, device=device)
    if getattr(model, "mode", None) != "texture":
        raise ValueError(f"{args.model}: not a texture model (train one with --arch pyramid --mode texture)")
    images = sample(model, width, height, seed=args.seed, count=args.count, device=device)
    out = Path(args.output)
    paths = [out] if args.count == 1 else [out.with_name(f"{out.stem}-{i}{out.suffix}") for i in range(args.count)]
    for path, image in zip(paths, images):
        save_image(path, image)
        print(f"{path}: {width}x{height} texture")
    return 0
