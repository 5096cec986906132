"""Fused instance norm: y = act(IN(x) * w + b) + residual, in one op (forward; backward in
instance_norm_backward.py).

What it fuses. Unfused PyTorch spends tensor-sized memory passes on every piece: F.instance_norm reads
x twice (statistics, normalize) and writes y (3), a ReLU reads and writes y (2), a residual add reads y
and r and writes the sum (3). Fused, the statistics pass reads x, the normalize pass reads x again
(from L2 for small planes) and r, and writes y once. IN + residual (the Johnson residual block): 6 -> 4
passes; IN + ReLU: 5 -> 3; IN + ReLU + residual: 8 -> 4. For an fp16 1x32x2160x3840 activation
(530 MB per pass) IN + residual saves about 1.06 GB of traffic per call.

Statistics. Per (n, c) plane, in fp32, relative to a shift `s` = the plane's first element: each tile
of BLOCK_HW elements gives its count, mean and M2 of (x - s) exactly (two passes over registers), and
tiles merge with Chan's parallel formula. Never E[x^2] - E[x]^2. The shift makes a constant plane give
mean 0, M2 0, so y == bias exactly, and keeps precision when |mean| >> std. The saved statistics are
(mean of x - s, rstd); the backward reloads s from x.

Two paths, chosen by plane size in the launcher:
  * fused (H*W < split_min_hw): one program per (n, channel block) loops over the plane twice.
  * split (large planes): partial (mean, M2) per spatial chunk in many programs, a combine kernel
    (Chan, two-level), then a normalize pass over the same chunks -- enough programs to fill a GPU
    when N*C is small (1x32x2160x3840 has only 32 planes).

Layouts. H and W are flattened into one axis with its own stride, so NCHW (stride_hw == 1) and
channels_last (stride_c == 1) are both read in place; channels_last programs load [BLOCK_HW, BLOCK_C]
tiles whose rows are contiguous channel runs. The output takes x's memory format.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch
import triton
import triton.language as tl

from instyle.interpreter import interpreting

# ----------------------------------------------------------------------------------------------------
# Tuning configs. One deterministic config per run mode (no autotune: the first call may happen under
# CUDA-graph capture, and the interpreter must not sweep). Values are starting points, not tuned on a GPU.
#   tile          elements per [BLOCK_HW, BLOCK_C] register tile
#   max_block_c   widest channel block for channels_last tiles
#   split_min_hw  planes with H*W >= this use the split (multi-program) reduction
#   chunk_elems   elements of one (n, channel block) one split program covers
# Tests override entries (e.g. TUNING["split_min_hw"] = 1) to force the split path on small shapes.
_INTERPRET = interpreting()
_GPU_TUNING = dict(tile=2048, max_block_c=64, split_min_hw=32768, chunk_elems=16384, num_warps=4)
_INTERPRETER_TUNING = dict(tile=4096, max_block_c=64, split_min_hw=32768, chunk_elems=16384, num_warps=1)
TUNING = dict(_INTERPRETER_TUNING if _INTERPRET else _GPU_TUNING)


# ----------------------------------------------------------------------------------------------------
# Triton kernels and device helpers.


@triton.jit
def _plane_block(pb, C, BLOCK_C: tl.constexpr):
    """Plane-block index pb (int64) -> batch index n and the channel vector c with its mask."""
    num_cb = tl.cdiv(C, BLOCK_C)
    n = pb // num_cb
    c = (pb % num_cb) * BLOCK_C + tl.arange(0, BLOCK_C)
    return n, c, c < C


@triton.jit
def _split_program(C, HW, NUM_CHUNKS, CHUNK_HW: tl.constexpr, BLOCK_C: tl.constexpr):
    """This split program's (n, channels, mask) and spatial chunk [hw_start, hw_end); 64-bit indices."""
    pid = tl.program_id(0).to(tl.int64)
    n, c, c_mask = _plane_block(pid // NUM_CHUNKS, C, BLOCK_C)
    hw_start = (pid % NUM_CHUNKS) * CHUNK_HW
    return n, c, c_mask, hw_start, tl.minimum(hw_start + CHUNK_HW, HW)


@triton.jit
def _plane_shift(x_ptr, x_base, c, c_mask, stride_xc):
    """The shift s of each plane: its first element, in fp32."""
    return tl.load(x_ptr + x_base + c * stride_xc, mask=c_mask, other=0.0).to(tl.float32)


@triton.jit
def _affine(w_ptr, b_ptr, c, c_mask, rstd, HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr):
    """Per-channel scale = rstd * w and offset b (fp32), so that y = (x - mean) * scale + b."""
    scale = rstd
    if HAS_WEIGHT:
        scale = scale * tl.load(w_ptr + c, mask=c_mask, other=1.0).to(tl.float32)
    if HAS_BIAS:
        b = tl.load(b_ptr + c, mask=c_mask, other=0.0).to(tl.float32)
    else:
        b = tl.zeros_like(rstd)
    return scale, b


@triton.jit
def _saved_affine(mean_ptr, rstd_ptr, w_ptr, b_ptr, n, C, c, c_mask, stride_wn,
                  HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr):
    """Load a plane block's saved (mean of x - shift, rstd) and build its scale and offset."""
    mean = tl.load(mean_ptr + n * C + c, mask=c_mask, other=0.0)
    rstd = tl.load(rstd_ptr + n * C + c, mask=c_mask, other=0.0)
    scale, b = _affine(w_ptr + n * stride_wn, b_ptr + n * stride_wn, c, c_mask, rstd, HAS_WEIGHT, HAS_BIAS)
    return mean, rstd, scale, b


@triton.jit
def _chunk_stats(x_ptr, x_base, c, c_mask, shift, hw_start, hw_end, stride_xc, stride_xhw,
                 BLOCK_HW: tl.constexpr, BLOCK_C: tl.constexpr):
    """Mean and M2 of (x - shift) over spatial positions [hw_start, hw_end), per channel in c.

    Each tile's own mean/M2 are exact two-pass values; tiles merge with Chan's formula. Every tile but
    the last is full, so the running count is (start - hw_start) and need not be carried.
    """
    mean = tl.zeros([BLOCK_C], dtype=tl.float32)
    m2 = tl.zeros([BLOCK_C], dtype=tl.float32)
    for start in range(hw_start, hw_end, BLOCK_HW):
        hw = (start + tl.arange(0, BLOCK_HW)).to(tl.int64)
        mask = (hw < hw_end)[:, None] & c_mask[None, :]
        # x tile [BLOCK_HW, BLOCK_C]: plane base + spatial offset * stride_xhw + channel * stride_xc
        x = tl.load(x_ptr + x_base + hw[:, None] * stride_xhw + c[None, :] * stride_xc, mask=mask, other=0.0)
        d = tl.where(mask, x.to(tl.float32) - shift[None, :], 0.0)
        n_a = tl.cast(start - hw_start, tl.float32)
        n_b = tl.cast(tl.minimum(hw_end - start, BLOCK_HW), tl.float32)
        mean_b = tl.sum(d, axis=0) / n_b
        dev = tl.where(mask, d - mean_b[None, :], 0.0)
        m2_b = tl.sum(dev * dev, axis=0)
        n_ab = n_a + n_b
        delta = mean_b - mean
        mean += delta * (n_b / n_ab)
        m2 += m2_b + delta * delta * (n_a * n_b / n_ab)
    return mean, m2


@triton.jit
def _chunk_normalize(x_ptr, r_ptr, y_ptr, x_base, r_base, y_base, c, c_mask, shift, mean, scale, b,
                     hw_start, hw_end, stride_xc, stride_xhw, stride_rc, stride_rhw, stride_yc, stride_yhw,
                     APPLY_RELU: tl.constexpr, HAS_RESIDUAL: tl.constexpr,
                     BLOCK_HW: tl.constexpr, BLOCK_C: tl.constexpr):
    """y = act(((x - shift) - mean) * scale + b) [+ r] over spatial positions [hw_start, hw_end)."""
    for start in range(hw_start, hw_end, BLOCK_HW):
        hw = (start + tl.arange(0, BLOCK_HW)).to(tl.int64)
        mask = (hw < hw_end)[:, None] & c_mask[None, :]
        x = tl.load(x_ptr + x_base + hw[:, None] * stride_xhw + c[None, :] * stride_xc, mask=mask, other=0.0)
        # (x - shift) - mean is exactly 0 on a constant plane, so y is exactly b there. Dead lanes
        # (x = 0) are zeroed so that they stay finite.
        xc = tl.where(mask, (x.to(tl.float32) - shift[None, :]) - mean[None, :], 0.0)
        y = xc * scale[None, :] + b[None, :]
        if APPLY_RELU:
            y = tl.maximum(y, 0.0)
        if HAS_RESIDUAL:
            # residual tile, same indexing with the residual's own strides
            r = tl.load(r_ptr + r_base + hw[:, None] * stride_rhw + c[None, :] * stride_rc, mask=mask, other=0.0)
            y += r.to(tl.float32)
        # y tile, with y's own strides (y has x's memory format)
        tl.store(y_ptr + y_base + hw[:, None] * stride_yhw + c[None, :] * stride_yc,
                 y.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _in_fwd_fused_kernel(
    x_ptr, w_ptr, b_ptr, r_ptr, y_ptr,  # x, weight, bias ([C] or per sample [N, C]), residual, y
    mean_ptr, rstd_ptr,                 # fp32 [N*C] out: mean of (x - shift), 1/sqrt(var + eps)
    C, HW, eps,
    stride_wn,                          # weight/bias batch stride: 0 (shared [C]) or C (per sample)
    stride_xn, stride_xc, stride_xhw,   # x strides: batch, channel, flattened H*W
    stride_rn, stride_rc, stride_rhw,   # residual strides
    stride_yn, stride_yc, stride_yhw,   # y strides
    HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_RESIDUAL: tl.constexpr, APPLY_RELU: tl.constexpr,
    BLOCK_HW: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """Small planes: one program per (n, channel block) computes statistics, then normalizes."""
    pb = tl.program_id(0).to(tl.int64)
    n, c, c_mask = _plane_block(pb, C, BLOCK_C)
    x_base = n * stride_xn
    shift = _plane_shift(x_ptr, x_base, c, c_mask, stride_xc)
    mean, m2 = _chunk_stats(x_ptr, x_base, c, c_mask, shift, 0, HW, stride_xc, stride_xhw, BLOCK_HW, BLOCK_C)
    rstd = tl.rsqrt(m2 / HW + eps)
    tl.store(mean_ptr + n * C + c, mean, mask=c_mask)
    tl.store(rstd_ptr + n * C + c, rstd, mask=c_mask)
    scale, b = _affine(w_ptr + n * stride_wn, b_ptr + n * stride_wn, c, c_mask, rstd, HAS_WEIGHT, HAS_BIAS)
    _chunk_normalize(x_ptr, r_ptr, y_ptr, x_base, n * stride_rn, n * stride_yn, c, c_mask, shift, mean, scale, b,
                     0, HW, stride_xc, stride_xhw, stride_rc, stride_rhw, stride_yc, stride_yhw,
                     APPLY_RELU, HAS_RESIDUAL, BLOCK_HW, BLOCK_C)


@triton.jit
def _in_fwd_partial_stats_kernel(
    x_ptr,                              # input
    pmean_ptr, pm2_ptr,                 # fp32 [N*C, NUM_CHUNKS] out: per-chunk mean and M2 of (x - shift)
    C, HW, NUM_CHUNKS,
    stride_xn, stride_xc, stride_xhw,   # x strides: batch, channel, flattened H*W
    CHUNK_HW: tl.constexpr, BLOCK_HW: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """Split pass 1: one program per (n, channel block, spatial chunk)."""
    n, c, c_mask, hw_start, hw_end = _split_program(C, HW, NUM_CHUNKS, CHUNK_HW, BLOCK_C)
    x_base = n * stride_xn
    shift = _plane_shift(x_ptr, x_base, c, c_mask, stride_xc)
    mean, m2 = _chunk_stats(x_ptr, x_base, c, c_mask, shift, hw_start, hw_end, stride_xc, stride_xhw,
                            BLOCK_HW, BLOCK_C)
    out = (n * C + c) * NUM_CHUNKS + hw_start // CHUNK_HW
    tl.store(pmean_ptr + out, mean, mask=c_mask)
    tl.store(pm2_ptr + out, m2, mask=c_mask)


@triton.jit
def _in_fwd_combine_kernel(
    pmean_ptr, pm2_ptr,                 # fp32 [NC, NUM_CHUNKS]: per-chunk mean and M2
    mean_ptr, rstd_ptr,                 # fp32 [NC] out
    NC, HW, NUM_CHUNKS, eps,
    CHUNK_HW: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """Split pass 2: Chan's combine, two-level: mean = sum(n_k m_k) / HW; M2 = sum(M2_k + n_k (m_k - mean)^2)."""
    rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    r_mask = rows < NC
    acc = tl.zeros([BLOCK_R], dtype=tl.float32)
    for k0 in range(0, NUM_CHUNKS, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        mask = r_mask[:, None] & (k < NUM_CHUNKS)[None, :]
        cnt = tl.minimum(HW - k * CHUNK_HW, CHUNK_HW).to(tl.float32)
        m = tl.load(pmean_ptr + rows[:, None] * NUM_CHUNKS + k[None, :], mask=mask, other=0.0)
        acc += tl.sum(tl.where(mask, cnt[None, :] * m, 0.0), axis=1)
    mean = acc / HW
    m2 = tl.zeros([BLOCK_R], dtype=tl.float32)
    for k0 in range(0, NUM_CHUNKS, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        mask = r_mask[:, None] & (k < NUM_CHUNKS)[None, :]
        cnt = tl.minimum(HW - k * CHUNK_HW, CHUNK_HW).to(tl.float32)
        m = tl.load(pmean_ptr + rows[:, None] * NUM_CHUNKS + k[None, :], mask=mask, other=0.0)
        q = tl.load(pm2_ptr + rows[:, None] * NUM_CHUNKS + k[None, :], mask=mask, other=0.0)
        dm = m - mean[:, None]
        m2 += tl.sum(tl.where(mask, q + cnt[None, :] * dm * dm, 0.0), axis=1)
    tl.store(mean_ptr + rows, mean, mask=r_mask)
    tl.store(rstd_ptr + rows, tl.rsqrt(m2 / HW + eps), mask=r_mask)


@triton.jit
def _in_fwd_normalize_kernel(
    x_ptr, w_ptr, b_ptr, r_ptr, y_ptr,  # as in _in_fwd_fused_kernel
    mean_ptr, rstd_ptr,                 # fp32 [N*C] in: combined statistics
    C, HW, NUM_CHUNKS,
    stride_wn,                          # weight/bias batch stride: 0 or C
    stride_xn, stride_xc, stride_xhw,   # x strides
    stride_rn, stride_rc, stride_rhw,   # residual strides
    stride_yn, stride_yc, stride_yhw,   # y strides
    HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_RESIDUAL: tl.constexpr, APPLY_RELU: tl.constexpr,
    CHUNK_HW: tl.constexpr, BLOCK_HW: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """Split pass 3: one program per (n, channel block, spatial chunk) writes its part of y."""
    n, c, c_mask, hw_start, hw_end = _split_program(C, HW, NUM_CHUNKS, CHUNK_HW, BLOCK_C)
    x_base = n * stride_xn
    shift = _plane_shift(x_ptr, x_base, c, c_mask, stride_xc)
    mean, rstd, scale, b = _saved_affine(mean_ptr, rstd_ptr, w_ptr, b_ptr, n, C, c, c_mask, stride_wn,
                                         HAS_WEIGHT, HAS_BIAS)
    _chunk_normalize(x_ptr, r_ptr, y_ptr, x_base, n * stride_rn, n * stride_yn, c, c_mask, shift, mean, scale, b,
                     hw_start, hw_end, stride_xc, stride_xhw, stride_rc, stride_rhw, stride_yc, stride_yhw,
                     APPLY_RELU, HAS_RESIDUAL, BLOCK_HW, BLOCK_C)


# ----------------------------------------------------------------------------------------------------
# Launcher: all shape, layout and grid logic.


class Plan(NamedTuple):
    """How one (N, C, HW) problem is tiled; shared by the forward and backward launchers."""
    block_hw: int
    block_c: int
    split: bool
    chunk_hw: int      # spatial positions per split program (a multiple of block_hw); HW when fused
    num_chunks: int    # 1 when fused
    num_warps: int


def plan(c: int, hw: int, channels_last: bool) -> Plan:
    t = TUNING
    np2 = triton.next_power_of_2
    if channels_last:  # channel runs are contiguous: widen BLOCK_C first
        block_c = min(np2(c), t["max_block_c"])
        block_hw = min(np2(hw), max(t["tile"] // block_c, 1))
    else:  # spatial runs are contiguous: widen BLOCK_HW first; tiny planes share a program across channels
        block_hw = min(np2(hw), t["tile"])
        block_c = min(np2(c), max(t["tile"] // block_hw, 1))
    if hw < t["split_min_hw"]:
        return Plan(block_hw, block_c, False, hw, 1, t["num_warps"])
    chunk_hw = np2(max(t["chunk_elems"] // block_c, 1))
    block_hw = min(block_hw, chunk_hw)
    return Plan(block_hw, block_c, True, chunk_hw, triton.cdiv(hw, chunk_hw), t["num_warps"])


def memory_format(x: torch.Tensor) -> torch.memory_format:
    """channels_last when x is stored channels-innermost, else contiguous (also for ambiguous shapes)."""
    if not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def plane_strides(t: torch.Tensor, fmt: torch.memory_format) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """(t, (stride_n, stride_c, stride_hw)) with H and W flattened into one strided axis.

    Dense NCHW / channels_last tensors (and views whose H, W still flatten, including expanded
    gradients with zero strides) are used in place; anything else is copied once into `fmt`.
    """
    _, _, h, w = t.shape
    sn, sc, sh, sw = t.stride()
    if h == 1 or sh == sw * w:
        return t, (sn, sc, sw)
    if w == 1:
        return t, (sn, sc, sh)
    t = t.contiguous(memory_format=fmt)
    return plane_strides(t, fmt)


def affine_args(x: torch.Tensor, weight, bias) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(weight, bias, batch stride) for the kernels: [C] is shared (stride 0), [N, C] per sample (C).
    Absent ones become dummies that are never read (their flags are off)."""
    per_sample = any(t is not None and t.dim() == 2 for t in (weight, bias))
    w = weight.contiguous() if weight is not None else x
    b = bias.contiguous() if bias is not None else x
    return w, b, (x.shape[1] if per_sample else 0)


def check_device(x: torch.Tensor) -> None:
    if not x.is_cuda and not _INTERPRET:
        raise ValueError(f"instance_norm: x is on {x.device}; the Triton kernels need a CUDA tensor "
                         "(or TRITON_INTERPRET=1 for the CPU interpreter)")


def _forward(x, weight, bias, residual, eps: float, relu: bool):
    """Launch the forward kernels. Returns y (x's memory format), mean of (x - shift) and rstd (fp32 N x C)."""
    check_device(x)
    N, C, H, W = x.shape
    HW = H * W
    fmt = memory_format(x)
    y = torch.empty_like(x, memory_format=fmt)
    mean = torch.empty((N, C), device=x.device, dtype=torch.float32)
    rstd = torch.empty((N, C), device=x.device, dtype=torch.float32)
    if x.numel() == 0:
        return y, mean.fill_(0.0), rstd.fill_(0.0)
    x, sx = plane_strides(x, fmt)
    _, sy = plane_strides(y, fmt)
    if residual is not None:
        residual, sr = plane_strides(residual, fmt)
    else:
        sr = (0, 0, 0)
    w, b, stride_wn = affine_args(x, weight, bias)
    r = residual if residual is not None else x
    p = plan(C, HW, channels_last=(sx[1] == 1 and C > 1 and HW > 1))
    flags = dict(HAS_WEIGHT=weight is not None, HAS_BIAS=bias is not None,
                 HAS_RESIDUAL=residual is not None, APPLY_RELU=relu)
    planes = N * triton.cdiv(C, p.block_c)
    if not p.split:
        # grid: one program per (n, channel block); each reads its plane twice (second read hits L2)
        _in_fwd_fused_kernel[(planes,)](
            x, w, b, r, y, mean, rstd, C, HW, eps, stride_wn, *sx, *sr, *sy, **flags,
            BLOCK_HW=p.block_hw, BLOCK_C=p.block_c, num_warps=p.num_warps)
        return y, mean, rstd
    # grid: one program per (n, channel block, spatial chunk) for the partials and the normalize pass
    pmean = torch.empty((N * C, p.num_chunks), device=x.device, dtype=torch.float32)
    pm2 = torch.empty_like(pmean)
    grid = (planes * p.num_chunks,)
    _in_fwd_partial_stats_kernel[grid](
        x, pmean, pm2, C, HW, p.num_chunks, *sx,
        CHUNK_HW=p.chunk_hw, BLOCK_HW=p.block_hw, BLOCK_C=p.block_c, num_warps=p.num_warps)
    block_k = min(triton.next_power_of_2(p.num_chunks), 256)
    block_r = max(1, min(triton.next_power_of_2(N * C), 2048 // block_k))
    _in_fwd_combine_kernel[(triton.cdiv(N * C, block_r),)](
        pmean, pm2, mean, rstd, N * C, HW, p.num_chunks, eps,
        CHUNK_HW=p.chunk_hw, BLOCK_R=block_r, BLOCK_K=block_k, num_warps=4)
    _in_fwd_normalize_kernel[grid](
        x, w, b, r, y, mean, rstd, C, HW, p.num_chunks, stride_wn, *sx, *sr, *sy, **flags,
        CHUNK_HW=p.chunk_hw, BLOCK_HW=p.block_hw, BLOCK_C=p.block_c, num_warps=p.num_warps)
    return y, mean, rstd


# ----------------------------------------------------------------------------------------------------
# The op: one torch.library custom op, so torch.compile and CUDA graphs see a single node. Autograd is
# registered in instance_norm_backward.py. mean/rstd are extra, non-differentiable outputs kept for it.


@torch.library.custom_op("instyle::instance_norm", mutates_args=())
def instance_norm_op(x: torch.Tensor, weight: Optional[torch.Tensor], bias: Optional[torch.Tensor],
                     residual: Optional[torch.Tensor], eps: float, relu: bool
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _forward(x, weight, bias, residual, eps, relu)


@instance_norm_op.register_fake
def _(x, weight, bias, residual, eps, relu):
    N, C = x.shape[:2]
    stats = x.new_empty((N, C), dtype=torch.float32)
    return torch.empty_like(x, memory_format=memory_format(x)), stats, torch.empty_like(stats)


_FLOATS = (torch.float32, torch.float16, torch.bfloat16)


def _check(x, weight, bias, residual, activation):
    if activation not in (None, "relu"):
        raise ValueError(f"instance_norm: activation must be None or 'relu', got {activation!r}")
    if x.dim() != 4:
        raise ValueError(f"instance_norm: x must be N x C x H x W, got shape {tuple(x.shape)}")
    if x.dtype not in _FLOATS:
        raise ValueError(f"instance_norm: x must be float32, float16 or bfloat16, got {x.dtype}")
    n, c = x.shape[:2]
    shapes = {t.shape for t in (weight, bias) if t is not None}
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and (t.shape not in ((c,), (n, c)) or t.dtype not in _FLOATS or t.device != x.device):
            raise ValueError(f"instance_norm: {name} must be a float tensor of shape ({c},) or, per sample, "
                             f"({n}, {c}) on {x.device}, got {t.dtype} {tuple(t.shape)} on {t.device}")
    if len(shapes) > 1:
        raise ValueError(f"instance_norm: weight and bias shapes differ: {sorted(map(tuple, shapes))}")
    if residual is not None and (residual.shape != x.shape or residual.dtype != x.dtype
                                 or residual.device != x.device):
        raise ValueError(f"instance_norm: residual must match x ({x.dtype} {tuple(x.shape)} on {x.device}), "
                         f"got {residual.dtype} {tuple(residual.shape)} on {residual.device}")


def instance_norm(x: torch.Tensor, weight: Optional[torch.Tensor] = None, bias: Optional[torch.Tensor] = None,
                  *, eps: float = 1e-5, activation: Optional[str] = None,
                  residual: Optional[torch.Tensor] = None) -> torch.Tensor:
    """y = act(instance_norm(x) * weight + bias) + residual, fused; activation None or "relu".

    x: N x C x H x W (NCHW or channels_last), float32/float16/bfloat16; y has x's dtype and memory
    format. weight, bias: [C], or [N, C] for per-sample affine pairs (conditional instance norm). Statistics are
    biased (as F.instance_norm) and accumulated in fp32. Differentiable in x, weight, bias and residual.
    """
    _check(x, weight, bias, residual, activation)
    return instance_norm_op(x, weight, bias, residual, float(eps), activation == "relu")[0]


def instance_norm_ref(x: torch.Tensor, weight: Optional[torch.Tensor] = None, bias: Optional[torch.Tensor] = None,
                      *, eps: float = 1e-5, activation: Optional[str] = None,
                      residual: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Plain-PyTorch reference: computes in fp32 (two-pass variance), returns x's dtype."""
    xf = x.float()
    mean = xf.mean(dim=(2, 3), keepdim=True)
    var = (xf - mean).square().mean(dim=(2, 3), keepdim=True)
    y = (xf - mean) * torch.rsqrt(var + eps)
    if weight is not None:
        y = y * weight.float().view(-1, x.shape[1], 1, 1)
    if bias is not None:
        y = y + bias.float().view(-1, x.shape[1], 1, 1)
    if activation == "relu":
        y = torch.relu(y)
    if residual is not None:
        y = y + residual.float()
    return y.to(x.dtype)
