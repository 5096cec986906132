"""The residual blocks' 3x3 convs through tensor descriptors (TMA on sm_90): y = conv(xp) + bias with IN partial
statistics of y, where xp is the input already normalized and reflect-padded, NHWC, in the run dtype.

Why a second path beside conv_in_gemm's. There every A tile is gathered with per-element addresses (reflection, the
pending IN applied in the prologue): CUDA-core work and register pressure that keep the wgmma pipeline from running
full (the H100 profile of 2026-11-26: the 3x3 convs at ~1/3 of their floor). Here the input is written once,
normalized and padded, by kernels/conv_in_normalize.in_apply(..., pad=1), so every (tap, channel block) of a tile
is one rectangular box of that buffer: a TMA load with no address math, no masks (the descriptor zero-fills past
the buffer's end) and no prologue; the MMAs read it straight from shared memory. The cost is one more pass over the
activation (the normalize's write and this read, ~2 x 2 B x C per pixel), which the profile says the freed tensor
cores pay back; a GPU run (bench/campaign/verify.py) decides.

Layout. xp is N x C x (H + 2) x (W + 2), channels_last, contiguous: as a 2-D array [N * Hp * Wp, C] the padded
pixel (n, h, w) is row (n * Hp + h) * Wp + w. An M tile is BLOCK_M output pixels of one output row (oh, ow0 ..),
so tap (ky, kx) reads rows (n * Hp + oh + ky) * Wp + ow0 + kx + [0, BLOCK_M): a box. Rows past the output row's
end read the next padded row (or zeros): they are never stored and never counted. The weight is conv_in's
packed [KH * KW * Cin, Cout] (row tap * Cin + ci), read as [BLOCK_K, BLOCK_N] boxes; a channel block past Cin
is zero-filled in A, so its (next tap's) weight rows add nothing.

Statistics. M tiles stay within one output row, so the partials are per row: each row is a group of Wout
pixels in cdiv(Wout, stat_m) tiles (Stats.groups = Hout), merged by the same finalize kernel as conv_in's.

The reference is conv_tma_ref (F.conv2d of the padded input) at the end of this file.
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor

from instyle.interpreter import interpreting

from . import tile_table
from .conv_in_gemm import _mma, _store_output, _store_stat_partials
from .conv_in_normalize import Stats

_INTERPRET = interpreting()
_PINNED = not _INTERPRET  # the census (bench/campaign/census.py) switches it on under the interpreter
GPU_STAT_M = 128
# interpreter: tiles as large as the layer (its cost is per op, not per element); tests shrink them
TUNING = dict(block_m=256, block_k=64, block_n=128, stat_m=64, num_warps=1) if _INTERPRET else dict(stat_m=GPU_STAT_M)


@triton.jit
def _conv_tma_kernel(
    x_desc,                     # padded input as [N * Hp * Wp, Cin], box [BLOCK_M, BLOCK_K]
    w_desc,                     # packed weights [KH * KW * Cin, Cout], box [BLOCK_K, BLOCK_N]
    b_ptr,                      # fp32 bias [Cout] (HAS_BIAS)
    y_ptr,                      # raw output, logical [N, Cout, Hout, Wout], any strides (sy*)
    pmean_ptr, pm2_ptr,         # fp32 [N, T, Cout] out: per-row stat tiles' mean and M2 of y (HAS_STATS)
    Cin, Hp, Wp, Cout, Hout, Wout, T,
    syn, syc, syh, syw,
    KH: tl.constexpr, KW: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_STATS: tl.constexpr, DOT_IEEE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, STAT_M: tl.constexpr,
):
    """One program: BLOCK_M output pixels of one output row of image n x BLOCK_N output channels."""
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    n = tl.program_id(2)
    tiles_per_row = tl.cdiv(Wout, BLOCK_M)
    oh = pid_m // tiles_per_row
    ow0 = (pid_m % tiles_per_row) * BLOCK_M
    n0 = pid_n * BLOCK_N
    # row of padded pixel (n, oh, ow0): TMA coordinates are 32-bit, as is this (the buffer has < 2^31 pixels)
    row0 = (n * Hp + oh) * Wp + ow0
    NUM_CB = tl.cdiv(Cin, BLOCK_K)
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    # one flat loop over (tap, channel block), as conv_in's tap-outer loop: the pipeliner sees one loop
    for step in range(0, KH * KW * NUM_CB):
        tap = step // NUM_CB
        c0 = (step - tap * NUM_CB) * BLOCK_K
        a = x_desc.load([row0 + (tap // KW) * Wp + tap % KW, c0])
        w = w_desc.load([tap * Cin + c0, n0])
        acc = _mma(acc, a, w, DOT_IEEE)

    # ---- epilogue (conv_in's): bias, one store of the raw output, per-row IN partial statistics
    ow = ow0 + tl.arange(0, BLOCK_M)
    rows = (n.to(tl.int64), oh + tl.zeros([BLOCK_M], tl.int32), ow, ow < Wout)
    co = n0 + tl.arange(0, BLOCK_N)
    cols = (co, co, co < Cout)
    y_tile = _store_output(acc, b_ptr, (y_ptr, syn, syc, syh, syw), rows, cols, Cout, Wout, HAS_BIAS, 1)
    if HAS_STATS:  # row oh is group oh: its tiles are oh * cdiv(Wout, STAT_M) + (ow0 // STAT_M) + s
        tr = ow0 // STAT_M + tl.arange(0, BLOCK_M // STAT_M)
        _store_stat_partials(y_tile, pmean_ptr, pm2_ptr, T, n.to(tl.int64), oh * tl.cdiv(Wout, STAT_M) + tr,
                             Wout - tr * STAT_M, cols, Cout, STAT_M)


def pinned_config(cin: int, cout: int, itemsize: int) -> triton.Config:
    """The GPU tile: 128 pixels of a row x all output channels (<= 128) x 64 input channels, 4 stages of
    (16 + 16) KB at 128 channels in fp16; 2 stages for fp32 operands."""
    np2 = triton.next_power_of_2
    bn = min(128, max(16, np2(cout)))
    bk = min(64, max(16, np2(cin)))
    return triton.Config(dict(BLOCK_M=128, BLOCK_N=bn, BLOCK_K=bk), num_warps=8 if bn >= 128 else 4,
                         num_stages=2 if itemsize == 4 else 4)


def supports(cin: int, cout: int, dtype: torch.dtype) -> bool:
    """Whether the descriptors' 16-byte stride rule holds: channel rows of Cin and Cout elements."""
    size = torch.empty((), dtype=dtype).element_size()
    return (cin * size) % 16 == 0 and (cout * size) % 16 == 0


