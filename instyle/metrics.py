"""Image-quality figures shared by the benchmarks, the export parity checks and the tests (a leaf module:
torch only)."""
from __future__ import annotations

import math

import torch


def psnr_db(a, b, peak: float = 255.0) -> float:
    """PSNR in dB of `a` against `b`: 10 log10(peak² / MSE), the MSE over every element at once (a batch is
    one figure, not a mean of per-image ones), computed in float64; inf where the two are equal.

    `a` and `b`: tensors (any dtype, the same device) or arrays of one shape; `peak`: the signal's
    range (255 for the 0..255 images of the tensor contract)."""
    a, b = _float64(a), _float64(b)
    if a.shape != b.shape:
        raise ValueError(f"psnr_db: shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
    mse = float((a - b).square().mean())
    return math.inf if mse == 0 else 10 * math.log10(peak * peak / mse)


def _float64(t) -> torch.Tensor:
    return t.detach().to(torch.float64) if isinstance(t, torch.Tensor) else torch.tensor(t, dtype=torch.float64)
