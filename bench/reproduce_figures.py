"""The reproduction's figures (bench/reproduce.py): loss curves and picture grids in the paper's layout.

  curves.png            total, style and content loss per step of every run (log scale)
  norm-<arch>.jpg       rows of photos: content | batch norm | instance norm (the paper's Fig. 5)
  padding-border.jpg    top-left corners at 3x: zero padding above reflect padding (Fig. 3)
  resolutions.jpg       one photo through the instance-norm Johnson net at each scoring size, shown at the
                        same height (Fig. 6)
"""
from __future__ import annotations

import csv
from pathlib import Path

import torch
import torch.nn.functional as F

SHOW = 384  # display side of a picture cell
GAP = 4


def curves(logs: dict[str, Path], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    from instyle.atomic import atomic_path

    fig = Figure(figsize=(12, 3.6), dpi=100)
    axes = fig.subplots(1, 3)
    for name, path in logs.items():
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
        steps = [int(r["step"]) for r in rows]
        for ax, key in zip(axes, ("total", "style", "content")):
            ax.plot(steps, [float(r[key] or "nan") for r in rows], label=name, linewidth=1)
    for ax, key in zip(axes, ("total", "style", "content")):
        ax.set_title(f"{key} loss (weighted)")
        ax.set_xlabel("step")
        ax.set_yscale("log")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png")
    return out


def _grid(rows: list[list[torch.Tensor]]) -> torch.Tensor:
    """Rows of 1,3,h,w cells (equal sizes) -> one 3,H,W image with white gaps."""
    h, w = rows[0][0].shape[-2:]
    cols = max(len(r) for r in rows)
    out = torch.full((3, len(rows) * (h + GAP) - GAP, cols * (w + GAP) - GAP), 255.0)
    for i, row in enumerate(rows):
        for j, cell in enumerate(row):
            out[:, i * (h + GAP):i * (h + GAP) + h, j * (w + GAP):j * (w + GAP) + w] = cell[0].clamp(0, 255)
    return out


def _save(image: torch.Tensor, path: Path) -> Path:
    from PIL import Image

    from instyle.atomic import atomic_path

    array = image.round().clamp(0, 255).byte().permute(1, 2, 0).numpy()
    with atomic_path(path) as tmp:
        Image.fromarray(array).save(tmp, format="JPEG", quality=88)
    return path


@torch.no_grad()
def pictures(models: dict[str, Path], photos: list[Path], out: Path, *, sides: list[int]) -> list[Path]:
    from instyle import checkpoint
    from instyle.train.zoo import photo_batch

    nets = {name: checkpoint.load(path)[0].float().eval() for name, path in models.items()}
    shown = photos[:4]
    inputs = [photo_batch([p], SHOW, "cpu") for p in shown]
    written = []
    for arch in ("johnson", "pyramid"):
        bn, inorm = nets.get(f"{arch}-bn"), nets.get(f"{arch}-in")
        if bn is not None and inorm is not None:
            rows = [[x, bn(x), inorm(x)] for x in inputs]
            written.append(_save(_grid(rows), out / f"norm-{arch}.jpg"))
    zero, reflect = nets.get("johnson-in-zero"), nets.get("johnson-in")
    if zero is not None and reflect is not None:
        corner = SHOW // 4

        def crop(y):
            return F.interpolate(y[..., :corner, :corner], scale_factor=3, mode="nearest")

        rows = [[crop(zero(x)) for x in inputs[:3]], [crop(reflect(x)) for x in inputs[:3]]]
        written.append(_save(_grid(rows), out / "padding-border.jpg"))
    if reflect is not None:
        cells = []
        for side in sides:
            y = reflect(photo_batch([shown[0]], side, "cpu")).clamp(0, 255)
            cells.append(F.interpolate(y, size=(SHOW, SHOW), mode="bilinear", antialias=True, align_corners=False))
        written.append(_save(_grid([cells]), out / "resolutions.jpg"))
    return written
