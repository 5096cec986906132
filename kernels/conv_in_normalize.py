"""The statistics side of kernels/conv_in_gemm.py: `finalize` (Chan-merge the epilogue's per-tile partials into
per-(n, c) norm params; the kernel is kernels/stats_finalize.py, the torch form finalize_ref) and `in_apply`,
which applies a finalized instance norm once, y = act((x - mean) * scale + beta) [+ skip], in one NHWC pass.

Why a separate pass exists beside conv_in's prologue. The prologue normalizes every input element each
time the implicit GEMM loads it: KH*KW times, x4 more behind a nearest x2 upsampling. That is ~6
CUDA-core ops per loaded element against BLOCK_N tensor-core FMAs; on an H100 (128 FP32 lanes vs
~2048 fp16 tensor FMAs per SM and clock) the prologue costs about 96 / BLOCK_N times the MMA. For the
3x3 convs at 64-128 output channels it hides behind the MMA; for deconv1/deconv2 (reuse 36, Cout 64/32)
and the 9x9 deconv3 (reuse 81, Cout 3) it would dominate the layer (at 3840x2160 roughly 0.5, 0.9 and
4 ms of CUDA-core work), while normalizing their stored inputs once costs one read and one write of
133, 265 and 530 MB (~0.05-0.3 ms). engine/backends/fused_gemm.py picks per layer (a modeled choice, to be
confirmed with bench/fused_layers on a GPU).

Layout: x, skip and y are logical N x C x H x W tensors with any strides (channels_last is the fast
one: [BLOCK_HW, BLOCK_C] tiles whose rows are contiguous channel runs). norm is fp32 [N, 3, C] =
(mean, gamma * rstd, beta) from `finalize` below.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch
import triton
import triton.language as tl

from instyle.interpreter import interpreting

# Tuning: one config (elementwise; no sweep needed). The interpreter prefers big tiles (cost per op).
_INTERPRET = interpreting()
TUNING = dict(block_hw=256, block_c=64, num_warps=1) if _INTERPRET else dict(block_hw=64, block_c=64, num_warps=4)


# ----------------------------------------------------------------------------------------------------
# Statistics: conv_in's epilogue writes per-stat-tile partials; finalize turns them into norm params.


class Stats(NamedTuple):
    """Per-stat-tile IN partials of a conv output: fp32 [N, T, C] means and M2s. The output's pixels are
    `groups` equal groups of hw pixels (one group: the image in pixel order; kernels/conv_tma.py: one group
    per output row), each split into cdiv(hw, stat_m) tiles in order, the last one ragged: T = groups x that."""
    pmean: torch.Tensor
    pm2: torch.Tensor
    hw: int
    stat_m: int
    groups: int = 1


def finalize(stats: Stats, weight: torch.Tensor, bias: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """fp32 [N, 3, C] (mean, weight * rstd, bias) for the next prologue: two Triton launches
    (kernels/stats_finalize.py) on CUDA or under the interpreter, else finalize_ref."""
    if not (stats.pmean.is_cuda or _INTERPRET):
        return finalize_ref(stats, weight, bias, eps)
    from .stats_finalize import finalize as kernel

    return kernel(stats.pmean, stats.pm2, stats.hw, stats.stat_m, weight, bias, eps, groups=stats.groups)


def finalize_groups(groups: list[Stats], weight: torch.Tensor, bias: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """finalize for one output written by several launches of equal pixel counts (the four phases of
    kernels/conv_in_gemm.conv_in_phases): their partials concatenated, one kernel call."""
    if not (groups[0].pmean.is_cuda or _INTERPRET):
        return finalize_groups_ref(groups, weight, bias, eps)
    from .stats_finalize import finalize as kernel

    g = groups[0]
    assert all((s.hw, s.stat_m, s.pmean.shape, s.groups) == (g.hw, g.stat_m, g.pmean.shape, 1) for s in groups)
    return kernel(torch.cat([s.pmean for s in groups], 1), torch.cat([s.pm2 for s in groups], 1), g.hw, g.stat_m,
                  weight, bias, eps, groups=len(groups))


def finalize_ref(stats: Stats, weight: torch.Tensor, bias: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Chan-merge the partials in torch -> fp32 [N, 3, C]: (mean, weight * rstd, bias); the kernel's reference.

    All tiles but the last hold stat_m pixels, so their means merge with one torch.var_mean (Welford)
    over T - 1 tiles: M2_full = sum(M2_t) + stat_m * (T - 1) * var(m_t); the ragged last tile joins with
    Chan's two-group formula. Two reads of the [N, T, C] partials and a few [N, C] ops, all capturable
    in a CUDA graph.
    """
    if stats.groups > 1:
        return finalize_groups_ref(split_groups(stats), weight, bias, eps)
    mean, m2 = _merge(stats)
    return _params(mean, m2, stats.hw, weight, bias, eps)


