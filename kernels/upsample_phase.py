"""Nearest x2 upsampling + reflect pad 1 + 3x3 conv as four 2x2 convs on the low-resolution input.

Why. The Johnson net's deconv1/deconv2 upsample, reflect-pad and convolve; done directly, every output
pixel runs all 9 taps over the 4x larger grid. Output pixel (2i + a, 2j + b) (its phase (a, b)) reads
upsampled rows 2i + a - 1 .. 2i + a + 1, i.e. stored rows {i - 1, i, i} for a = 0 and {i, i, i + 1} for
a = 1: two distinct rows, the repeated one with its two kernel rows' weights summed (the same per column).
So each phase is a 2x2 conv on the stored input with summed weights: 4 phases x 4 taps = 16 tap-MACs per
stored pixel instead of 36, 2.25x fewer FLOPs, and the 4x upsampled tensor is never addressed.

Borders. Reflect padding of the upsampled grid maps row -1 to row 1, which holds stored row 0, the same
row as 0; row 2H maps to 2H - 2, stored row H - 1: exactly replicate padding (clamping) of the stored
input, for every H >= 1 (for H = 1 all rows are stored row 0). tests/test_upsample_phase.py checks it in
float64 against F.interpolate + F.pad(reflect) + F.conv2d, 1- and 2-pixel-wide inputs included.

This file holds the weight transform and the plain-PyTorch form (the reference a kernel is checked
against). The fused backend runs it with the option upsample="phase" (engine/backends/fused_gemm.py): the
conv-IN GEMM's conv_in_phases (kernels/conv_in_gemm.py) launches one 2x2 conv per phase with these weights;
"direct" stays the default until a GPU run times both.
"""
from __future__ import annotations

from typing import Optional

import torch

# For phase a, stored row offset d (0: the upper of the two rows, 1: the lower), the 3x3 kernel rows whose
# weights sum into the 2x2 kernel's row d. Row offsets relative to i: phase 0 reads (i - 1, i), phase 1
# (i, i + 1).
PHASE_TAPS = (((0,), (1, 2)), ((0, 1), (2,)))
PHASE_OFFSET = (-1, 0)  # stored row of the 2x2 kernel's row 0, relative to i, per phase


def phase_weights(weight: torch.Tensor) -> torch.Tensor:
    """3x3 conv weight [Cout, Cin, 3, 3] -> [2, 2, Cout, Cin, 2, 2]: the 2x2 kernel of phase (a, b)."""
    cout, cin, kh, kw = weight.shape
    if (kh, kw) != (3, 3):
        raise ValueError(f"phase decomposition needs a 3x3 kernel, not {kh}x{kw}")
    out = weight.new_zeros(2, 2, cout, cin, 2, 2)
    for a in range(2):
        for b in range(2):
            for dy, rows in enumerate(PHASE_TAPS[a]):
                for dx, cols in enumerate(PHASE_TAPS[b]):
                    out[a, b, :, :, dy, dx] = weight[:, :, list(rows)][:, :, :, list(cols)].sum((2, 3))
    return out


def upconv_phase_ref(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """conv3x3(reflect_pad1(nearest_up2(x))) + bias computed per phase: 2x2 convs of the replicate-padded
    stored input, interleaved. x [N, Cin, H, W] -> [N, Cout, 2H, 2W], in x's dtype."""
    import torch.nn.functional as F

    N, _, H, W = x.shape
    w = phase_weights(weight.to(x.dtype))
    xp = F.pad(x, (1, 1, 1, 1), mode="replicate")  # stored rows -1 .. H, columns -1 .. W
    y = x.new_empty(N, weight.shape[0], 2 * H, 2 * W)
    for a in range(2):
        for b in range(2):
            r0, c0 = 1 + PHASE_OFFSET[a], 1 + PHASE_OFFSET[b]
            y[:, :, a::2, b::2] = F.conv2d(xp[:, :, r0:r0 + H + 1, c0:c0 + W + 1], w[a, b])
    if bias is not None:
        y += bias.to(x.dtype)[None, :, None, None]
    return y
