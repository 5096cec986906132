"""Fused conv blocks for the Johnson net: implicit-GEMM convolution whose prologue applies the previous
instance norm (+ReLU, +skip) and whose epilogue gathers the statistics of the next one.

What it fuses. An unfused `relu(IN(conv(pad(up(x)))))` materializes the upsampled tensor (4x the
input), the padded tensor, the conv output, then reads/writes it again for IN's statistics, normalize
and ReLU: about 4.4 KB per output pixel over the whole generator. Here each conv layer reads its raw
input once (plus halo re-reads from L1/L2) and writes its raw output once; nothing else of activation
size touches memory, about 0.9 KB per pixel:
  * prologue, while loading an input tile: y = act((x - mean[n,c]) * scale[n,c] + beta[c]) [+ skip],
    scale = gamma * rstd -- the *previous* layer's IN applied on the fly. Reflection padding and
    nearest x2 upsampling live in the index math: a tap's padded coordinate p is reflected into
    [0, size) of the (upsampled) input, then halved (p // 2) to address the stored, un-upsampled one.
  * GEMM: M = output pixels of one image, N = output channels, K = (tap, input channel); weights are
    pre-packed once as [KH*KW*Cin, Cout] (row (ky*KW + kx)*Cin + ci). Two K orders (constexpr FLAT_K):
    tap-outer (per tap: row addresses once per pixel, then contiguous NHWC channel runs of BLOCK_K) for
    Cin >= 16; flat (k -> (ky, kx, ci) per element) for the 9x9 first layer with Cin = 3, where a
    per-tap K of 3 would waste 80% of a 16-wide tile (flat K = 243 pads only to 256). Flat tiles that
    lie inside one image row, away from the borders, skip the reflection math: their offsets are a
    per-pixel vector plus a per-k vector, one add per element.
    A third order for that layer, row windows (conv_in(..., window=True), opt-in until a GPU profile
    picks between them): the image is first copied reflect-padded, NHWC, channels zero-padded to 4, in
    the run dtype (window_input); for output pixel (oh, ow) and kernel row ky the KW x 4 elements at
    padded (oh + ky, ow..ow + KW - 1) are then contiguous, so the layer is a KH x 1 conv without padding
    on an overlapping view of that copy with KW*4 "channels" (rounded up to 48 against zero weight rows):
    KH steps of contiguous, 8-byte-aligned runs that load as vectors, no address math per element.
    The 9x9 last layer (Cout = 3) is 5% of the useful FLOPs, but as a plain GEMM its N is 3: BLOCK_N = 8
    (sm_90 compiles it to wgmma m64n8k16, checked in the PTX) does 8/3 of the work, ~0.35 ms at H100
    fp16 peak at 3840x2160 against ~0.2 ms of memory traffic. With PIX = 5 a GEMM row is a group of 5
    horizontally adjacent output pixels and N = 5 x 3 = 15 columns of weights shifted by one pixel each
    (pack_weight(..., pix); K spans 9 + 4 columns): 13/9 x 16/15 ~ 1.5x the useful work, ~0.2 ms.
  * epilogue: + bias, one store of the raw output (any strides: NHWC between layers, NCHW fp32 for the
    generator's output), and IN statistics of exactly the stored (rounded) values.
The prologue re-normalizes an input element each time it is loaded (KH*KW times, x4 behind an
upsampling): free next to the MMA for the 3x3 convs at 64-128 output channels, not for the deconvs,
whose inputs engine/backends/fused_gemm.py normalizes once with kernels/conv_in_normalize.py instead (that
file's docstring has the numbers); the 0.9 KB/pixel above is the all-prologue figure, ~1.2 KB with it.

Statistics (numerically safe, deterministic, no atomics). The epilogue splits its BLOCK_M rows into
stat tiles of STAT_M rows (a constant across tile configs, so the partial layout does not depend on what
autotune picks) and stores each tile's per-channel mean and M2 -- exact two-pass values from registers --
into fp32 [N, T, C] buffers, T = cdiv(H*W, STAT_M). `finalize` (conv_in_normalize.py) merges them with
Chan's formula (mean = sum(n_t m_t) / HW, M2 = sum(M2_t + n_t (m_t - mean)^2); the equal-count tiles in
one torch.var_mean), never E[x^2] - E[x]^2, into [N, 3, C] = (mean, gamma * rstd, beta), which the next
conv's prologue reads. A shift-free form is safe here: each tile's M2 is about its own mean.

Residual blocks. A block's output x_k = IN(r2_k) + x_{k-1} cannot be written by the conv that makes
r2_k (its statistics are not complete until that conv ends), so it stays pending: the next conv's
prologue computes it from raw r2_k, its statistics and the materialized skip x_{k-1}. That conv (the
next block's conv1, 3x3 stride 1) also has to leave x_k behind as the next skip: at the center tap
input pixel == output pixel, so programs of the first channel tile store the prologue's result at
their own pixels (WRITE_SKIP) -- every pixel exactly once, from data the main loop reads anyway (an
L1/L2 hit, not an extra DRAM pass). x_0 = relu(IN3(a3)) is written
the same way; after the last block, deconv1's input normalize consumes x_B without writing it.
"""
from __future__ import annotations

import os
from typing import Optional

import torch
import triton
import triton.language as tl

from instyle.interpreter import interpreting

from . import tile_table

# Stats, finalize, finalize_groups and norm_params_ref are re-exported (callers import them from here)
from .conv_in_normalize import Stats, _reflect, finalize, finalize_groups, norm_params_ref  # noqa: F401
from .upsample_phase import phase_weights

