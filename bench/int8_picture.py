"""The int8 picture of docs/int8.md: one style on one photo, openvino bf16 | int8 | 4x |int8 - bf16|, side by side.

    python -m instyle.bench.int8_picture --model candy --image chicago.jpg --side 768 -o docs/int8/x.jpg

Both runs go through `instyle.engine.load` (the int8 model must be cached: `instyle quantize --model M` first)."""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from PIL import Image

DIFF_GAIN = 4  # |Δ| of a few levels is invisible at 1x


def panels(bf16: torch.Tensor, int8: torch.Tensor) -> Image.Image:
    """Three panels in a row from two N=1 outputs (float 0..255)."""
    a, b = (t[0].clamp(0, 255).round().byte().permute(1, 2, 0).numpy() for t in (bf16, int8))
    diff = np.clip(np.abs(a.astype(np.int16) - b.astype(np.int16)) * DIFF_GAIN, 0, 255).astype(np.uint8)
    return Image.fromarray(np.concatenate([a, b, diff], axis=1))


def main(argv: list[str] | None = None) -> int:
    from instyle.engine import load
    from instyle.io import read_image, resize_picture, to_tensor

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="candy")
    p.add_argument("--image", type=Path, required=True)
    p.add_argument("--side", type=int, default=768, help="longest side of the photo as stylized")
    p.add_argument("-o", "--output", type=Path, required=True)
    args = p.parse_args(argv)
    picture = read_image(args.image)
    w, h = picture.size
    scale = args.side / max(w, h)
    x = to_tensor([resize_picture(picture, (round(w * scale), round(h * scale)))])
    with torch.inference_mode():
        outs = [load(args.model, backend="openvino", precision=p)(x) for p in ("bf16", "int8")]
    args.output.parent.mkdir(parents=True, exist_ok=True)
    panels(*outs).save(args.output, quality=90)
    print(args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