def split_groups(stats: Stats) -> list[Stats]:
    """The one-group Stats of each of stats' groups (views of its partials)."""
    t = stats.pmean.shape[1] // stats.groups
    return [Stats(stats.pmean[:, g * t:(g + 1) * t], stats.pm2[:, g * t:(g + 1) * t], stats.hw, stats.stat_m)
            for g in range(stats.groups)]


def _merge(stats: Stats) -> tuple[torch.Tensor, torch.Tensor]:
    """[N, C] mean and M2 of all stats.hw pixels from the per-tile partials (see finalize)."""
    pmean, pm2, hw, stat_m = stats.pmean, stats.pm2, stats.hw, stats.stat_m
    assert stats.groups == 1
    T = pmean.shape[1]
    m2 = pm2.sum(1)
    if T == 1:
        return pmean[:, 0], m2
    n_a, n_b = stat_m * (T - 1), hw - stat_m * (T - 1)
    var_a, mean_a = torch.var_mean(pmean[:, :-1], dim=1, correction=0)
    delta = pmean[:, -1] - mean_a
    return mean_a + delta * (n_b / hw), m2 + var_a * n_a + delta.square() * (n_a * n_b / hw)


def _params(mean, m2, count, weight, bias, eps):
    scale = torch.rsqrt(m2 / count + eps) * weight.float()
    return torch.stack([mean, scale, bias.float().expand_as(mean)], 1)


def finalize_groups_ref(groups: list[Stats], weight: torch.Tensor, bias: torch.Tensor,
                        eps: float = 1e-5) -> torch.Tensor:
    """finalize_groups in torch: each group merged as in finalize_ref, then the groups' means and M2s with the
    equal-count form of Chan's formula, M2 = sum(M2_g) + hw * sum((mean_g - mean)^2)."""
    hw = groups[0].hw
    assert all(g.hw == hw for g in groups)
    means, m2s = zip(*(_merge(g) for g in groups))
    gm = torch.stack(means)
    mean = gm.mean(0)
    m2 = torch.stack(m2s).sum(0) + hw * (gm - mean).square().sum(0)
    return _params(mean, m2, hw * len(groups), weight, bias, eps)


# ----------------------------------------------------------------------------------------------------
# The apply pass.


