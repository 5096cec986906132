"""Pictures of a trained zoo (the campaign's `zoo.pictures` step): one JPEG per style of a photo, and a 1:1 crop of a
3840x2160 stylization of the first style."""
from __future__ import annotations

from pathlib import Path

import torch


@torch.no_grad()
def pictures(model_path: Path, photo: Path, out: Path, *, side: int, crop_4k: bool, device: str) -> list[Path]:
    """One JPEG per style of `photo` (longer side `side`), and a 1:1 crop of a 3840x2160 stylization."""
    from instyle import checkpoint
    from instyle.engine import Stylizer
    from instyle.io import Picture, read_image, resize_picture, rgb_from_tensor, to_tensor, write_image
    from instyle.models.styles import bake, mix_weights

    model, meta = checkpoint.load(model_path)
    names = checkpoint.style_names(meta)
    pic = read_image(photo)
    w, h = pic.size
    small = resize_picture(pic, (round(w * side / max(w, h)), round(h * side / max(w, h))))
    written = []
    out.mkdir(parents=True, exist_ok=True)
    precision = "fp16" if torch.device(device).type == "cuda" else "fp32"
    for s, name in enumerate(names):
        net = bake(model, mix_weights(names, s)) if len(names) > 1 else model
        run = Stylizer(net, backend="eager", precision=precision, device=device, tile="off")
        y = run(to_tensor([small]))[0]
        written.append(write_image(out / f"{name}.jpg", Picture(rgb_from_tensor(y)), quality=85))
        if crop_4k and s == 0:
            big = resize_picture(pic, (3840, 2160))
            y4 = run(to_tensor([big]))[0][:, 800:1340, 1440:2400]  # a 960x540 window, 1:1 pixels
            written.append(write_image(out / f"{name}-4k-crop.jpg", Picture(rgb_from_tensor(y4)), quality=88))
    return written
