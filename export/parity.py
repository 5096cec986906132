"""Parity of an exported model against the PyTorch fp32 reference, on real photos at odd sizes.

The reference is the engine's eager Stylizer in fp32 (same stride padding, crop and clamp as every other
backend), so a pass means the export honours the whole contract, not just the generator's arithmetic.
"""
from __future__ import annotations

import copy
import math
import os
from pathlib import Path

import torch
from torch import nn

from instyle.metrics import psnr_db

CHECK_SIZES = ((333, 517), (720, 1280))
TOLERANCE = {"fp32": {"max_abs": 0.05}, "fp16": {"psnr": 45.0}}  # on the 0..255 scale
_IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"}


def photo_paths(folder: str | os.PathLike | None = None) -> list[Path]:
    """Real photos from the shared data (content/demo, then content/train), sorted; [] when absent."""
    from instyle.paths import data_dir

    roots = [Path(folder)] if folder else [data_dir() / "content" / "demo", data_dir() / "content" / "train"]
    found = []
    for root in roots:
        if root.is_dir():
            found += sorted(p for p in root.iterdir() if p.suffix.lower() in _IMAGE_EXTS)
    return found


def photo_batch(n: int, height: int, width: int, paths: list[Path] | None = None) -> torch.Tensor:
    """N,3,H,W float32 0..255: photos resized to cover H x W and centre-cropped (a smooth synthetic
    gradient stands in when no photos are available)."""
    from PIL import Image, ImageOps

    paths = photo_paths() if paths is None else paths
    if not paths:
        yy, xx = torch.meshgrid(torch.linspace(0, 1, height), torch.linspace(0, 1, width), indexing="ij")
        base = torch.stack([xx, yy, (xx + yy) / 2]) * 255
        return torch.stack([base.roll(i * 7, dims=-1) for i in range(n)])
    images = []
    for i in range(n):
        with Image.open(paths[i % len(paths)]) as im:
            im = ImageOps.fit(ImageOps.exif_transpose(im).convert("RGB"), (width, height), Image.BICUBIC)
            images.append(torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8).view(height, width, 3))
    return torch.stack(images).permute(0, 3, 1, 2).float().contiguous()


def reference(model: nn.Module, x: torch.Tensor, style_weights: torch.Tensor | None = None) -> torch.Tensor:
    """The PyTorch fp32 CPU result of the engine's eager backend; with `style_weights` (N x S, or a style map
    N x S x H x W), the multi-style generator run with each sample's own mix (padded and cropped as the engine
    does)."""
    from instyle.engine import Stylizer
    from instyle.engine.padding import crop, pad_to_multiple

    if style_weights is None:
        return Stylizer(copy.deepcopy(model).float().cpu(), backend="eager", precision="fp32", device="cpu")(x)
    net = copy.deepcopy(model).float().cpu().eval()
    padded, size = pad_to_multiple(x.float(), net.stride_multiple, net.min_size)
    if style_weights.dim() == 4:
        style_weights = pad_to_multiple(style_weights.float(), net.stride_multiple, net.min_size)[0]
    with torch.no_grad():
        return crop(net(padded, style_weights), size).clamp(0, 255)


def mixed_weights(n: int, styles: int, seed: int = 0) -> torch.Tensor:
    """n rows of style weights: a one-hot row, then random convex mixes (each sample its own)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.rand(n, styles, generator=g)
    w[0] = 0
    w[0, (n - 1) % styles] = 1
    return w / w.sum(dim=1, keepdim=True)


def ramp_map(n: int, styles: int, height: int, width: int) -> torch.Tensor:
    """A style map (N x S x H x W) that blends two of mixed_weights' rows from the left edge to the right."""
    rows = mixed_weights(n + 1, styles)
    t = torch.linspace(0, 1, width).view(1, 1, 1, width)
    return (rows[:n, :, None, None] * (1 - t) + rows[1:, :, None, None] * t).expand(n, styles, height, width)


def compare(out: torch.Tensor, ref: torch.Tensor) -> dict[str, float]:
    """max |out - ref| and PSNR (dB, peak 255) of two 0..255 tensors of the same shape."""
    if out.shape != ref.shape:
        raise ValueError(f"shape mismatch: output {tuple(out.shape)} vs reference {tuple(ref.shape)}")
    return {"max_abs": float((out.double() - ref.double()).abs().max()), "psnr": psnr_db(out, ref)}


def passes(stats: dict[str, float], precision: str) -> bool:
    tol = TOLERANCE[precision]
    return stats["max_abs"] <= tol.get("max_abs", math.inf) and stats["psnr"] >= tol.get("psnr", -math.inf)


def check_onnx(path: str | os.PathLike, model: nn.Module, *, precision: str = "fp32",
               shapes: list[tuple[int, int, int]] | None = None) -> list[dict]:
    """Run the ONNX file in ONNX Runtime (CPU) and the PyTorch reference on photos; one row per N,H,W."""
    from .onnx import INPUT_NAME, STYLE_INPUT, STYLE_MAP_INPUT
    from .ort_runner import make_session

    session = make_session(path, "cpu")
    styles = int(getattr(model, "styles", 1))
    spatial = STYLE_MAP_INPUT in {i.name for i in session.get_inputs()}
    rows = []
    for n, h, w in shapes or [(1, *CHECK_SIZES[0]), (1, *CHECK_SIZES[1]), (3, *CHECK_SIZES[0])]:
        x = photo_batch(n, h, w)
        feed, weights = {INPUT_NAME: x.numpy()}, None
        if spatial:
            weights = ramp_map(n, styles, h, w).contiguous()
            feed[STYLE_MAP_INPUT] = weights.numpy()
        elif styles > 1:
            weights = mixed_weights(n, styles)
            feed[STYLE_INPUT] = weights.numpy()
        (out,) = session.run(None, feed)
        stats = compare(torch.from_numpy(out), reference(model, x, weights))
        rows.append({"batch": n, "height": h, "width": w, **stats, "ok": passes(stats, precision)})
    return rows


def format_row(row: dict) -> str:
    return (f"{row['batch']}x3x{row['height']}x{row['width']}: max|Δ| {row['max_abs']:.2e}  "
            f"PSNR {row['psnr']:.1f} dB  {'ok' if row['ok'] else 'FAIL'}")
