"""instyle.kernels.instance_norm: the fused Triton op against its plain-PyTorch _ref and F.instance_norm.

Tolerances are derived (flash-attention style): the fused result must satisfy
    max|fused - ref_fp32| <= 2 * max|torch_lowp - ref_fp32| + atol[dtype] * max(1, max|ref_fp32|)
where ref_fp32 is instance_norm_ref on fp32 copies of the inputs and torch_lowp is F.instance_norm
(+ relu, + residual) run in the input dtype. Without CUDA the kernels run in the Triton interpreter.
"""
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from sm90 import assert_compiles_for_sm90
from tolerances import ATOL, assert_derived_close

from instyle.kernels import instance_norm, instance_norm_ref
from instyle.kernels import instance_norm_forward as IN

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
LAYOUTS = ["nchw", "channels_last"]
SPLIT_SHAPE = (1, 2, 181, 191)  # 34571 positions per plane: over the default split_min_hw
SHAPES = [(1, 3, 17, 33), (2, 5, 1, 1), (2, 4, 31, 29)]
# (weight, bias, relu, residual)
FLAGS = [
    (False, False, False, False),
    (True, True, False, False),
    (True, True, True, False),
    (True, True, False, True),   # Johnson residual block: IN(conv(...)) + x
    (False, False, True, True),
    (True, True, True, True),
]


def _id(v):
    if isinstance(v, torch.dtype):
        return str(v).removeprefix("torch.")
    if isinstance(v, tuple) and all(isinstance(e, bool) for e in v):
        return "+".join(n for n, on in zip(("w", "b", "relu", "res"), v) if on) or "plain"
    if isinstance(v, tuple):
        return "x".join(map(str, v))
    return None


def _fmt(layout):
    return torch.channels_last if layout == "channels_last" else torch.contiguous_format


def make_inputs(shape, dtype, layout, flags, seed=0, per_sample=False):
    """x with per-channel offsets and scales (so means are not ~0), weight, bias, residual (or None).
    per_sample: weight and bias of shape [N, C] (conditional instance norm), else [C]."""
    g = torch.Generator().manual_seed(seed)
    N, C = shape[:2]
    x = torch.randn(shape, generator=g) * (0.5 + 2 * torch.rand(1, C, 1, 1, generator=g)) \
        + 4 * torch.randn(1, C, 1, 1, generator=g)
    x = x.to(dtype).contiguous(memory_format=_fmt(layout))
    has_w, has_b, relu, has_r = flags
    affine = (N, C) if per_sample else (C,)
    w = (1 + 0.5 * torch.randn(affine, generator=g)).to(dtype) if has_w else None
    b = (0.5 * torch.randn(affine, generator=g)).to(dtype) if has_b else None
    r = torch.randn(shape, generator=g).to(dtype).contiguous(memory_format=_fmt(layout)) if has_r else None
    return x, w, b, r, ("relu" if relu else None)


def torch_lowp(x, w, b, activation=None, residual=None, eps=1e-5):
    """F.instance_norm (+ relu, + residual) in the input dtype; None where torch refuses (1x1 planes)."""
    if x.shape[2] * x.shape[3] == 1:
        return None
    if (w is not None and w.dim() == 2) or (b is not None and b.dim() == 2):  # per-sample affine
        y = F.instance_norm(x, eps=eps)
        y = y * w[:, :, None, None] if w is not None else y
        y = y + b[:, :, None, None] if b is not None else y
    else:
        y = F.instance_norm(x, weight=w, bias=b, eps=eps)
    if activation == "relu":
        y = torch.relu(y)
    return y + residual if residual is not None else y


def ref_fp32(x, w, b, activation=None, residual=None, eps=1e-5):
    up = lambda t: None if t is None else t.float()  # noqa: E731
    return instance_norm_ref(up(x), up(w), up(b), eps=eps, activation=activation, residual=up(residual))


def run_with_grads(fn, x, w, b, r, activation, dy, upcast=False):
    """y and the grads of (x, w, b, r) given dy, via autograd; optionally on fp32 copies."""
    leaves = [None if t is None else (t.float() if upcast else t).detach().clone().requires_grad_()
              for t in (x, w, b, r)]
    y = fn(leaves[0], leaves[1], leaves[2], activation=activation, residual=leaves[3])
    present = [t for t in leaves if t is not None]
    grads = iter(torch.autograd.grad(y, present, dy.to(y.dtype)))
    return y, [None if t is None else next(grads) for t in leaves]


