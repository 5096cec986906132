"""Style controls applied around the generator: strength, original colours, stroke scale.

All work on float N,3,H,W RGB tensors in 0..255 on the Stylizer's device, after the generator's output has
been cropped and clamped, so every backend gets them for free.

  strength s        out = s * stylized + (1 - s) * input: 0 is the input, 1 the full style
  preserve_color    the stylized image's luma with the input's chroma, in YCbCr (ITU-R BT.601, full
                    range: JPEG's), the space where luma and chroma are separate by construction; what
                    Gatys et al. call luminance-only transfer, done after the fact
  style_scale f     the generator sees the input resized by 1/f and its output is resized back: its
                    receptive field (a fixed number of pixels) then covers f times more of the picture,
                    so strokes come out f times larger at the same output size (f < 1: smaller strokes,
                    at 1/f^2 the pixels to compute)
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from instyle.specs import check_control

# RGB -> YCbCr (BT.601 full range, 0..255, chroma centred on 128)
_TO_YCBCR = torch.tensor([[0.299, 0.587, 0.114],
                          [-0.168736, -0.331264, 0.5],
                          [0.5, -0.418688, -0.081312]])
_TO_RGB = torch.linalg.inv(_TO_YCBCR.double()).float()  # inverted once, not per call
_OFFSET = torch.tensor([0.0, 128.0, 128.0])


def to_ycbcr(rgb: torch.Tensor) -> torch.Tensor:
    m = _TO_YCBCR.to(rgb.device, rgb.dtype)
    return torch.einsum("ij,njhw->nihw", m, rgb) + _OFFSET.to(rgb.device, rgb.dtype).view(1, 3, 1, 1)


def to_rgb(ycbcr: torch.Tensor) -> torch.Tensor:
    m = _TO_RGB.to(ycbcr.device, ycbcr.dtype)
    return torch.einsum("ij,njhw->nihw", m, ycbcr - _OFFSET.to(ycbcr.device, ycbcr.dtype).view(1, 3, 1, 1))


def preserve_color(stylized: torch.Tensor, original: torch.Tensor) -> torch.Tensor:
    """The stylized luma with the original's chroma, clamped to 0..255."""
    y = to_ycbcr(stylized)[:, :1]
    cbcr = to_ycbcr(original.to(stylized.dtype))[:, 1:]
    return to_rgb(torch.cat([y, cbcr], dim=1)).clamp_(0, 255)


def blend(stylized: torch.Tensor, original: torch.Tensor, strength: float | torch.Tensor) -> torch.Tensor:
    """strength: a number, or a per-pixel map (N x 1 x H x W, 0..1); where it is 0 the result is the input, exactly."""
    if isinstance(strength, torch.Tensor):
        s = strength.to(stylized.dtype)
        return stylized * s + original.to(stylized.dtype) * (1 - s)
    if strength >= 1:
        return stylized
    return stylized * strength + original.to(stylized.dtype) * (1 - strength)


def check(strength: float, style_scale: float) -> None:
    check_control("strength", strength)
    check_control("style_scale", style_scale)


def scaled_size(h: int, w: int, style_scale: float) -> tuple[int, int]:
    return max(1, round(h / style_scale)), max(1, round(w / style_scale))


def resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bicubic with antialiasing (for shrinking), clamped to 0..255."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=True).clamp_(0, 255)