# ----------------------------------------------------------------------------------------------------
# Tuning configs.
#   GPU, default: one pinned config per layer shape (`pinned_config`), so a GPU run compiles one kernel
#     per layer variant and dtype, not a sweep of up to 13.
#   GPU, INSTYLE_AUTOTUNE=1: triton.autotune sweeps _GPU_CONFIGS (pruned per layer to tiles no wider than
#     its channels), keyed on channels, kernel, stride/upsampling, K order and a log2 size bucket;
#     `autotune_winners()` lists what it picked, to be pinned.
#   Interpreter: one config, no sweep, no CUDA query. Its cost is per op and per program, not per
#     element, so tiles are as large as the layer and the flat K order is taken wherever allowed (a 9x9
#     layer in a few K steps instead of 81). Tests shrink the tiles and set flat_max_cin=0 to run the
#     tap-outer order a GPU uses.
#   stat_m: rows per statistics partial; it must divide every BLOCK_M, and fixes the partials' layout
#     whatever autotune picks. 128 rows cost 8 B of fp32 (mean, M2) per 128 pixels and channel (~3%).
#   flat_max_cin: layers with Cin <= this use the flat K order (GPU: the RGB input layer only).
_INTERPRET = interpreting()
GPU_STAT_M = 128
WINDOW_C: tl.constexpr = tl.constexpr(4)  # channels per pixel of window_input's copy (RGB + a zero channel)
TUNING = (dict(block_m=256, block_n=128, block_k=256, stat_m=64, flat_max_cin=1 << 30, num_warps=1)
          if _INTERPRET else dict(stat_m=GPU_STAT_M, flat_max_cin=15))
_GPU_CONFIGS = [
    triton.Config(dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk), num_warps=w, num_stages=s)
    for bm, bn, bk, w, s in [
        (128, 128, 32, 8, 3), (128, 128, 64, 8, 3), (128, 64, 32, 4, 4), (128, 64, 64, 4, 3),
        (256, 128, 32, 8, 3), (256, 64, 32, 8, 4), (128, 32, 32, 4, 4), (128, 16, 64, 4, 3),
        (256, 32, 64, 8, 3), (256, 16, 32, 8, 4), (128, 8, 32, 4, 4), (128, 8, 64, 4, 3), (256, 8, 32, 8, 3),
    ]
]


def _prune(configs, nargs, **kw):
    """Drop tiles wider than the layer: BLOCK_N > Cout, or BLOCK_K > Cin (but never below 32) on the
    tap-outer path."""
    cout_cap = max(8, triton.next_power_of_2(nargs["Cout"] * kw["PIX"]))
    cin_cap = 64 if kw["FLAT_K"] else max(32, triton.next_power_of_2(nargs["Cin"]))
    keep = [c for c in configs if c.kwargs["BLOCK_N"] <= cout_cap and c.kwargs["BLOCK_K"] <= cin_cap]
    return keep or [min(configs, key=lambda c: (c.kwargs["BLOCK_N"], c.kwargs["BLOCK_K"]))]


# ----------------------------------------------------------------------------------------------------
# Triton kernels.


# The kernel is a prologue (load an input tile, apply the pending IN), a K loop of MMAs (flat or
# tap-outer) and an epilogue (store, statistics); each phase is a helper. @triton.jit helpers are inlined,
# so the groups their arguments travel in cost nothing:
#   a tensor view is (pointer, stride n, c, h, w) in elements: x = (x_ptr, sxn, sxc, sxh, sxw), skip, y;
#   x_size = (Cin, Hin, Win): the stored input's channels and size;
#   rows = (n, oh, ow, m_mask): this program's image, its GEMM rows' output pixel and which rows exist;
#   cols = (j, co, j_mask): its GEMM columns, their output channel and which columns exist;
#   CONV = (KH, KWE, STRIDE, PAD, UPSAMPLE, PHASE): the taps one GEMM row reads and how a tap maps an
#     output coordinate to a stored input coordinate (PHASE: see _phase_src);
#   PROLOGUE = (NORM, RELU, HAS_SKIP): what the prologue applies to a loaded input tile.


@triton.jit
def _src(o, k, size_in, STRIDE: tl.constexpr, PAD: tl.constexpr, UPSAMPLE: tl.constexpr):
    """Stored input coordinate of output coordinate o at tap offset k (broadcasts)."""
    if UPSAMPLE:  # pad (reflect) in the 2x upsampled grid, then map to the stored pixel
        return _reflect(o * STRIDE + k - PAD, 2 * size_in) // 2
    else:
        return _reflect(o * STRIDE + k - PAD, size_in)


@triton.jit
def _phase_src(o, k, size_in, PHASE: tl.constexpr, AXIS: tl.constexpr):
    """Stored input coordinate for phase PHASE = 1 + 2a + b of an upsampling 3x3 conv (kernels/
    upsample_phase.py): the 2x2 kernel's tap k of phase a (AXIS 0, rows) or b (AXIS 1, columns) reads
    stored pixel o - 1 + a + k, clamped (replicate padding = reflect padding of the upsampled grid)."""
    PH: tl.constexpr = (PHASE - 1) // 2 if AXIS == 0 else (PHASE - 1) % 2
    p = o + k + (PH - 1)
    return tl.minimum(tl.maximum(p, 0), size_in - 1)


@triton.jit
def _gemm_rows(pid_m, Hout, Wout, PIX: tl.constexpr, BLOCK_M: tl.constexpr):
    """Output row oh and (first) output column ow of this program's GEMM rows, and which rows exist. A row
    is one output pixel, or with PIX > 1 a group of PIX horizontally adjacent ones."""
    # pixel coordinates stay int32 (one image's H*W < 2^31); offsets are int64 (a batch may not fit)
    WG = (Wout + PIX - 1) // PIX                           # GEMM rows per image row
    m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)            # GEMM row within image n
    m_mask = m < Hout * WG
    oh = m // WG
    ow = (m % WG) * PIX                                    # (first) output column of the row
    return oh, ow, m_mask


@triton.jit
def _gemm_columns(pid_n, Cout, PIX: tl.constexpr, BLOCK_N: tl.constexpr):
    """This program's GEMM columns j (pixel j // Cout of the row's group, channel co = j % Cout) and which
    exist."""
    j = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    j_mask = j < PIX * Cout
    if PIX == 1:
        co = j
    else:
        co = j % Cout
    return j, co, j_mask