def fused_fn(x, w, b, activation=None, residual=None):
    return instance_norm(x, w, b, activation=activation, residual=residual)


def check_against_refs(shape, dtype, layout, flags, seed=0, per_sample=False):
    x, w, b, r, act = make_inputs(shape, dtype, layout, flags, seed, per_sample)
    dy = torch.randn(shape, generator=torch.Generator().manual_seed(seed + 1))
    y, grads = run_with_grads(fused_fn, x, w, b, r, act, dy.to(dtype))
    y32, grads32 = run_with_grads(ref_fp32, x, w, b, r, act, dy, upcast=True)
    if shape[2] * shape[3] > 1:
        yl, gradsl = run_with_grads(torch_lowp, x, w, b, r, act, dy.to(dtype))
    else:
        yl, gradsl = None, [None] * 4
    assert y.dtype == dtype and y.shape == x.shape
    assert y.is_contiguous(memory_format=_fmt(layout)), f"y strides {y.stride()} lost x's memory format"
    assert_derived_close("y", y, y32, yl, dtype)
    if yl is not None:  # directly against F.instance_norm too: within 3x torch's own error + atol
        base = (yl.float() - y32).abs().max().item()
        direct = (y.float() - yl.float()).abs().max().item()
        assert direct <= 3 * base + ATOL[dtype] * max(1.0, y32.abs().max().item()), (direct, base)
    for name, g, g32, gl, t in zip(("dx", "dw", "db", "dresidual"), grads, grads32, gradsl, (x, w, b, r)):
        if t is None:
            continue
        assert g.dtype == t.dtype, f"{name} dtype {g.dtype} != {t.dtype}"
        assert_derived_close(name, g, g32, gl, dtype)
    return y


@pytest.mark.interpreter
@pytest.mark.parametrize("flags", FLAGS, ids=_id)
@pytest.mark.parametrize("shape", SHAPES, ids=_id)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=_id)
def test_forward_backward_vs_refs(dtype, layout, shape, flags):
    check_against_refs(shape, dtype, layout, flags)


@pytest.mark.interpreter
@pytest.mark.parametrize("flags", [(False, False, False, False), (True, True, True, True)], ids=_id)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=_id)
def test_large_plane_takes_split_path(dtype, layout, flags):
    """Default tuning: SPLIT_SHAPE is split into several chunks, the small shapes are not."""
    cl = layout == "channels_last"
    p = IN.plan(SPLIT_SHAPE[1], SPLIT_SHAPE[2] * SPLIT_SHAPE[3], channels_last=cl)
    assert p.split and p.num_chunks > 1
    assert not IN.plan(4, 31 * 29, channels_last=cl).split
    check_against_refs(SPLIT_SHAPE, dtype, layout, flags)


@pytest.mark.interpreter
@pytest.mark.parametrize("split", [False, True], ids=["fused", "split"])
@pytest.mark.parametrize("flags", [(True, True, True, True), (True, True, False, False)], ids=_id)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=_id)
def test_per_sample_affine(monkeypatch, dtype, layout, flags, split):
    """Conditional IN: weight and bias [N, C], each sample its own pair; dw, db come back per sample."""
    if split:
        monkeypatch.setitem(IN.TUNING, "split_min_hw", 1)
        monkeypatch.setitem(IN.TUNING, "chunk_elems", 256)
        monkeypatch.setitem(IN.TUNING, "tile", 128)
    check_against_refs((3, 5, 19, 23), dtype, layout, flags, per_sample=True)


def test_per_sample_affine_shape_errors():
    x = torch.randn(2, 3, 4, 4)
    with pytest.raises(ValueError, match=r"\(3,\) or, per sample, \(2, 3\)"):
        instance_norm(x, torch.ones(3, 3), torch.zeros(3, 3))
    with pytest.raises(ValueError, match="shapes differ"):
        instance_norm(x, torch.ones(2, 3), torch.zeros(3))


@pytest.fixture
def force_split(monkeypatch):
    """Split every plane into 256-element chunks of <= 128-element tiles: several chunks, ragged last chunk."""
    monkeypatch.setitem(IN.TUNING, "split_min_hw", 1)
    monkeypatch.setitem(IN.TUNING, "chunk_elems", 256)
    monkeypatch.setitem(IN.TUNING, "tile", 128)


