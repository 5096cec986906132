"""Pictures of a trained zoo (the campaign's `zoo.pictures` step, and the pictures of README.md and
docs/styles.md): the photo and one JPEG per style of it, and a 1:1 crop of a 3840x2160 stylization of the first style.

    python -m instyle.bench.zoo_pictures --model instyle/zoo/styles.safetensors --photo PHOTO --out docs/styles
        [--side 512] [--crop-photo BIG_PHOTO]
"""
from __future__ import annotations

from pathlib import Path

import torch


@torch.no_grad()
def pictures(model_path: Path, photo: Path, out: Path, *, side: int, crop_4k: bool, device: str,
             crop_photo: Path | None = None) -> list[Path]:
    """The photo and one JPEG per style of it (longer side `side`), and a 1:1 crop of a 3840x2160 stylization
    (of `crop_photo`, default `photo`) with the same window of the photo beside it."""
    from instyle import checkpoint
    from instyle.engine import Stylizer
    from instyle.io import Picture, read_image, resize_picture, rgb_from_tensor, to_tensor, write_image
    from instyle.models.styles import bake, mix_weights

    model, meta = checkpoint.load(model_path)
    names = checkpoint.style_names(meta)
    pic = read_image(photo)
    w, h = pic.size
    small = resize_picture(pic, (round(w * side / max(w, h)), round(h * side / max(w, h))))
    out.mkdir(parents=True, exist_ok=True)
    written = [write_image(out / "photo.jpg", small, quality=85)]
    precision = "fp16" if torch.device(device).type == "cuda" else "fp32"
    for s, name in enumerate(names):
        net = bake(model, mix_weights(names, s)) if len(names) > 1 else model
        run = Stylizer(net, backend="eager", precision=precision, device=device, tile="off")
        y = run(to_tensor([small]))[0]
        written.append(write_image(out / f"{name}.jpg", Picture(rgb_from_tensor(y)), quality=85))
        if crop_4k and s == 0:
            big = resize_picture(read_image(crop_photo) if crop_photo else pic, (3840, 2160))
            window = (slice(None), slice(800, 1340), slice(1440, 2400))  # 960x540, 1:1 pixels
            y4 = run(to_tensor([big]))[0][window]
            written.append(write_image(out / f"{name}-4k-crop.jpg", Picture(rgb_from_tensor(y4)), quality=88))
            x4 = to_tensor([big])[0].float()[window]
            written.append(write_image(out / "photo-4k-crop.jpg", Picture(rgb_from_tensor(x4)), quality=88))
    return written


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m instyle.bench.zoo_pictures", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--photo", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--side", type=int, default=512)
    p.add_argument("--crop-photo", type=Path, help="the photo of the 1:1 crop (default --photo)")
    a = p.parse_args(argv)
    for path in pictures(a.model, a.photo, a.out, side=a.side, crop_4k=True, device="cpu", crop_photo=a.crop_photo):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