@triton.jit
def _prologue(a, mask, s_off, ci, k_mask, n, Cin, norm_ptr, skip_ptr, PROLOGUE: tl.constexpr,
              APPLY: tl.constexpr):
    """act((a - mean) * scale + beta) [+ skip] in fp32 for an input tile a of channels ci (skip at s_off);
    masked lanes are 0 (they pad K). APPLY = any of PROLOGUE, a constexpr of its own (the elements of a
    constexpr tuple are not static to `if`): without it the tile passes through as loaded -- its masked lanes
    were loaded as 0 -- with no fp32 round trip or select compiled in (the RGB conv's input)."""
    if APPLY:
        NORM, RELU, HAS_SKIP = PROLOGUE
        a = a.to(tl.float32)
        if NORM:
            # norm [N, 3, Cin] fp32: mean, gamma * rstd, beta of the input's pending IN
            nb = norm_ptr + n * 3 * Cin + ci
            mean = tl.load(nb, mask=k_mask, other=0.0)
            scale = tl.load(nb + Cin, mask=k_mask, other=0.0)
            beta = tl.load(nb + 2 * Cin, mask=k_mask, other=0.0)
            a = (a - mean[None, :]) * scale[None, :] + beta[None, :]
        if RELU:
            a = tl.maximum(a, 0.0)
        if HAS_SKIP:
            a += tl.load(skip_ptr + s_off, mask=mask, other=0.0).to(tl.float32)
        a = tl.where(mask, a, 0.0)
    return a


@triton.jit
def _mma(acc, a, w, DOT_IEEE: tl.constexpr):
    """acc + a @ w: tensor cores for fp16/bf16, exact fp32 FMAs (ieee) for fp32 operands."""
    if DOT_IEEE:
        return tl.dot(a, w, acc, input_precision="ieee")
    else:
        return tl.dot(a, w, acc)


@triton.jit
def _is_interior_tile(pid_m, Hin, Win, Hout, Wout, PAD: tl.constexpr, BLOCK_M: tl.constexpr):
    """Whether this program's pixels lie inside one image row, PAD away from every border (stride 1, no
    upsampling): such a tile reads no reflected pixel."""
    m_first = pid_m * BLOCK_M
    m_last = tl.minimum(m_first + BLOCK_M, Hout * Wout) - 1
    r0, r1 = m_first // Wout, m_last // Wout
    return (r0 == r1) & (r0 >= PAD) & (r1 < Hin - PAD) & (m_first % Wout >= PAD) & (m_last % Wout < Win - PAD)