@pytest.mark.interpreter
@pytest.mark.parametrize("flags", [(True, True, True, True), (True, False, False, True)], ids=_id)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=_id)
def test_forced_split_path(force_split, dtype, layout, flags):
    shape = (2, 3, 19, 29)
    p = IN.plan(shape[1], shape[2] * shape[3], channels_last=layout == "channels_last")
    assert p.split and p.num_chunks > 1 and p.chunk_hw > p.block_hw
    check_against_refs(shape, dtype, layout, flags)


@pytest.mark.interpreter
@pytest.mark.parametrize("split", [False, True], ids=["fused", "split"])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=_id)
def test_constant_planes_give_bias_exactly(monkeypatch, dtype, layout, split):
    if split:
        monkeypatch.setitem(IN.TUNING, "split_min_hw", 1)
        monkeypatch.setitem(IN.TUNING, "chunk_elems", 256)
    C = 4
    levels = torch.tensor([0.1, -1234.5, 6e4 if dtype != torch.bfloat16 else 3e38, 0.0])
    x = levels.view(1, C, 1, 1).expand(2, C, 9, 13).to(dtype).contiguous(memory_format=_fmt(layout))
    w = torch.tensor([2.0, -3.0, 0.5, 1.0], dtype=dtype)
    b = torch.tensor([0.3, -2.0, 7.0, -0.25], dtype=dtype)
    x.requires_grad_()
    y = instance_norm(x, w, b)
    assert torch.equal(y, b.view(1, C, 1, 1).expand_as(y)), y[0, :, 0, 0]
    assert torch.equal(instance_norm(x, w, b, activation="relu"), torch.relu(b).view(1, C, 1, 1).expand_as(y))
    r = torch.randn(y.shape).to(dtype)
    # b + r rounds once to dtype; within one ulp because the interpreter casts fp32 -> bf16 by truncation
    torch.testing.assert_close(instance_norm(x, w, b, residual=r).float(), b.float().view(1, C, 1, 1) + r.float(),
                               rtol=torch.finfo(dtype).eps, atol=0)
    (dx,) = torch.autograd.grad(y, x, torch.randn(y.shape).to(dtype))
    assert dx.isfinite().all()


@pytest.mark.interpreter
@pytest.mark.parametrize("layout", LAYOUTS)
def test_fp16_large_magnitude_stays_finite(layout):
    g = torch.Generator().manual_seed(0)
    x = torch.empty(2, 3, 23, 19).uniform_(-6e4, 6e4, generator=g)
    x[:, 1] = 6e4 - 64 * torch.randint(0, 3, (2, 23, 19), generator=g)  # huge mean, tiny spread
    x = x.half().contiguous(memory_format=_fmt(layout))
    w = torch.tensor([1.0, 2.0, 0.5]).half()
    b = torch.tensor([0.0, 1.0, -1.0]).half()
    xg = x.clone().requires_grad_()
    y = instance_norm(xg, w, b, activation="relu", residual=x / 1024)
    assert y.isfinite().all()
    y32 = ref_fp32(x, w, b, activation="relu", residual=x / 1024)
    assert_derived_close("y", y, y32, None, torch.float16)
    (dx,) = torch.autograd.grad(y, xg, torch.ones_like(y))
    assert dx.isfinite().all()


@pytest.mark.interpreter
def test_non_dense_views():
    g = torch.Generator().manual_seed(0)
    base = torch.randn(2, 6, 12, 20, generator=g)
    views = {
        "channel slice (NCHW)": base[:, 1:4],
        "channel slice (channels_last)": base.contiguous(memory_format=torch.channels_last)[:, 1:4],
        "strided W (copied)": base[:, :, :, ::2],
        "transposed HW (copied)": base.transpose(2, 3),
    }
    for name, x in views.items():
        y = instance_norm(x, residual=x, activation="relu")
        torch.testing.assert_close(y, instance_norm_ref(x, residual=x, activation="relu"), atol=1e-5, rtol=1e-5,
                                   msg=lambda m: f"{name}: {m}")  # noqa: B023
    # gradients arriving as expanded (stride-0) tensors, as from y.sum()
    x = base.clone().requires_grad_()
    instance_norm(x, activation="relu").sum().backward()
    xr = base.clone().requires_grad_()
    instance_norm_ref(xr, activation="relu").sum().backward()
    torch.testing.assert_close(x.grad, xr.grad, atol=1e-5, rtol=1e-4)


