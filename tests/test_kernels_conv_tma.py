"""kernels/conv_tma.py under the interpreter: the residual 3x3 conv read through tensor descriptors from a padded,
normalized copy (conv_in_normalize.in_apply(..., pad=1)) against F.pad + F.conv2d of the normalized input (the
reference, conv_in_gemm.conv_in_ref) and the float64 statistics of its own output; odd sizes, rows that end in
a ragged tile, batch 2, per-sample (multi-style) gamma/beta, channel counts that are not a power of two; and the
kernel compiled for sm_90 with TMA loads and wgmma in its SASS."""
import pytest
import torch
import torch.nn.functional as F
from sm90 import assert_compiles_for_sm90
from tolerances import assert_derived_close

from instyle.interpreter import interpreting
from instyle.kernels import conv_in_gemm as CI
from instyle.kernels import conv_in_normalize as CN
from instyle.kernels import conv_tma as CT

interpreter = pytest.mark.skipif(not interpreting(), reason="runs Triton's CPU interpreter (TRITON_INTERPRET=1)")
CONV_ATOL = {torch.float32: 2e-5, torch.float16: 2e-3}


def _id(v):
    return str(v).removeprefix("torch.") if isinstance(v, torch.dtype) else None


def normalized_input(n, c, h, w, dtype, seed=0, per_sample=False):
    """A raw activation with channel offsets, its norm params (per sample when the styles differ) and a skip."""
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(n, c, h, w, generator=g) * 3 + torch.randn(1, c, 1, 1, generator=g) * 5).to(dtype)
    gamma = (torch.rand(n if per_sample else 1, c, generator=g) + 0.5).expand(n, c)
    beta = torch.randn(n if per_sample else 1, c, generator=g).expand(n, c)
    base = CN.norm_params_ref(x, torch.ones(c), torch.zeros(c))  # mean and rstd from the pixels
    norm = torch.stack([base[:, 0], base[:, 1] * gamma, beta], 1).contiguous()
    skip = torch.randn(n, c, h, w, generator=g).to(dtype)
    return x.contiguous(memory_format=torch.channels_last), norm, skip


@interpreter
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=_id)
@pytest.mark.parametrize("relu,skip,per_sample", [(True, False, False), (False, True, True)],
                         ids=["relu", "skip-per-sample"])
def test_padded_normalize_vs_reference(monkeypatch, dtype, relu, skip, per_sample):
    """in_apply(..., pad=1): the border rows and columns are the reflected normalized pixels, 5 x 7, ragged tiles."""
    monkeypatch.setitem(CN.TUNING, "block_hw", 16)
    monkeypatch.setitem(CN.TUNING, "block_c", 8)
    x, norm, s = normalized_input(2, 12, 5, 7, dtype, per_sample=per_sample)
    s = s if skip else None
    y = CN.in_apply(x, norm, relu=relu, skip=s, pad=1)
    assert y.shape == (2, 12, 7, 9) and y.is_contiguous(memory_format=torch.channels_last)
    ref = (x.float() - norm[:, 0, :, None, None]) * norm[:, 1, :, None, None] + norm[:, 2, :, None, None]
    ref = torch.relu(ref) if relu else ref
    ref = ref + s.float() if skip else ref
    ref = F.pad(ref, (1, 1, 1, 1), mode="reflect")
    torch.testing.assert_close(y.float(), ref, rtol=0, atol=2 * torch.finfo(dtype).eps * ref.abs().max().item())
    torch.testing.assert_close(y, CN.in_apply_ref(x, norm, relu=relu, skip=s, pad=1), rtol=0, atol=0)


@interpreter
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=_id)
@pytest.mark.parametrize("n,cin,cout,h,w,block_m,bias", [
    (2, 16, 24, 5, 7, 4, False),   # batch 2, Cout not a power of two, every row two tiles (4 + 3 ragged)
    (1, 32, 16, 7, 5, 8, True),    # one tile per row wider than the row (5 of 8), bias, two channel blocks
    (1, 8, 8, 3, 19, 16, False),   # a row wider than the tile, the last tile ragged (19 = 16 + 3)
], ids=["batch2", "wide-tile-bias", "long-row"])
def test_conv_and_statistics_vs_reference(monkeypatch, dtype, n, cin, cout, h, w, block_m, bias):
    """y and its IN params (through the finalize kernel, one group per output row) against F.conv2d of the
    normalized input and the float64 statistics of y itself; BLOCK_K 8 runs several channel blocks per tap."""
    monkeypatch.setitem(CT.TUNING, "block_m", block_m)
    monkeypatch.setitem(CT.TUNING, "block_k", 8)
    monkeypatch.setitem(CT.TUNING, "stat_m", 2)
    x, norm, _ = normalized_input(n, cin, h, w, dtype, seed=cin + w)
    g = torch.Generator().manual_seed(7)
    weight = torch.randn(cout, cin, 3, 3, generator=g) / (3 * cin ** 0.5)
    b = torch.randn(cout, generator=g) if bias else None
    xp = CN.in_apply(x, norm, relu=True, pad=1)
    y, stats = CT.conv_tma(xp, CI.pack_weight(weight, dtype), b)
    assert y.shape == (n, cout, h, w) and y.dtype == dtype and stats.groups == h
    ref = CT.conv_tma_ref(xp, weight.to(dtype), b)  # on the normalized input as stored (rounded to dtype)
    a = xp.float()[:, :, 1:-1, 1:-1]  # and the generator's way: reflect-pad the interior, conv
    torch.testing.assert_close(ref, CI.conv_in_ref(a, weight.to(dtype), b)[0], rtol=0, atol=1e-4)
    lowp = ref
    assert_derived_close("conv_tma", y.float(), ref, lowp.to(dtype), dtype, atol=CONV_ATOL)

    gamma = torch.rand(n, cout, generator=g) + 0.5  # per sample, as a multi-style batch has them
    beta = torch.randn(n, cout, generator=g)
    params = CN.finalize(stats, gamma, beta)
    yd = y.double()
    mean, var = yd.mean((2, 3)), yd.var((2, 3), correction=0)
    exact = torch.stack([mean, torch.rsqrt(var + 1e-5) * gamma.double(), beta.double()], 1)
    torch.testing.assert_close(params.double(), exact, rtol=2e-5, atol=2e-5 * max(1.0, mean.abs().max().item()))
    torch.testing.assert_close(params, CN.finalize_ref(stats, gamma, beta), rtol=1e-5, atol=1e-5)