@triton.jit
def _flat_k_loop(acc, x, skip, norm_ptr, w_ptr, rows, cols, kr, x_size, Cout, CONV: tl.constexpr,
                 PROLOGUE: tl.constexpr, APPLY: tl.constexpr, DOT_IEEE: tl.constexpr, BLOCK_K: tl.constexpr,
                 REFLECT: tl.constexpr):
    """The flat-K main loop: k -> (tap, ci) per column (PIX = 1). REFLECT=False: interior tile at stride 1,
    no upsampling -- x offset = pixel part [BLOCK_M] + (ky, kx, ci) part [BLOCK_K]."""
    x_ptr, sxn, sxc, sxh, sxw = x
    skip_ptr, ssn, ssc, ssh, ssw = skip
    n, oh, ow, m_mask = rows
    j, co, j_mask = cols
    Cin, Hin, Win = x_size
    KH, KW, STRIDE, PAD, UPSAMPLE, _ = CONV  # PHASE: never flat (the launcher)
    K = KH * KW * Cin
    if not REFLECT:
        x_row = n * sxn + (oh - PAD).to(tl.int64) * sxh + (ow - PAD) * sxw    # pixel (oh - PAD, ow - PAD)
    for k0 in range(0, K, BLOCK_K):
        k = k0 + kr
        k_mask = k < K
        tap = k // Cin
        ci = k - tap * Cin
        mask = m_mask[:, None] & k_mask[None, :]
        if REFLECT:
            ih = _src(oh[:, None], (tap // KW)[None, :], Hin, STRIDE, PAD, UPSAMPLE).to(tl.int64)
            iw = _src(ow[:, None], (tap % KW)[None, :], Win, STRIDE, PAD, UPSAMPLE).to(tl.int64)
            x_off = n * sxn + ih * sxh + iw * sxw + ci[None, :] * sxc
            s_off = n * ssn + ih * ssh + iw * ssw + ci[None, :] * ssc
        else:
            x_off = x_row[:, None] + ((tap // KW).to(tl.int64) * sxh + (tap % KW) * sxw + ci * sxc)[None, :]
            s_off = x_off  # no skip on this path
        # x tile [BLOCK_M, BLOCK_K]: image n, pixel (ih, iw) of tap k's (ky, kx), channel ci
        a = tl.load(x_ptr + x_off, mask=mask, other=0.0)
        a = _prologue(a, mask, s_off, ci, k_mask, n, Cin, norm_ptr, skip_ptr, PROLOGUE, APPLY)
        # weight tile [BLOCK_K, BLOCK_N]: packed row k, column co
        w = tl.load(w_ptr + k[:, None] * Cout + co[None, :], mask=k_mask[:, None] & j_mask[None, :], other=0.0)
        acc = _mma(acc, a.to(w.dtype), w, DOT_IEEE)
    return acc


@triton.jit
def _store_next_skip(x, skip, skip_out_ptr, norm_ptr, rows, kr, Cin, PROLOGUE: tl.constexpr,
                     BLOCK_K: tl.constexpr):
    """Store the prologue's result at this tile's own pixels (stride 1: the center tap's input pixel is the
    output pixel, so every pixel is stored exactly once), in a short loop of its own so that the main
    loop stays free of control flow for the software pipeliner. skip_out has skip's strides."""
    x_ptr, sxn, sxc, sxh, sxw = x
    skip_ptr, ssn, ssc, ssh, ssw = skip
    n, oh, ow, m_mask = rows
    x_pix = n * sxn + oh.to(tl.int64) * sxh + ow * sxw
    s_pix = n * ssn + oh.to(tl.int64) * ssh + ow * ssw
    for c0 in range(0, Cin, BLOCK_K):
        ci = c0 + kr
        k_mask = ci < Cin
        mask = m_mask[:, None] & k_mask[None, :]
        s_off = s_pix[:, None] + ci[None, :] * ssc
        a = tl.load(x_ptr + x_pix[:, None] + ci[None, :] * sxc, mask=mask, other=0.0)
        a = _prologue(a, mask, s_off, ci, k_mask, n, Cin, norm_ptr, skip_ptr, PROLOGUE, True)
        tl.store(skip_out_ptr + s_off, a.to(skip_out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _tap_outer_loop(acc, x, skip, norm_ptr, w_ptr, rows, cols, kr, x_size, Cout, CONV: tl.constexpr,
                    PROLOGUE: tl.constexpr, APPLY: tl.constexpr, PIX: tl.constexpr, DOT_IEEE: tl.constexpr,
                    BLOCK_K: tl.constexpr):
    """The tap-outer main loop: per step one reflected/upsampled row address per pixel, then a run of
    BLOCK_K channels. One flat loop over (tap, channel block) rather than two nested ones: the compiler
    pipelines (num_stages) the innermost loop, and Cin = 32 with BLOCK_K = 32 would leave it one step long."""
    x_ptr, sxn, sxc, sxh, sxw = x
    skip_ptr, ssn, ssc, ssh, ssw = skip
    n, oh, ow, m_mask = rows
    j, co, j_mask = cols
    Cin, Hin, Win = x_size
    KH, KWE, STRIDE, PAD, UPSAMPLE, PHASE = CONV
    NUM_CB = tl.cdiv(Cin, BLOCK_K)
    for step in range(0, KH * KWE * NUM_CB):
        tap = step // NUM_CB
        ci = (step - tap * NUM_CB) * BLOCK_K + kr
        if PHASE:
            ih = _phase_src(oh, tap // KWE, Hin, PHASE, 0).to(tl.int64)
            iw = _phase_src(ow, tap % KWE, Win, PHASE, 1)
        else:
            ih = _src(oh, tap // KWE, Hin, STRIDE, PAD, UPSAMPLE).to(tl.int64)
            iw = _src(ow, tap % KWE, Win, STRIDE, PAD, UPSAMPLE)
        if PIX > 1:  # columns only pixels past the right edge need: keep the address in range
            iw = tl.minimum(tl.maximum(iw, 0), Win - 1)
        iw = iw.to(tl.int64)
        k_mask = ci < Cin
        mask = m_mask[:, None] & k_mask[None, :]
        # x tile [BLOCK_M, BLOCK_K]: image n, pixel (ih, iw), channels ci (contiguous in NHWC)
        a = tl.load(x_ptr + (n * sxn + ih * sxh + iw * sxw)[:, None] + ci[None, :] * sxc, mask=mask, other=0.0)
        s_off = (n * ssn + ih * ssh + iw * ssw)[:, None] + ci[None, :] * ssc  # same pixels in skip(_out)
        a = _prologue(a, mask, s_off, ci, k_mask, n, Cin, norm_ptr, skip_ptr, PROLOGUE, APPLY)
        a = a.to(w_ptr.dtype.element_ty)
        # weight tile [BLOCK_K, BLOCK_N]: packed row tap*Cin + ci, column j
        w = tl.load(w_ptr + (tap * Cin + ci)[:, None] * (PIX * Cout) + j[None, :],
                    mask=k_mask[:, None] & j_mask[None, :], other=0.0)
        acc = _mma(acc, a, w, DOT_IEEE)
    return acc


@triton.jit
def _store_output(acc, b_ptr, y, rows, cols, Cout, Wout, HAS_BIAS: tl.constexpr, PIX: tl.constexpr):
    """+ bias, then one store of the raw output tile: image n, channel co, pixel (oh, ow [+ j // Cout]),
    with y's own strides. Returns the stored (rounded) values, the ones the statistics must describe."""
    y_ptr, syn, syc, syh, syw = y
    n, oh, ow, m_mask = rows
    j, co, j_mask = cols
    if HAS_BIAS:
        acc += tl.load(b_ptr + co, mask=j_mask, other=0.0)[None, :]
    y_tile = acc.to(y_ptr.dtype.element_ty)
    if PIX == 1:
        y_off = (oh.to(tl.int64) * syh + ow * syw)[:, None] + co[None, :] * syc
        out_mask = m_mask[:, None] & j_mask[None, :]
    else:
        ocol = ow[:, None] + (j // Cout)[None, :]
        y_off = oh.to(tl.int64)[:, None] * syh + ocol * syw + co[None, :] * syc
        out_mask = m_mask[:, None] & j_mask[None, :] & (ocol < Wout)
    tl.store(y_ptr + n * syn + y_off, y_tile, mask=out_mask)
    return y_tile


@triton.jit
def _store_stat_partials(y_tile, pmean_ptr, pm2_ptr, T, n, t, left, cols, Cout, STAT_M: tl.constexpr):
    """Per stat tile of STAT_M rows and per channel: exact two-pass mean and M2 (from registers) of the
    stored values y_tile [BLOCK_M, BLOCK_N], into the fp32 [N, T, Cout] partials (PIX = 1). Rows
    s * STAT_M.. of the tile are stat tile t[s] of image n, whose first left[s] rows exist (left <= 0: none)."""
    j, co, j_mask = cols
    BLOCK_M: tl.constexpr = y_tile.shape[0]
    BLOCK_N: tl.constexpr = y_tile.shape[1]
    S: tl.constexpr = BLOCK_M // STAT_M
    v = tl.reshape(y_tile.to(tl.float32), [S, STAT_M, BLOCK_N])
    valid = (tl.arange(0, STAT_M)[None, :] < left[:, None])[:, :, None]
    cnt = tl.maximum(tl.minimum(left, STAT_M), 1).to(tl.float32)
    mean = tl.sum(tl.where(valid, v, 0.0), axis=1) / cnt[:, None]         # [S, BLOCK_N]
    dev = tl.where(valid, v - mean[:, None, :], 0.0)
    m2 = tl.sum(dev * dev, axis=1)
    p_off = (n * T + t)[:, None] * Cout + co[None, :]      # int64 via n
    p_mask = (left > 0)[:, None] & j_mask[None, :]
    tl.store(pmean_ptr + p_off, mean, mask=p_mask)
    tl.store(pm2_ptr + p_off, m2, mask=p_mask)


@triton.jit
def _conv_in_kernel(
    x_ptr,                      # raw input, logical [N, Cin, Hin, Win], any strides (sx*)
    norm_ptr,                   # fp32 [N, 3, Cin]: mean, gamma*rstd, beta of the input's pending IN (NORM)
    skip_ptr,                   # skip added after the prologue's activation, like x, strides ss* (HAS_SKIP)
    skip_out_ptr,               # out: the prologue's result (next skip), strides ss* (WRITE_SKIP)
    w_ptr,                      # packed weights [KH*(KW+PIX-1)*Cin, PIX*Cout], contiguous
    b_ptr,                      # fp32 bias [Cout] (HAS_BIAS)
    y_ptr,                      # raw output, logical [N, Cout, Hout, Wout], any strides (sy*)
    pmean_ptr, pm2_ptr,         # fp32 [N, T, Cout] out: per-stat-tile mean and M2 of y (HAS_STATS)
    Cin, Hin, Win, Cout, Hout, Wout, T,
    sxn, sxc, sxh, sxw,         # x strides (elements)
    ssn, ssc, ssh, ssw,         # skip / skip_out strides
    syn, syc, syh, syw,         # y strides
    M_BUCKET,                   # log2 of Hout*Wout: autotune key only
    KH: tl.constexpr, KW: tl.constexpr, STRIDE: tl.constexpr, UPSAMPLE: tl.constexpr,
    NORM: tl.constexpr, RELU: tl.constexpr, HAS_SKIP: tl.constexpr, WRITE_SKIP: tl.constexpr,
    HAS_BIAS: tl.constexpr, HAS_STATS: tl.constexpr, FLAT_K: tl.constexpr, DOT_IEEE: tl.constexpr,
    PIX: tl.constexpr, PADDED: tl.constexpr, PHASE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, STAT_M: tl.constexpr,
):
    """One program: BLOCK_M GEMM rows of image n x BLOCK_N GEMM columns. A row is one output pixel, or
    with PIX > 1 a group of PIX horizontally adjacent ones; a column is (pixel of the group, channel)."""
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    n = tl.program_id(2).to(tl.int64)  # every offset below is n * stride + ...: 64-bit from here on
    PAD: tl.constexpr = 0 if PADDED else KH // 2        # PADDED: x is window_input's padded view
    KWE: tl.constexpr = KW + PIX - 1                       # kernel columns one GEMM row reads
    CONV: tl.constexpr = (KH, KWE, STRIDE, PAD, UPSAMPLE, PHASE)
    PROLOGUE: tl.constexpr = (NORM, RELU, HAS_SKIP)
    APPLY: tl.constexpr = NORM or RELU or HAS_SKIP      # any prologue at all (compiled out when not)
    # window_input's pixels are WINDOW_C = 4 elements apart (a constant the compiler can see) and its rows
    # start 16-element aligned: a K run starts on 4 elements, so it loads as vectors
    x = (x_ptr, sxn, sxc, sxh, WINDOW_C if PADDED else sxw)
    skip = (skip_ptr, ssn, ssc, ssh, ssw)
    y = (y_ptr, syn, syc, syh, syw)
    x_size = (Cin, Hin, Win)
    oh, ow, m_mask = _gemm_rows(pid_m, Hout, Wout, PIX, BLOCK_M)
    rows = (n, oh, ow, m_mask)
    j, co, j_mask = _gemm_columns(pid_n, Cout, PIX, BLOCK_N)
    cols = (j, co, j_mask)
    kr = tl.arange(0, BLOCK_K)
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)

    if FLAT_K:  # k -> (ky, kx, ci) per element: small Cin (the 9x9 RGB input layer)
        tl.static_assert(PIX == 1, "the flat K order reads one pixel per GEMM row")
        interior = False
        if STRIDE == 1 and not UPSAMPLE and not HAS_SKIP:
            # a tile inside one image row, PAD away from every border, needs no reflection: its offsets
            # split into a per-pixel and a per-k vector (one add per element instead of ~25 int ops)
            interior = _is_interior_tile(pid_m, Hin, Win, Hout, Wout, PAD, BLOCK_M)
        if interior:
            acc = _flat_k_loop(acc, x, skip, norm_ptr, w_ptr, rows, cols, kr, x_size, Cout, CONV, PROLOGUE,
                               APPLY, DOT_IEEE, BLOCK_K, REFLECT=False)
        else:
            acc = _flat_k_loop(acc, x, skip, norm_ptr, w_ptr, rows, cols, kr, x_size, Cout, CONV, PROLOGUE,
                               APPLY, DOT_IEEE, BLOCK_K, REFLECT=True)
    else:  # tap-outer: per step one reflected/upsampled row address per pixel, then a channel run
        if WRITE_SKIP:
            if pid_n == 0:  # the next skip x_k, stored once per pixel by the first channel tile
                _store_next_skip(x, skip, skip_out_ptr, norm_ptr, rows, kr, Cin, PROLOGUE, BLOCK_K)
        acc = _tap_outer_loop(acc, x, skip, norm_ptr, w_ptr, rows, cols, kr, x_size, Cout, CONV, PROLOGUE,
                              APPLY, PIX, DOT_IEEE, BLOCK_K)

    # ---- epilogue: bias, one store of the raw output, IN partial statistics of the stored values
    y_tile = _store_output(acc, b_ptr, y, rows, cols, Cout, Wout, HAS_BIAS, PIX)
    if HAS_STATS:  # stat tiles run over the image's pixels in order, the last one ragged
        t = pid_m * (BLOCK_M // STAT_M) + tl.arange(0, BLOCK_M // STAT_M)
        _store_stat_partials(y_tile, pmean_ptr, pm2_ptr, T, n, t, Hout * Wout - t * STAT_M, cols, Cout, STAT_M)


_AUTOTUNE = not _INTERPRET and os.environ.get("INSTYLE_AUTOTUNE") == "1"  # tests switch it on (stub bench)
_PINNED = not _INTERPRET  # tests switch it on under the interpreter to run the pinned tiles
_TUNE_KEY = ["Cin", "Cout", "M_BUCKET", "KH", "STRIDE", "UPSAMPLE", "FLAT_K", "PIX", "PADDED", "PHASE"]
_conv_in_tuned = _conv_in_kernel if _INTERPRET else triton.autotune(
    configs=_GPU_CONFIGS, key=_TUNE_KEY, prune_configs_by={"early_config_prune": _prune})(_conv_in_kernel)


def pinned_config(cin: int, cout: int, pix: int, flat: bool, itemsize: int) -> triton.Config:
    """The default GPU tile for one layer: BLOCK_N covers the output channels (8..128), BLOCK_K one
    channel run (32..64; 64 for the flat K of the RGB layer), BLOCK_M 128 rows, or 256 when N is narrow
    (more work per program). Stages: 3 (4 for BLOCK_K 32); 2 for fp32 operands (ieee FMA path) and for
    the flat-K layer, whose two pipelined loops (interior and reflected tiles) each hold their own
    buffers: at 256 x 32 x 64 fp16, 3 stages asked for 280 KB of shared memory, over sm_90's 227 KB
    (compile with bench/campaign/compile_check.py to see each tile's figure). Warps: 8 from 128 x 64 tiles up
    and for the flat K order; at 4 warps ptxas spilled 56-128 bytes per thread in the flat conv1 and in the phase
    convs whose prologue adds a skip (bench/campaign/chain_report.py, which fails on any spill)."""
    np2 = triton.next_power_of_2
    bn = min(128, max(8, np2(cout * pix)))
    bk = 64 if flat else min(64, max(32, np2(cin)))
    bm = 256 if bn <= 32 and not flat else 128
    warps = 8 if bm * bn >= 128 * 64 or bm == 256 or flat else 4
    stages = 2 if itemsize == 4 or flat else (4 if bk == 32 else 3)
    return triton.Config(dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk), num_warps=warps, num_stages=stages)


def autotune_winners() -> list[dict]:
    """The configs INSTYLE_AUTOTUNE=1 picked so far: key values -> tile, one dict per tuned layer shape."""
    cache = getattr(_conv_in_tuned, "cache", {}) if _AUTOTUNE else {}
    return [dict(key=[str(k) for k in key], **cfg.kwargs, num_warps=cfg.num_warps, num_stages=cfg.num_stages)
            for key, cfg in cache.items()]


# ----------------------------------------------------------------------------------------------------
# Launcher: all shape, layout and grid logic.


def window_channels(cin: int) -> int:
    """Channels per pixel of window_input's copy: WINDOW_C (4), which the kernel assumes; cin <= 4."""
    if cin > WINDOW_C.value:
        raise ValueError(f"the row-window order takes at most {WINDOW_C.value} input channels, not {cin}")
    return WINDOW_C.value


def window_k(kernel: int, cin: int) -> int:
    """K elements per kernel row in the row-window order: kernel x window_channels(cin), rounded up to a
    multiple of 16 (the extra ones meet zero weight rows). A multiple of 16 lets the compiler see that
    the K mask is constant over a vector, so the contiguous runs load as vectors."""
    return -(-kernel * window_channels(cin) // 16) * 16


def window_input(x: torch.Tensor, kernel: int, dtype: torch.dtype) -> torch.Tensor:
    """x [N, C, H, W] as the row-window K order reads it: a reflect-padded (kernel // 2) NHWC copy with
    C4 = window_channels(C) channels in dtype, its rows padded to a multiple of 4 pixels (16-element
    aligned row starts), returned as the overlapping view [N, window_k, H + 2 pad, W] whose channel k at
    pixel (h, w) is the copy's element k of the run starting at pixel (h, w). Everything a view element can
    reach besides the padded image (the channels past C, the row padding, a tail past the last row) is 0."""
    import torch.nn.functional as F

    N, C, H, W = x.shape
    pad, c4, kv = kernel // 2, window_channels(C), window_k(kernel, C)
    hp, wp = H + 2 * pad, W + 2 * pad
    wq = -(-wp // 4) * 4
    flat = torch.zeros(N * hp * wq * c4 + kv, device=x.device, dtype=dtype)
    copy = flat[:N * hp * wq * c4].view(N, hp, wq, c4)
    copy[:, :, :wp, :C] = F.pad(x, (pad,) * 4, mode="reflect").permute(0, 2, 3, 1)
    return flat.as_strided((N, kv, hp, W), (hp * wq * c4, 1, wq * c4, c4))


def pack_weight(weight: torch.Tensor, dtype: torch.dtype, pix: int = 1, window: bool = False) -> torch.Tensor:
    """Conv2d weight [Cout, Cin, KH, KW] -> GEMM layout [KH*(KW+pix-1)*Cin, pix*Cout].

    Row (ky*(KW+pix-1) + kx)*Cin + ci. pix > 1 (for tiny Cout): column d*Cout + co holds the weights of
    output pixel d of a horizontal group, shifted by d columns (zero where kx - d is outside the kernel).
    window (the row-window order): [KH * window_k, Cout], laid out like window_input's runs.
    """
    cout, cin, kh, kw = weight.shape
    if window:  # row ky * window_k + kx * C4 + c; channels past cin and rows past kw * C4 are zero
        assert pix == 1
        c4, kv = window_channels(cin), window_k(kw, cin)
        w = weight.new_zeros(kh, kv, cout)
        w[:, :kw * c4].view(kh, kw, c4, cout)[:, :, :cin] = weight.detach().permute(2, 3, 1, 0)
        return w.reshape(-1, cout).to(dtype).contiguous()
    w = weight.detach().permute(2, 3, 1, 0)  # [KH, KW, Cin, Cout]
    if pix > 1:
        shifted = w.new_zeros(kh, kw + pix - 1, cin, pix, cout)
        for d in range(pix):
            shifted[:, d:d + kw, :, d, :] = w
        w = shifted
    return w.reshape(-1, pix * cout).to(dtype).contiguous()


def out_size(size: int, kernel: int, stride: int = 1, upsample: bool = False) -> int:
    """Output size of (nearest x2 if upsample) -> reflect pad kernel // 2 -> conv(kernel, stride)."""
    size = 2 * size if upsample else size
    return (size + 2 * (kernel // 2) - kernel) // stride + 1


def conv_in(x: torch.Tensor, w_packed: torch.Tensor, bias: Optional[torch.Tensor] = None, *, kernel: int,
            stride: int = 1, upsample: bool = False, norm: Optional[torch.Tensor] = None, relu: bool = False,
            skip: Optional[torch.Tensor] = None, skip_out: Optional[torch.Tensor] = None, stats: bool = True,
            out: Optional[torch.Tensor] = None, pix: int = 1,
            window: bool = False) -> tuple[torch.Tensor, Optional[Stats]]:
    """y = conv(reflect_pad(up?(act(IN_pending(x)) + skip))) + bias, plus IN partial statistics of y.

    x: raw input, N x Cin x H x W (any strides; channels_last is the fast layout). norm: fp32 [N, 3, Cin]
    (mean, gamma*rstd, beta) from `finalize`, or None for no prologue normalize. skip_out (x's shape,
    stride-1 odd kernels only) receives the prologue's result. y: channels_last in w_packed's dtype
    unless `out` is given. pix: w_packed was packed with pack_weight(..., pix) (groups of pix output
    pixels per GEMM row; stride 1, no statistics, no skip_out). window: the row-window K order (w_packed from
    pack_weight(..., window=True); a raw input at stride 1: no norm, skip or upsampling). Returns (y, Stats
    or None).
    """
    if not x.is_cuda and not _INTERPRET:
        raise ValueError(f"conv_in: x is on {x.device}; the Triton kernels need a CUDA tensor "
                         "(or TRITON_INTERPRET=1 for the CPU interpreter)")
    N, Cin, H, W = x.shape
    K, Cout = w_packed.shape[0], w_packed.shape[1] // pix
    packed_k = kernel * window_k(kernel, Cin) if window else kernel * (kernel + pix - 1) * Cin
    assert K == packed_k and w_packed.is_contiguous(), (tuple(w_packed.shape), kernel, Cin)
    assert not window or (pix == 1 and stride == 1 and not upsample and norm is None and skip is None
                          and skip_out is None), "the row-window order reads a raw input at stride 1"
    assert pix == 1 or (stride == 1 and not upsample and not stats and skip_out is None)
    pad = kernel // 2
    if pad >= (2 * min(H, W) if upsample else min(H, W)):
        raise ValueError(f"conv_in: reflection padding {pad} needs an input larger than {H}x{W}")
    Ho, Wo = out_size(H, kernel, stride, upsample), out_size(W, kernel, stride, upsample)
    if out is None:
        out = torch.empty((N, Cout, Ho, Wo), device=x.device, dtype=w_packed.dtype,
                          memory_format=torch.channels_last)
    assert out.shape == (N, Cout, Ho, Wo), (tuple(out.shape), (N, Cout, Ho, Wo))
    if skip_out is not None:
        assert stride == 1 and not upsample and kernel % 2 == 1
        assert skip_out.shape == x.shape and (skip is None or skip.stride() == skip_out.stride())
    if norm is not None:
        assert norm.shape == (N, 3, Cin) and norm.dtype == torch.float32
        norm = norm.contiguous()
    assert skip is None or skip.shape == x.shape
    T = triton.cdiv(Ho * Wo, TUNING["stat_m"])
    pmean = torch.empty((N, T, Cout), device=x.device, dtype=torch.float32) if stats else None
    pm2 = torch.empty_like(pmean) if stats else None
    if window:
        x = window_input(x, kernel, w_packed.dtype)
    conv_in_op(x, w_packed, bias.float().contiguous() if bias is not None else None, norm, skip, skip_out, out,
               pmean, pm2, kernel, stride, upsample, relu, pix, window)
    return out, (Stats(pmean, pm2, Ho * Wo, TUNING["stat_m"]) if stats else None)


def _launch(x, w_packed, bias, norm, skip, skip_out, out, pmean, pm2, kernel, stride, upsample, relu, pix,
            window=False, phase=0):
    """Pick the K order and grid, launch once. Buffers are allocated and checked by `conv_in` (window: x is
    window_input's view, a KW*C4-channel input of a KH x 1 conv without padding)."""
    N, Cin, H, W = x.shape
    Cout, Ho, Wo = out.shape[1:]
    hw = Ho * Wo
    rows, cols = Ho * triton.cdiv(Wo, pix), pix * Cout  # the GEMM's M (per image) and N
    stat_m = TUNING["stat_m"]
    T = triton.cdiv(hw, stat_m)
    assert pmean is None or pmean.shape == (N, T, Cout)
    flat = Cin <= TUNING["flat_max_cin"] and skip_out is None and pix == 1 and not window and not phase
    assert not window or x.stride(3) == WINDOW_C.value, "the kernel takes window_input's pixel stride as given"
    s = skip if skip is not None else skip_out
    dummy = out  # never read or written when its flag is off
    args = (x, norm if norm is not None else dummy, skip if skip is not None else dummy,
            skip_out if skip_out is not None else dummy, w_packed, bias if bias is not None else dummy, out,
            pmean if pmean is not None else dummy, pm2 if pm2 is not None else dummy,
            Cin, H, W, Cout, Ho, Wo, T, *x.stride(), *(s.stride() if s is not None else (0, 0, 0, 0)),
            *out.stride(), max(hw, 1).bit_length())
    flags = dict(KH=kernel, KW=1 if window else kernel, STRIDE=stride, UPSAMPLE=upsample, NORM=norm is not None,
                 RELU=relu, HAS_SKIP=skip is not None, WRITE_SKIP=skip_out is not None, HAS_BIAS=bias is not None,
                 HAS_STATS=pmean is not None, FLAT_K=flat, DOT_IEEE=w_packed.dtype == torch.float32, PIX=pix,
                 PADDED=window, PHASE=phase, STAT_M=stat_m)
    if _AUTOTUNE:
        # same grid as below; the autotuner picks BLOCK_M/N/K, warps and stages per (channels, kernel, size)
        grid = lambda meta: (triton.cdiv(rows, meta["BLOCK_M"]), triton.cdiv(cols, meta["BLOCK_N"]), N)  # noqa: E731
        _conv_in_tuned[grid](*args, **flags)
    elif _PINNED:
        # grid: (pixel tiles of one image, output-channel tiles, images); the layer's measured tile
        # (kernels/tiles.json) or else its pinned one
        order = "flat" if flat else "window" if window else "phase" if phase else "taps"
        applied = (("norm", norm is not None), ("relu", relu), ("skip", skip is not None),
                   ("wskip", skip_out is not None))
        prologue = "+".join(name for name, on in applied if on)
        key = tile_table.layer_key("conv_in", cin=Cin, cout=Cout, kernel=kernel, stride=stride, upsample=upsample,
                                   order=order, pix=pix, prologue=prologue, dtype=w_packed.dtype)
        cfg = tile_table.pick(key, x.device, lambda: pinned_config(Cin, Cout, pix, flat, w_packed.element_size()))
        bm, bn, bk = (cfg.kwargs[k] for k in ("BLOCK_M", "BLOCK_N", "BLOCK_K"))
        assert bm % stat_m == 0
        _conv_in_kernel[(triton.cdiv(rows, bm), triton.cdiv(cols, bn), N)](
            *args, **flags, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, num_warps=cfg.num_warps,
            num_stages=cfg.num_stages)
    else:
        # interpreter: the same grid with one large tile (its cost is per op, not per element)
        t = TUNING
        bm, bn = t["block_m"], min(t["block_n"], max(8, triton.next_power_of_2(cols)))
        bk = min(t["block_k"], max(16, triton.next_power_of_2(kernel * kernel * Cin if flat else Cin)))
        assert bm % stat_m == 0
        _conv_in_kernel[(triton.cdiv(rows, bm), triton.cdiv(cols, bn), N)](
            *args, **flags, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, num_warps=t["num_warps"])


# One torch.library op (out-parameter style: it fills y, the next skip and the statistics partials), so
# torch.compile and CUDA graphs see a single node per layer.
@torch.library.custom_op("instyle::conv_in_", mutates_args=("skip_out", "out", "pmean", "pm2"))
def conv_in_op(x: torch.Tensor, w_packed: torch.Tensor, bias: Optional[torch.Tensor], norm: Optional[torch.Tensor],
               skip: Optional[torch.Tensor], skip_out: Optional[torch.Tensor], out: torch.Tensor,
               pmean: Optional[torch.Tensor], pm2: Optional[torch.Tensor], kernel: int, stride: int,
               upsample: bool, relu: bool, pix: int = 1, window: bool = False, phase: int = 0) -> None:
    _launch(x, w_packed, bias, norm, skip, skip_out, out, pmean, pm2, kernel, stride, upsample, relu, pix, window,
            phase)


@conv_in_op.register_fake
def _(x, w_packed, bias, norm, skip, skip_out, out, pmean, pm2, kernel, stride, upsample, relu, pix=1, window=False,
      phase=0):
    return None


def pack_phase_weights(weight: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """3x3 Conv2d weight [Cout, Cin, 3, 3] -> [4, 2*2*Cin, Cout]: phase 2a + b's summed 2x2 kernel
    (kernels/upsample_phase.py) in the GEMM layout, for conv_in_phases."""
    pw = phase_weights(weight.detach().float())
    return torch.stack([pack_weight(pw[a, b], dtype) for a in range(2) for b in range(2)])


def conv_in_phases(x: torch.Tensor, w_phases: torch.Tensor, bias: Optional[torch.Tensor] = None, *,
                   norm: Optional[torch.Tensor] = None, relu: bool = False, skip: Optional[torch.Tensor] = None,
                   stats: bool = True, out: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, Optional[list]]:
    """conv_in(x, ..., kernel=3, upsample=True) as four 2x2 launches on the stored input, one per output
    phase (a, b), each writing the strided view out[:, :, a::2, b::2]: 2.25x fewer MMA FLOPs, no upsampled
    or reflected addressing. w_phases from pack_phase_weights. Returns (y, the four phases' Stats, to
    merge with finalize_groups, or None)."""
    if not x.is_cuda and not _INTERPRET:
        raise ValueError(f"conv_in_phases: x is on {x.device}; the Triton kernels need a CUDA tensor "
                         "(or TRITON_INTERPRET=1 for the CPU interpreter)")
    N, Cin, H, W = x.shape
    Cout = w_phases.shape[2]
    assert w_phases.shape == (4, 4 * Cin, Cout) and w_phases.is_contiguous(), tuple(w_phases.shape)
    if out is None:
        out = torch.empty((N, Cout, 2 * H, 2 * W), device=x.device, dtype=w_phases.dtype,
                          memory_format=torch.channels_last)
    assert out.shape == (N, Cout, 2 * H, 2 * W), tuple(out.shape)
    if norm is not None:
        assert norm.shape == (N, 3, Cin) and norm.dtype == torch.float32
        norm = norm.contiguous()
    assert skip is None or skip.shape == x.shape
    stat_m = TUNING["stat_m"]
    T = triton.cdiv(H * W, stat_m)
    b = bias.float().contiguous() if bias is not None else None
    groups = []
    for p in range(4):
        pmean = torch.empty((N, T, Cout), device=x.device, dtype=torch.float32) if stats else None
        pm2 = torch.empty_like(pmean) if stats else None
        conv_in_op(x, w_phases[p], b, norm, skip, None, out[:, :, p // 2::2, p % 2::2], pmean, pm2, 2, 1, False,
                   relu, 1, False, p + 1)
        groups.append(Stats(pmean, pm2, H * W, stat_m))
    return out, (groups if stats else None)


# ----------------------------------------------------------------------------------------------------
# Plain-PyTorch reference (fp32): what one fused layer computes, written the unfused way.


def conv_in_ref(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None, *, stride: int = 1,
                upsample: bool = False, norm: Optional[torch.Tensor] = None, relu: bool = False,
                skip: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(y, a) in fp32: a = act((x - mean) * scale + beta) + skip (the prologue), y = conv(pad(up(a))) + bias.

    weight is the unpacked Conv2d weight [Cout, Cin, KH, KW]. The caller gets y's IN statistics from
    norm_params_ref(y, ...).
    """
    import torch.nn.functional as F

    a = x.float()
    if norm is not None:
        mean, scale, beta = (t[:, :, None, None] for t in norm.float().unbind(1))
        a = (a - mean) * scale + beta
    if relu:
        a = torch.relu(a)
    if skip is not None:
        a = a + skip.float()
    u = F.interpolate(a, scale_factor=2, mode="nearest") if upsample else a
    pad = weight.shape[-1] // 2
    y = F.conv2d(F.pad(u, (pad,) * 4, mode="reflect"), weight.float(),
                 None if bias is None else bias.float(), stride)
    return y, a