def test_bad_arguments_raise_one_clear_line():
    x = torch.randn(1, 3, 4, 4)
    cases = [
        (dict(activation="gelu"), "activation"),
        (dict(weight=torch.ones(4)), "weight"),
        (dict(bias=torch.ones(3, 1)), "bias"),
        (dict(residual=torch.ones(1, 3, 4, 5)), "residual"),
        (dict(residual=torch.ones(1, 3, 4, 4, dtype=torch.float16)), "residual"),
    ]
    for kwargs, word in cases:
        w, b = kwargs.pop("weight", None), kwargs.pop("bias", None)
        with pytest.raises(ValueError, match=word):
            instance_norm(x, w, b, **kwargs)
    with pytest.raises(ValueError, match="N x C x H x W"):
        instance_norm(torch.randn(3, 4, 4))
    with pytest.raises(ValueError, match="float32"):
        instance_norm(torch.zeros(1, 3, 4, 4, dtype=torch.int32))


@pytest.mark.interpreter
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("flags", [(True, True, True, True), (False, True, False, False)], ids=_id)
def test_opcheck(layout, flags):
    x, w, b, r, act = make_inputs((2, 3, 5, 7), torch.float32, layout, flags)
    leaf = lambda t: None if t is None else t.requires_grad_()  # noqa: E731
    args = (leaf(x), leaf(w), leaf(b), leaf(r), 1e-5, act == "relu")
    torch.library.opcheck(torch.ops.instyle.instance_norm.default, args)
    _, mean, rstd = torch.ops.instyle.instance_norm(*args)
    dy = torch.randn(x.shape).contiguous(memory_format=_fmt(layout))
    bargs = (dy, x.detach(), None if w is None else w.detach(), None if b is None else b.detach(), mean.detach(),
             rstd.detach(), act == "relu")
    torch.library.opcheck(torch.ops.instyle.instance_norm_backward.default, bargs)


def _residual_block_tail(x, w, b, r):
    return instance_norm(x, w, b, activation="relu", residual=r) * 2.0


@pytest.mark.interpreter
@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_torch_compile_fullgraph(backend):
    torch._dynamo.reset()
    x, w, b, r, _ = make_inputs((2, 4, 6, 10), torch.float32, "channels_last", (True, True, True, True))
    explain = torch._dynamo.explain(_residual_block_tail)(x, w, b, r)
    assert explain.graph_break_count == 0, explain.break_reasons
    leaves = [t.clone().requires_grad_() for t in (x, w, b, r)]
    y = torch.compile(_residual_block_tail, fullgraph=True, backend=backend)(*leaves)
    y.sum().backward()
    eager = [t.clone().requires_grad_() for t in (x, w, b, r)]
    y_eager = _residual_block_tail(*eager)
    y_eager.sum().backward()
    torch.testing.assert_close(y, y_eager)
    for a, e in zip(leaves, eager):
        torch.testing.assert_close(a.grad, e.grad)