def conv_tma(xp: torch.Tensor, w_packed: torch.Tensor, bias: Optional[torch.Tensor] = None, *, kernel: int = 3,
             stats: bool = True, out: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, Optional[Stats]]:
    """y = conv(xp) + bias without padding (stride 1), xp reflect-padded by kernel // 2 (in_apply(..., pad=1)),
    N x Cin x Hp x Wp channels_last contiguous; w_packed from conv_in_gemm.pack_weight. Returns (y channels_last
    in w_packed's dtype unless `out` is given, Stats with one group per output row or None)."""
    if not xp.is_cuda and not _INTERPRET:
        raise ValueError(f"conv_tma: x is on {xp.device}; the Triton kernels need a CUDA tensor "
                         "(or TRITON_INTERPRET=1 for the CPU interpreter)")
    N, Cin, Hp, Wp = xp.shape
    Cout = w_packed.shape[1]
    Ho, Wo = Hp - 2 * (kernel // 2), Wp - 2 * (kernel // 2)
    assert xp.is_contiguous(memory_format=torch.channels_last) and xp.dtype == w_packed.dtype, (xp.stride(), xp.dtype)
    assert w_packed.shape[0] == kernel * kernel * Cin and w_packed.is_contiguous(), tuple(w_packed.shape)
    assert supports(Cin, Cout, xp.dtype), (Cin, Cout, xp.dtype)
    assert N * Hp * Wp < 2**31
    if out is None:
        out = torch.empty((N, Cout, Ho, Wo), device=xp.device, dtype=w_packed.dtype,
                          memory_format=torch.channels_last)
    assert out.shape == (N, Cout, Ho, Wo), (tuple(out.shape), (N, Cout, Ho, Wo))
    if not _PINNED:
        t = TUNING
        bm, bn = min(t["block_m"], max(16, triton.next_power_of_2(Wo))), min(t["block_n"], triton.next_power_of_2(Cout))
        bk, warps, stages = min(t["block_k"], triton.next_power_of_2(Cin)), t["num_warps"], 1
    else:  # the measured tile (kernels/tiles.json) or else the pinned one
        key = tile_table.layer_key("conv_tma", cin=Cin, cout=Cout, kernel=kernel, dtype=w_packed.dtype)
        cfg = tile_table.pick(key, xp.device, lambda: pinned_config(Cin, Cout, w_packed.element_size()))
        bm, bn, bk = (cfg.kwargs[k] for k in ("BLOCK_M", "BLOCK_N", "BLOCK_K"))
        warps, stages = cfg.num_warps, cfg.num_stages
    stat_m = min(TUNING["stat_m"], bm)
    T = Ho * triton.cdiv(Wo, stat_m)
    pmean = torch.empty((N, T, Cout), device=xp.device, dtype=torch.float32) if stats else None
    pm2 = torch.empty_like(pmean) if stats else None
    conv_tma_op(xp, w_packed, bias.float().contiguous() if bias is not None else None, out, pmean, pm2, kernel,
                bm, bn, bk, stat_m, warps, stages)
    return out, (Stats(pmean, pm2, Wo, stat_m, groups=Ho) if stats else None)


def descriptors(xp: torch.Tensor, w_packed: torch.Tensor, bm: int, bn: int, bk: int):
    """The two host-side tensor descriptors: xp as [N * Hp * Wp, Cin] in [bm, bk] boxes, w_packed in [bk, bn]."""
    N, Cin, Hp, Wp = xp.shape
    x2 = xp.permute(0, 2, 3, 1).reshape(N * Hp * Wp, Cin)  # a view: xp is channels_last contiguous
    return (TensorDescriptor(x2, list(x2.shape), list(x2.stride()), [bm, bk]),
            TensorDescriptor(w_packed, list(w_packed.shape), list(w_packed.stride()), [bk, bn]))


# A torch.library op like conv_in's: one opaque node for torch.compile and CUDA graphs (the descriptors are
# built here, on the host, so a captured graph replays them with the buffers it was captured with).
@torch.library.custom_op("instyle::conv_tma_", mutates_args=("out", "pmean", "pm2"))
def conv_tma_op(xp: torch.Tensor, w_packed: torch.Tensor, bias: Optional[torch.Tensor], out: torch.Tensor,
                pmean: Optional[torch.Tensor], pm2: Optional[torch.Tensor], kernel: int, bm: int, bn: int, bk: int,
                stat_m: int, warps: int, stages: int) -> None:
    N, Cin, Hp, Wp = xp.shape
    Cout, Ho, Wo = out.shape[1:]
    x_desc, w_desc = descriptors(xp, w_packed, bm, bn, bk)
    T = Ho * triton.cdiv(Wo, stat_m)
    dummy = out  # never read or written when its flag is off
    # grid: (row tiles of every output row, output-channel tiles, images)
    _conv_tma_kernel[(Ho * triton.cdiv(Wo, bm), triton.cdiv(Cout, bn), N)](
        x_desc, w_desc, bias if bias is not None else dummy, out, pmean if pmean is not None else dummy,
        pm2 if pm2 is not None else dummy, Cin, Hp, Wp, Cout, Ho, Wo, T, *out.stride(),
        KH=kernel, KW=kernel, HAS_BIAS=bias is not None, HAS_STATS=pmean is not None,
        DOT_IEEE=w_packed.dtype == torch.float32, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, STAT_M=stat_m,
        num_warps=warps, num_stages=stages)


@conv_tma_op.register_fake
def _(xp, w_packed, bias, out, pmean, pm2, kernel, bm, bn, bk, stat_m, warps, stages):
    return None


# ----------------------------------------------------------------------------------------------------
# Plain-PyTorch reference (fp32).


def conv_tma_ref(xp: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """What conv_tma computes, in fp32: the unpadded conv of the padded input (weight: Conv2d's [Cout, Cin, KH, KW])."""
    import torch.nn.functional as F

    return F.conv2d(xp.float(), weight.float(), None if bias is None else bias.float())