@interpreter
def test_gpu_tile_path_several_stat_tiles_per_program(monkeypatch):
    """The pinned (GPU) branch: its tile through tile_table.pick, 128-pixel row tiles holding two 64-pixel stat tiles
    (stat_m 64 here), a 150-pixel row (a full tile, then 22 pixels), batch 2; statistics against float64."""
    from instyle.kernels import tile_table

    monkeypatch.setattr(CT, "_PINNED", True)
    monkeypatch.setitem(CT.TUNING, "stat_m", 64)
    x, norm, _ = normalized_input(2, 16, 2, 150, torch.float32, seed=3)
    weight = torch.randn(16, 16, 3, 3, generator=torch.Generator().manual_seed(1)) / 12
    xp = CN.in_apply(x, norm, pad=1)
    with tile_table.recording() as picks:
        y, stats = CT.conv_tma(xp, CI.pack_weight(weight, torch.float32))
    assert [(key, tile["BLOCK_M"]) for key, tile, _ in picks] == [("conv_tma k3 s1 16>16 taps float32", 128)]
    assert stats.stat_m == 64 and stats.pmean.shape == (2, 2 * 3, 16)  # per row: 64 + 64 + 22 pixels
    ref = CT.conv_tma_ref(xp, weight)
    torch.testing.assert_close(y, ref, rtol=0, atol=2e-5 * ref.abs().max().item())
    ones, zeros = torch.ones(16), torch.zeros(16)
    yd = y.double()
    rstd = torch.rsqrt(yd.var((2, 3), correction=0) + 1e-5)
    exact = torch.stack([yd.mean((2, 3)), rstd, zeros.double().expand(2, 16)], 1)
    torch.testing.assert_close(CN.finalize(stats, ones, zeros).double(), exact, rtol=2e-5, atol=2e-5)


def test_supports_needs_16_byte_channel_rows():
    assert CT.supports(32, 128, torch.float16) and CT.supports(4, 4, torch.float32)
    assert not CT.supports(3, 32, torch.float16) and not CT.supports(32, 12, torch.float16)


_COMPILE_SM90 = """
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from instyle.kernels import conv_tma as CT

k = CT._conv_tma_kernel
for dt, cin, cout in [("fp16", 128, 128), ("bf16", 32, 32), ("fp16", 64, 64)]:
    cfg = CT.pinned_config(cin, cout, 2)
    bm, bn, bk = (cfg.kwargs[n] for n in ("BLOCK_M", "BLOCK_N", "BLOCK_K"))
    consts = dict(KH=3, KW=3, HAS_BIAS=False, HAS_STATS=True, DOT_IEEE=False, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk,
                  STAT_M=128)
    sig = {n: "constexpr" if n in consts else "i32" for n in k.arg_names}
    sig.update(x_desc=f"tensordesc<{dt}[{bm},{bk}]>", w_desc=f"tensordesc<{dt}[{bk},{bn}]>", b_ptr="*fp32",
               y_ptr="*" + dt, pmean_ptr="*fp32", pm2_ptr="*fp32")
    c = triton.compile(ASTSource(k, sig, consts), target=GPUTarget("cuda", 90, 32),
                       options=dict(num_warps=cfg.num_warps, num_stages=cfg.num_stages))
    ptx = c.asm["ptx"]
    assert "cp.async.bulk.tensor" in ptx, "no TMA load in the PTX"
    assert "wgmma.mma_async" in ptx, "no wgmma in the PTX"
print("compiled")
"""


def test_kernel_compiles_for_sm90_with_tma_and_wgmma():
    """The descriptor loads lower to TMA (cp.async.bulk.tensor) and the dots to wgmma for the pinned tiles."""
    assert_compiles_for_sm90(_COMPILE_SM90)