def test_import_does_not_touch_cuda_and_cpu_tensors_need_interpreter():
    """Without TRITON_INTERPRET the import must not query CUDA; a CPU tensor then gets one clear error."""
    code = (
        "import torch\n"
        "torch.cuda.is_available = lambda: (_ for _ in ()).throw(AssertionError('queried CUDA'))\n"
        "torch.cuda.get_device_properties = torch.cuda.is_available\n"
        "from instyle.kernels import instance_norm\n"
        "try:\n"
        "    instance_norm(torch.randn(1, 2, 3, 3))\n"
        "except ValueError as e:\n"
        "    print('ValueError:', e)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    if torch.cuda.is_available():
        pytest.skip("CUDA present: a CPU tensor is not the interesting case here")
    assert "ValueError:" in out.stdout and "CUDA" in out.stdout, out.stdout + out.stderr[-2000:]


_COMPILE_SM90 = """
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from instyle.kernels import instance_norm_forward as F
from instyle.kernels import instance_norm_backward as B
consts = dict(HAS_WEIGHT=True, HAS_BIAS=True, HAS_RESIDUAL=True, APPLY_RELU=True, BLOCK_HW=64, BLOCK_C=32,
              CHUNK_HW=512, BLOCK_R=8, BLOCK_K=64, stride_xc=1, stride_yc=1, stride_rc=1, stride_dyc=1, stride_dxc=1)
fp32 = {"mean_ptr", "rstd_ptr", "pmean_ptr", "pm2_ptr", "sg_ptr", "sgx_ptr", "psg_ptr", "psgx_ptr"}
for k in (F._in_fwd_fused_kernel, F._in_fwd_partial_stats_kernel, F._in_fwd_combine_kernel, F._in_fwd_normalize_kernel,
          B._in_bwd_fused_kernel, B._in_bwd_partial_sums_kernel, B._in_bwd_dx_kernel):
    names = k.arg_names
    sig = {n: "constexpr" if n in consts else ("*fp32" if n in fp32 else "*bf16") if n.endswith("_ptr")
           else "fp32" if n == "eps" else "i32" for n in names}
    src = ASTSource(fn=k, signature=sig, constexprs={(names.index(n),): v for n, v in consts.items() if n in names})
    triton.compile(src, target=GPUTarget("cuda", 90, 32))
print("compiled")
"""


def test_kernels_compile_for_sm90_without_a_gpu():
    """The interpreter does not type-check like the compiler: build every kernel for sm_90 (ptxas, no GPU)."""
    assert_compiles_for_sm90(_COMPILE_SM90)


def test_bench_script_without_cuda_refuses_politely(capsys):
    if torch.cuda.is_available():
        pytest.skip("CUDA present: the benchmark would run")
    from instyle.bench import kernels as bench

    assert bench.main(["--out", "unused"]) == 1
    assert "needs CUDA" in capsys.readouterr().err


def test_bench_markdown_table():
    from instyle.bench import kernels as bench

    timings = (("fused", 1.0, 1590.0, 47.5), ("torch", 2.5, 636.0, 19.0), ("compile", 1.5, 1060.0, 31.6))
    rows = [dict(shape="1x32x2160x3840", layout="nchw", dtype="fp16", op="in_residual", impl=i, median_ms=ms,
                 gbps=gb, pct_peak_bw=pct, skipped=None) for i, ms, gb, pct in timings]
    text = bench.markdown(dict(device=dict(name="NVIDIA H100 80GB HBM3", peak_gbps=3350), date="2026-01-01",
                               git_rev="abc", versions=dict(torch="2.x", triton="3.x"), iters=50, warmup=10,
                               note=None, rows=rows))
    row = "| 1x32x2160x3840 | nchw | fp16 | in_residual | 1.000 | 2.500 | 1.500 | 1590 | 47.5 | 2.50× | 1.50× |"
    assert row in text, text


# ---------------------------------------------------------------------------------------------------- GPU only


@pytest.mark.gpu
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=_id)
def test_gpu_large_plane(dtype, layout):
    x, w, b, r, act = make_inputs((1, 32, 2160, 3840), dtype, layout, (True, True, False, True))
    x, w, b, r = (t.cuda() for t in (x, w, b, r))
    assert IN.plan(32, 2160 * 3840, channels_last=layout == "channels_last").split
    y = instance_norm(x, w, b, activation=act, residual=r)
    assert_derived_close("y", y, ref_fp32(x, w, b, act, r), torch_lowp(x, w, b, act, r), dtype)


@pytest.mark.gpu
def test_gpu_int64_offsets():
    """8 x 32 x 2160 x 3840 = 2.1e9 elements: past int32 indexing."""
    x = torch.randn(8, 32, 2160, 3840, device="cuda", dtype=torch.float16).contiguous(
        memory_format=torch.channels_last)
    y = instance_norm(x, activation="relu")
    assert_derived_close("y[-1]", y[-1:], ref_fp32(x[-1:], None, None, "relu"),
                         torch_lowp(x[-1:], None, None, "relu"), torch.float16)


@pytest.mark.gpu
@pytest.mark.parametrize("layout", LAYOUTS)
def test_gpu_cuda_graph_capture(layout):
    x, w, b, r, act = make_inputs((2, 64, 270, 480), torch.float16, layout, (True, True, True, True))
    x, w, b, r = (t.cuda() for t in (x, w, b, r))
    instance_norm(x, w, b, activation=act, residual=r)  # compile kernels outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y = instance_norm(x, w, b, activation=act, residual=r)
    x2 = torch.randn_like(x)
    x.copy_(x2)
    graph.replay()
    torch.cuda.synchronize()
    torch.testing.assert_close(y, instance_norm(x2, w, b, activation=act, residual=r))


@pytest.mark.gpu
def test_gpu_compile_inductor():
    x, w, b, r, _ = make_inputs((2, 32, 64, 96), torch.float16, "channels_last", (True, True, True, True))
    x, w, b, r = (t.cuda() for t in (x, w, b, r))
    y = torch.compile(_residual_block_tail, fullgraph=True)(x, w, b, r)
    torch.testing.assert_close(y, _residual_block_tail(x, w, b, r))
