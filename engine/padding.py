"""Any H, W >= 1: pad to what the generator's strides need, then crop back.

Reflection is the padding that leaves no border artifacts, but it cannot reach further than the image
is wide (pad < size); tiny images fall back to replicate padding for the part reflection cannot cover.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def padded_size(size: int, multiple: int, minimum: int) -> int:
    return max(-(-size // multiple) * multiple, -(-minimum // multiple) * multiple)


def pad_to_multiple(x: torch.Tensor, multiple: int, minimum: int = 1) -> tuple[torch.Tensor, tuple[int, int]]:
    """Pad the bottom/right of an N,C,H,W tensor so H and W are multiples of `multiple` and >= `minimum`.

    Returns the padded tensor and the original (H, W) to crop back to.
    """
    h, w = x.shape[-2:]
    ph, pw = padded_size(h, multiple, minimum) - h, padded_size(w, multiple, minimum) - w
    while ph or pw:
        # reflect as far as the current size allows, replicate only when the image is a single pixel
        sh, sw = min(ph, x.shape[-2] - 1), min(pw, x.shape[-1] - 1)
        if sh or sw:
            x = F.pad(x, (0, sw, 0, sh), mode="reflect")
        else:
            sh, sw = ph, pw
            x = F.pad(x, (0, sw, 0, sh), mode="replicate")
        ph, pw = ph - sh, pw - sw
    return x, (h, w)


def crop(y: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return y[..., : size[0], : size[1]]