@triton.jit
def _in_apply_kernel(
    x_ptr,                          # raw input, logical [N, C, H, W], strides sx*
    norm_ptr,                       # fp32 [N, 3, C]: mean, gamma * rstd, beta
    skip_ptr,                       # skip added after the activation, strides ss* (HAS_SKIP)
    y_ptr,                          # output, logical [N, C, H + 2 PAD, W + 2 PAD], strides sy*
    C, H, W, HWY, WY,               # HWY, WY: the output's pixels and width
    sxn, sxc, sxh, sxw,             # x strides
    ssn, ssc, ssh, ssw,             # skip strides
    syn, syc, syh, syw,             # y strides
    RELU: tl.constexpr, HAS_SKIP: tl.constexpr, PAD: tl.constexpr, BLOCK_HW: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """One program: BLOCK_HW output pixels x BLOCK_C channels of image n. PAD > 0: output pixel (h, w) is
    input pixel (h - PAD, w - PAD) reflected into the image, so the border is written with the rest."""
    n = tl.program_id(2).to(tl.int64)
    p = tl.program_id(0) * BLOCK_HW + tl.arange(0, BLOCK_HW)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_mask = c < C
    mask = (p < HWY)[:, None] & c_mask[None, :]
    yh = p // WY
    yw = p % WY
    if PAD:
        h = _reflect(yh - PAD, H).to(tl.int64)
        w = _reflect(yw - PAD, W)
    else:
        h = yh.to(tl.int64)
        w = yw
    nb = norm_ptr + n * 3 * C + c
    mean = tl.load(nb, mask=c_mask, other=0.0)
    scale = tl.load(nb + C, mask=c_mask, other=0.0)
    beta = tl.load(nb + 2 * C, mask=c_mask, other=0.0)
    # x tile [BLOCK_HW, BLOCK_C]: pixel (h, w), channel c
    x = tl.load(x_ptr + n * sxn + (h * sxh + w * sxw)[:, None] + c[None, :] * sxc, mask=mask, other=0.0)
    y = (x.to(tl.float32) - mean[None, :]) * scale[None, :] + beta[None, :]
    if RELU:
        y = tl.maximum(y, 0.0)
    if HAS_SKIP:
        y += tl.load(skip_ptr + n * ssn + (h * ssh + w * ssw)[:, None] + c[None, :] * ssc, mask=mask,
                     other=0.0).to(tl.float32)
    tl.store(y_ptr + n * syn + (yh.to(tl.int64) * syh + yw * syw)[:, None] + c[None, :] * syc,
             y.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _reflect(p, size):
    """Reflection padding as index math: -1 -> 1, size -> size - 2 (pad < size)."""
    p = tl.where(p < 0, -p, p)
    return tl.where(p >= size, 2 * size - 2 - p, p)


def in_apply(x: torch.Tensor, norm: torch.Tensor, *, relu: bool = False, skip: Optional[torch.Tensor] = None,
             out: Optional[torch.Tensor] = None, pad: int = 0) -> torch.Tensor:
    """act((x - mean) * scale + beta) [+ skip] with norm = fp32 [N, 3, C]; y is channels_last in x's dtype.
    pad > 0: y is reflect-padded by pad pixels on each side (N x C x H + 2 pad x W + 2 pad), the input that
    kernels/conv_tma.py reads through tensor descriptors."""
    if not x.is_cuda and not _INTERPRET:
        raise ValueError(f"in_apply: x is on {x.device}; the Triton kernels need a CUDA tensor "
                         "(or TRITON_INTERPRET=1 for the CPU interpreter)")
    N, C, H, W = x.shape
    assert norm.shape == (N, 3, C) and norm.dtype == torch.float32, (tuple(norm.shape), norm.dtype)
    assert skip is None or skip.shape == x.shape
    assert 0 <= pad < min(H, W), (pad, H, W)
    Hy, Wy = H + 2 * pad, W + 2 * pad
    if out is None:
        out = torch.empty((N, C, Hy, Wy), device=x.device, dtype=x.dtype, memory_format=torch.channels_last)
    assert out.shape == (N, C, Hy, Wy), (tuple(out.shape), (N, C, Hy, Wy))
    t = TUNING
    bc = min(t["block_c"], triton.next_power_of_2(C))
    s = skip if skip is not None else x
    # grid: (pixel tiles, channel tiles, images)
    _in_apply_kernel[(triton.cdiv(Hy * Wy, t["block_hw"]), triton.cdiv(C, bc), N)](
        x, norm.contiguous(), s, out, C, H, W, Hy * Wy, Wy, *x.stride(), *s.stride(), *out.stride(),
        RELU=relu, HAS_SKIP=skip is not None, PAD=pad, BLOCK_HW=t["block_hw"], BLOCK_C=bc, num_warps=t["num_warps"])
    return out


def in_apply_ref(x: torch.Tensor, norm: torch.Tensor, *, relu: bool = False,
                 skip: Optional[torch.Tensor] = None, pad: int = 0) -> torch.Tensor:
    """Plain PyTorch, fp32 math, x's dtype out (reflect-padded by pad)."""
    import torch.nn.functional as F

    mean, scale, beta = (v[:, :, None, None] for v in norm.float().unbind(1))
    y = (x.float() - mean) * scale + beta
    if relu:
        y = torch.relu(y)
    if skip is not None:
        y = y + skip.float()
    if pad:
        y = F.pad(y, (pad,) * 4, mode="reflect")
    return y.to(x.dtype)


def norm_params_ref(y: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """[N, 3, C] (mean, weight * rstd, bias) of y's biased per-(n, c) statistics, two-pass in fp32."""
    yf = y.float()
    mean = yf.mean(dim=(2, 3))
    var = (yf - mean[:, :, None, None]).square().mean(dim=(2, 3))
    scale = torch.rsqrt(var + eps) * weight.float()
    return torch.stack([mean, scale, bias.float().expand_as(mean)], 1)
