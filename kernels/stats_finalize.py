"""The instance-norm statistics finalize as two Triton launches (issue 43): the per-stat-tile partials that
conv_in's epilogue writes (fp32 [N, T, C] means and M2s) -> fp32 [N, 3, C] = (mean, gamma * rstd, beta).

Why a kernel. The torch form (conv_in_normalize.finalize_ref: var_mean, a ragged-tile Chan merge, rsqrt, stack)
is ~10 small launches per normalized layer and more for the four phases of an upsampling conv: ~200 per 4K
frame, each a few microseconds of launch for microseconds of work. Here it is two launches whatever the layer:

1. `_block_merge_kernel`: grid (N, blocks of BLOCK_T tiles, channel blocks). Each program merges its BLOCK_T tiles
   (the last tile of each group is ragged: hw - stat_m * (T - 1) pixels) into one (count, mean, M2) with the
   weighted two-pass form: mean_b = sum(n_t m_t) / n_b, M2_b = sum(M2_t) + sum(n_t (m_t - mean_b)^2).
   At 3840x2160 (T = 64,800 tiles of 128 pixels) that is ~500 blocks per image and channel block: the
   [N, T, C] partials (33 MB at C = 128) are read once at full bandwidth, not by a handful of programs.
2. `_final_merge_kernel`: grid (N, channel blocks). Chan-merges the blocks in chunks of BLOCK_T and writes the
   norm params.

Several groups (the phases of conv_in_phases, equal pixel counts each) are one call: their partials concatenated
along T, each group's last tile ragged. The reference beside it is conv_in_normalize.finalize_ref /
finalize_groups_ref (torch; exact Chan formulas), and norm_params_ref of the stored output.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from instyle.interpreter import interpreting

GPU_BLOCK_T = 128
BLOCK_T = 64 if interpreting() else GPU_BLOCK_T   # tiles (stage 1) or blocks (stage 2) per step
BLOCK_C = 64


@triton.jit
def _tile_counts(t, T_GROUP, LAST, STAT_M, TT):
    """Pixels of stat tile t: STAT_M, LAST for the last tile of each group, 0 past the end."""
    n = tl.where(t % T_GROUP == T_GROUP - 1, LAST, STAT_M).to(tl.float32)
    return tl.where(t < TT, n, 0.0)


@triton.jit
def _weighted(n_t, m_t, m2_t):
    """(count, mean, M2) of a set of groups with counts n_t [BT], means and M2s [BT, BC] (n_t = 0: absent)."""
    n_b = tl.sum(n_t, axis=0)
    mean_b = tl.sum(n_t[:, None] * m_t, axis=0) / n_b
    d = m_t - mean_b[None, :]
    m2_b = tl.sum(m2_t, axis=0) + tl.sum(n_t[:, None] * d * d, axis=0)
    return n_b, mean_b, m2_b


@triton.jit
def _block_merge_kernel(pmean_ptr, pm2_ptr, bmean_ptr, bm2_ptr, bcount_ptr, TT, C, T_GROUP, LAST, STAT_M, B,
                 BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr):
    n = tl.program_id(0).to(tl.int64)
    b = tl.program_id(1)
    c = tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)
    t = b * BLOCK_T + tl.arange(0, BLOCK_T)
    mask = (t < TT)[:, None] & (c < C)[None, :]
    offs = n * TT * C + t[:, None].to(tl.int64) * C + c[None, :]
    m_t = tl.load(pmean_ptr + offs, mask=mask, other=0.0)
    m2_t = tl.load(pm2_ptr + offs, mask=mask, other=0.0)
    n_b, mean_b, m2_b = _weighted(_tile_counts(t, T_GROUP, LAST, STAT_M, TT), m_t, m2_t)
    out = n * B * C + b * C + c
    tl.store(bmean_ptr + out, mean_b, mask=c < C)
    tl.store(bm2_ptr + out, m2_b, mask=c < C)
    if (tl.program_id(0) == 0) & (tl.program_id(2) == 0):
        tl.store(bcount_ptr + b, n_b)


@triton.jit
def _final_merge_kernel(bmean_ptr, bm2_ptr, bcount_ptr, w_ptr, b_ptr, out_ptr, B, C, swn, sbn, eps,
                 BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr):
    n = tl.program_id(0).to(tl.int64)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    cm = c < C
    count = tl.zeros([BLOCK_C], tl.float32)
    mean = tl.zeros([BLOCK_C], tl.float32)
    m2 = tl.zeros([BLOCK_C], tl.float32)
    for b0 in range(0, B, BLOCK_T):
        b = b0 + tl.arange(0, BLOCK_T)
        bm = b < B
        offs = n * B * C + b[:, None] * C + c[None, :]
        mask = bm[:, None] & cm[None, :]
        n_b, mean_b, m2_b = _weighted(tl.load(bcount_ptr + b, mask=bm, other=0.0),
                                      tl.load(bmean_ptr + offs, mask=mask, other=0.0),
                                      tl.load(bm2_ptr + offs, mask=mask, other=0.0))
        total = count + n_b  # Chan: merge the running (count, mean, M2) with this chunk's
        delta = mean_b - mean
        mean += delta * (n_b / total)
        m2 += m2_b + delta * delta * (count * n_b / total)
        count = total
    w = tl.load(w_ptr + n * swn + c, mask=cm, other=0.0)
    beta = tl.load(b_ptr + n * sbn + c, mask=cm, other=0.0)
    out = out_ptr + n * 3 * C + c
    tl.store(out, mean, mask=cm)
    tl.store(out + C, tl.math.rsqrt(m2 / count + eps) * w, mask=cm)
    tl.store(out + 2 * C, beta, mask=cm)


def finalize(pmean: torch.Tensor, pm2: torch.Tensor, hw: int, stat_m: int, weight: torch.Tensor,
             bias: torch.Tensor, eps: float = 1e-5, groups: int = 1) -> torch.Tensor:
    """fp32 [N, 3, C] norm params from fp32 [N, G*T, C] partials: `groups` groups of T tiles, each covering hw
    pixels in tiles of stat_m (the last one ragged). weight/bias: [C], or [N, C] per sample."""
    N, TT, C = pmean.shape
    assert pm2.shape == pmean.shape and TT % groups == 0, (tuple(pmean.shape), tuple(pm2.shape), groups)
    t_group = TT // groups
    assert stat_m * (t_group - 1) < hw <= stat_m * t_group, (hw, stat_m, t_group)
    return finalize_op(pmean.float().contiguous(), pm2.float().contiguous(), hw, stat_m,
                       weight.float().contiguous(), bias.float().contiguous(), eps, groups)


# A torch.library op, like conv_in's (kernels/conv_in_gemm.py conv_in_op): torch.compile(fullgraph) of a layer
# that finalizes sees one opaque op with a fake (shape-only) implementation.
@torch.library.custom_op("instyle::stats_finalize", mutates_args=())
def finalize_op(pmean: torch.Tensor, pm2: torch.Tensor, hw: int, stat_m: int, w: torch.Tensor, b: torch.Tensor,
                eps: float, groups: int) -> torch.Tensor:
    N, TT, C = pmean.shape
    t_group = TT // groups
    B = triton.cdiv(TT, BLOCK_T)
    bmean = torch.empty(N, B, C, device=pmean.device, dtype=torch.float32)
    bm2, bcount = torch.empty_like(bmean), torch.empty(B, device=pmean.device, dtype=torch.float32)
    bc = min(BLOCK_C, triton.next_power_of_2(C))
    _block_merge_kernel[(N, B, triton.cdiv(C, bc))](pmean, pm2, bmean, bm2, bcount, TT, C, t_group,
                                                    hw - stat_m * (t_group - 1), stat_m, B,
                                                    BLOCK_T=BLOCK_T, BLOCK_C=bc)
    out = torch.empty(N, 3, C, device=pmean.device, dtype=torch.float32)
    _final_merge_kernel[(N, triton.cdiv(C, bc))](bmean, bm2, bcount, w, b, out, B, C, C if w.dim() == 2 else 0,
                                                 C if b.dim() == 2 else 0, eps, BLOCK_T=BLOCK_T, BLOCK_C=bc)
    return out


@finalize_op.register_fake
def _(pmean, pm2, hw, stat_m, w, b, eps, groups):
    return pmean.new_empty(pmean.shape[0], 3, pmean.shape[2])
