"""instyle.kernels.conv_in: one fused layer against its plain-PyTorch _ref and against the generator's own
layers written with torch.nn.functional (F.instance_norm -> relu -> + skip -> F.interpolate -> F.pad ->
F.conv2d), under the Triton interpreter on tiny shapes (batch 2, odd sizes where the layer allows).

Tolerances are derived: the fused output must satisfy
    max|fused - ref_fp32| <= 2 * max|torch_lowp - ref_fp32| + atol[dtype] * max(1, max|ref_fp32|)
where ref_fp32 is the F.* chain in fp32 on the (dtype-rounded) inputs and torch_lowp is the same chain
rounded where a low-precision pipeline must round: the conv's input and weights, and its output.
bf16 runs only on a GPU: the interpreter's bf16 tl.dot is not faithful.
"""

import pytest
import torch
import torch.nn.functional as F
import triton
from sm90 import assert_compiles_for_sm90
from tolerances import ATOL, assert_derived_close

from instyle.kernels import conv_in, conv_in_ref, in_apply, in_apply_ref
from instyle.kernels import conv_in_gemm as CI

# A conv layer's fp32 output is a sum of Cin*k*k products (up to 1296 here), which the kernel adds in its own
# (tiled, tap-outer or flat) order and F.conv2d in another: twice the fp32 atol of an elementwise op.
CONV_ATOL = {**ATOL, torch.float32: 2e-5}

# name: (Cin, Cout, kernel, stride, upsample, norm, relu, skip, write_skip, (H, W))
CASES = {
    "rgb9x9": (3, 8, 9, 1, False, False, False, False, False, (9, 11)),       # conv1: raw NCHW image in
    "rgb9x9_wide": (3, 8, 9, 1, False, False, False, False, False, (12, 40)),  # + interior (no-reflect) tiles
    "down": (16, 16, 3, 2, False, True, True, False, False, (7, 9)),           # conv2/conv3: stride 2, odd
    "res_first": (16, 16, 3, 1, False, True, True, False, True, (7, 5)),      # res1.conv1: writes x_0
    "res_skip": (16, 16, 3, 1, False, True, False, True, True, (5, 7)),       # resk.conv1: x_k = IN + x_{k-1}
    "up_skip": (16, 8, 3, 1, True, True, False, True, False, (3, 5)),         # deconv1 after the blocks
    "up": (16, 8, 3, 1, True, True, True, False, False, (3, 4)),              # deconv2
    "out9x9": (16, 3, 9, 1, False, True, True, False, False, (7, 9)),          # deconv3: bias, NCHW fp32 out
    "out9x9_px5": (16, 3, 9, 1, False, True, True, False, False, (7, 9)),      # deconv3 as the engine runs it
}
PIX = {"out9x9_px5": 5}  # GEMM rows of 5 horizontally adjacent pixels, N = 5 x 3 channels


def _id(v):
    return str(v).removeprefix("torch.") if isinstance(v, torch.dtype) else None


def _combos():
    """(case, K order, dtype): the order the GPU runs (taps, except the Cin=3 input layer) in fp32 and fp16,
    plus the flat order the interpreter's whole-net runs use, in fp32. Skip-writing layers are always taps."""
    for name, case in CASES.items():
        if case[0] < 16:
            for path in ("flat", "window"):  # the RGB input layer: flat K, or row windows of a padded copy
                yield name, path, torch.float32
                yield name, path, torch.float16
            continue
        yield name, "taps", torch.float32
        yield name, "taps", torch.float16
        if not case[8] and name not in PIX:  # skip writers and pixel groups always take the taps order
            yield name, "flat", torch.float32


def small_tiles(monkeypatch, path, block_m=32, block_k=16):
    """Small tiles (several M/N/K tiles, ragged edges, 2 stat tiles per M tile) on either K order."""
    monkeypatch.setitem(CI.TUNING, "flat_max_cin", 1 << 30 if path == "flat" else 0)
    monkeypatch.setitem(CI.TUNING, "block_m", block_m)
    monkeypatch.setitem(CI.TUNING, "block_n", 16)
    monkeypatch.setitem(CI.TUNING, "block_k", block_k)
    monkeypatch.setitem(CI.TUNING, "stat_m", 16)


def make_case(name, dtype, seed=0, size=None):
    cin, cout, k, stride, up, has_norm, relu, has_skip, wskip, (H, W) = CASES[name]
    H, W = size or (H, W)
    g = torch.Generator().manual_seed(seed)
    cl = torch.channels_last
    if has_norm:  # a raw previous conv output: per-channel offsets and scales, so means are not ~0
        x = torch.randn(2, cin, H, W, generator=g) * (0.5 + 2 * torch.rand(1, cin, 1, 1, generator=g)) \
            + 3 * torch.randn(1, cin, 1, 1, generator=g)
        x = x.to(dtype).contiguous(memory_format=cl)
    else:  # an image: 0..255, NCHW fp32, read in place
        x = torch.rand(2, cin, H, W, generator=g) * 255
    w = (torch.randn(cout, cin, k, k, generator=g) / (cin * k * k) ** 0.5).to(dtype)
    bias = torch.randn(cout, generator=g)
    gamma = 1 + 0.3 * torch.randn(cin, generator=g)
    beta = 0.3 * torch.randn(cin, generator=g)
    skip = torch.randn(2, cin, H, W, generator=g).to(dtype).contiguous(memory_format=cl) if has_skip else None
    return dict(x=x, w=w, bias=bias, gamma=gamma, beta=beta, skip=skip, k=k, stride=stride, up=up,
                norm=has_norm, relu=relu, wskip=wskip, pix=PIX.get(name, 1))


def _on(c, device):
    return {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in c.items()}


def functional_layer(c, round_to=None):
    """The generator's layer with torch.nn.functional, in fp32; round_to rounds conv input/weights/output."""
    a = c["x"].float()
    if c["norm"]:
        a = F.instance_norm(a, weight=c["gamma"], bias=c["beta"], eps=1e-5)
    if c["relu"]:
        a = torch.relu(a)
    if c["skip"] is not None:
        a = a + c["skip"].float()
    w = c["w"].float()
    if round_to is not None:
        a, w = a.to(round_to).float(), w.to(round_to).float()
    if c["up"]:
        a = F.interpolate(a, scale_factor=2, mode="nearest")
    pad = c["k"] // 2
    y = F.conv2d(F.pad(a, (pad,) * 4, mode="reflect"), w, c["bias"], c["stride"])
    return y if round_to is None else y.to(round_to).float()


def run_fused(c, dtype, out=None, stats=None, window=False):
    norm = CI.norm_params_ref(c["x"], c["gamma"], c["beta"]) if c["norm"] else None
    skip_out = torch.empty_like(c["x"], dtype=dtype) if c["wskip"] else None
    y, stats = conv_in(c["x"], CI.pack_weight(c["w"], dtype, c["pix"], window=window), c["bias"], kernel=c["k"],
                       stride=c["stride"], upsample=c["up"], norm=norm, relu=c["relu"], skip=c["skip"],
                       skip_out=skip_out, stats=out is None if stats is None else stats, out=out, pix=c["pix"],
                       window=window)
    return y, stats, skip_out, norm


def check_layer(name, dtype, device="cpu", window=False):
    """Run case `name` on `device`; compare with the F.* layer, the _ref, the skip store and the statistics."""
    c = make_case(name, dtype)
    last = name.startswith("out9x9")  # deconv3: straight into an NCHW fp32 output buffer, no statistics
    out = torch.empty(2, 3, 7, 9, device=device) if last else None
    y, stats, skip_out, norm = run_fused(_on(c, device), dtype, out=out, window=window)
    ref = functional_layer(c)
    lowp = None if dtype == torch.float32 else functional_layer(c, round_to=dtype)
    if last:
        assert y is out and stats is None
    else:
        assert y.dtype == dtype and y.is_contiguous(memory_format=torch.channels_last)
    assert_derived_close("y", y.cpu(), ref, lowp, dtype, atol=CONV_ATOL)
    # the _ref computes the same layer (its prologue from the same norm params) in fp32
    norm = None if norm is None else norm.cpu()
    y_ref, a_ref = conv_in_ref(c["x"], c["w"], c["bias"], stride=c["stride"], upsample=c["up"], norm=norm,
                               relu=c["relu"], skip=c["skip"])
    torch.testing.assert_close(y_ref, ref, rtol=1e-5, atol=1e-4)
    assert_derived_close("y vs _ref", y.cpu(), y_ref, lowp, dtype, atol=CONV_ATOL)
    if skip_out is not None:  # the center-tap store: the prologue's result, rounded once
        torch.testing.assert_close(skip_out.cpu().float(), a_ref.to(dtype).float(), rtol=0,
                                   atol=2 * torch.finfo(dtype).eps * a_ref.abs().max().item())
    if last:
        return
    # statistics of exactly the stored y, Chan-merged over ragged stat tiles
    gamma = 1 + torch.rand(y.shape[1])
    beta = torch.randn(y.shape[1])
    got = CI.finalize(stats, gamma.to(device), beta.to(device)).cpu()
    torch.testing.assert_close(got, CI.norm_params_ref(y.cpu(), gamma, beta), rtol=2e-5, atol=1e-5)


@pytest.mark.interpreter
@pytest.mark.parametrize("name,path,dtype", list(_combos()), ids=lambda v: _id(v) or str(v))
def test_layer_vs_functional_and_ref(monkeypatch, name, path, dtype):
    if name == "rgb9x9_wide":  # 16-pixel tiles inside one row: rows 4..7, columns 16..31 are interior
        small_tiles(monkeypatch, path, block_m=16, block_k=64)
    else:
        small_tiles(monkeypatch, path, block_m=64 if CASES[name][2] == 9 else 32)  # 9x9: fewer steps
    check_layer(name, dtype, window=path == "window")


@pytest.mark.interpreter
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=_id)
@pytest.mark.parametrize("relu,skip", [(True, False), (False, True)], ids=["relu", "skip"])
def test_in_apply_vs_instance_norm(monkeypatch, dtype, relu, skip):
    """The separate normalize pass: act(IN(x)) [+ skip] as F.instance_norm computes it, x NHWC, tiles ragged."""
    from instyle.kernels import conv_in_normalize as NA
    monkeypatch.setitem(NA.TUNING, "block_hw", 16)
    monkeypatch.setitem(NA.TUNING, "block_c", 8)
    c = make_case("res_skip", dtype)  # x: 2 x 16 x 5 x 7 raw, with per-channel offsets
    norm = CI.norm_params_ref(c["x"], c["gamma"], c["beta"])
    s = c["skip"] if skip else None
    y = in_apply(c["x"], norm, relu=relu, skip=s)
    assert y.dtype == dtype and y.is_contiguous(memory_format=torch.channels_last)
    ref = F.instance_norm(c["x"].float(), weight=c["gamma"], bias=c["beta"], eps=1e-5)
    ref = torch.relu(ref) if relu else ref
    ref = ref + s.float() if skip else ref
    assert_derived_close("y", y, ref, ref.to(dtype), dtype)
    torch.testing.assert_close(y, in_apply_ref(c["x"], norm, relu=relu, skip=s), rtol=0,
                               atol=2 * torch.finfo(dtype).eps * ref.abs().max().item())


@pytest.mark.interpreter
@pytest.mark.parametrize("dtype,offset", [(torch.float32, 3e4), (torch.float16, 6e4)], ids=["float32", "float16"])
def test_statistics_are_shift_safe(monkeypatch, dtype, offset):
    """Channels with |mean| >> std (fp16: near its 65504 limit): the Chan-merged per-tile M2 keeps the
    variance of the stored values (E[x^2] - E[x]^2 in fp32 would lose it entirely)."""
    monkeypatch.setitem(CI.TUNING, "stat_m", 16)
    monkeypatch.setitem(CI.TUNING, "block_m", 32)
    g = torch.Generator().manual_seed(3)
    spread = 1.0 if dtype == torch.float32 else 64.0  # fp16 spacing at 6e4 is 32
    x = (spread * torch.randn(2, 16, 9, 7, generator=g)).to(dtype).contiguous(memory_format=torch.channels_last)
    w = torch.zeros(16, 16, 3, 3)
    w[:, :, 1, 1] = torch.eye(16)  # identity conv: y = x + bias
    y, stats = conv_in(x, CI.pack_weight(w, dtype), torch.full((16,), offset), kernel=3)
    torch.testing.assert_close(y.float(), (x.float() + offset).to(dtype).float(), rtol=0, atol=0)
    ones, zeros = torch.ones(16), torch.zeros(16)
    got, want = CI.finalize(stats, ones, zeros), CI.norm_params_ref(y.double(), ones, zeros).float()
    assert got.isfinite().all()
    torch.testing.assert_close(got, want, rtol=2e-3, atol=0)  # fp32 rounding of values near the offset


@pytest.mark.interpreter
def test_constant_output_gives_eps_rstd():
    """A constant conv output has M2 == 0 exactly: rstd = 1/sqrt(eps), as F.instance_norm."""
    x = torch.randn(2, 16, 5, 5).contiguous(memory_format=torch.channels_last)
    y, stats = conv_in(x, CI.pack_weight(torch.zeros(16, 16, 3, 3), torch.float32), torch.full((16,), 7.0),
                       kernel=3)
    p = CI.finalize(stats, torch.ones(16), torch.zeros(16))
    assert torch.equal(p[:, 0], torch.full((2, 16), 7.0))
    torch.testing.assert_close(p[:, 1], torch.full((2, 16), 1e-5 ** -0.5))


@pytest.mark.interpreter
def test_rejects_inputs_smaller_than_the_padding():
    x = torch.randn(1, 3, 4, 9)
    with pytest.raises(ValueError, match="reflection padding 4"):
        conv_in(x, CI.pack_weight(torch.randn(8, 3, 9, 9), torch.float32), kernel=9)


@pytest.mark.interpreter
def test_torch_library_op_checks_and_compiles():
    """instyle::conv_in_ passes opcheck (schema, fake tensors, mutation) and torch.compile(fullgraph)."""
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 16, 5, 7, generator=g).contiguous(memory_format=torch.channels_last)
    w = CI.pack_weight(torch.randn(16, 16, 3, 3, generator=g), torch.float32)
    norm = CI.norm_params_ref(x, torch.ones(16), torch.zeros(16))
    T = -(-35 // CI.TUNING["stat_m"])
    args = (x, w, None, norm, torch.randn_like(x), torch.empty_like(x), torch.empty_like(x),
            torch.empty(2, T, 16), torch.empty(2, T, 16), 3, 1, False, False)
    torch.library.opcheck(CI.conv_in_op, args)

    def layer(x):
        y, stats = conv_in(x, w, None, kernel=3, norm=norm, relu=True)
        return y, CI.finalize(stats, torch.ones(16), torch.zeros(16))

    for got, want in zip(torch.compile(layer, fullgraph=True)(x), layer(x)):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_gpu_configs_fit_the_statistics_layout():
    """Every autotune config splits into whole stat tiles; pruning keeps tiles no wider than the layer."""
    assert all(c.kwargs["BLOCK_M"] % CI.GPU_STAT_M == 0 for c in CI._GPU_CONFIGS)
    last = CI._prune(CI._GPU_CONFIGS, dict(Cin=32, Cout=3), FLAT_K=False, PIX=1)
    assert last and all(c.kwargs["BLOCK_N"] == 8 and c.kwargs["BLOCK_K"] <= 32 for c in last)  # wgmma n8
    grouped = CI._prune(CI._GPU_CONFIGS, dict(Cin=32, Cout=3), FLAT_K=False, PIX=5)
    assert grouped and all(c.kwargs["BLOCK_N"] <= 16 for c in grouped)  # 15 columns
    first = CI._prune(CI._GPU_CONFIGS, dict(Cin=3, Cout=32), FLAT_K=True, PIX=1)
    assert first and all(c.kwargs["BLOCK_N"] <= 32 for c in first)
    assert len(CI._prune(CI._GPU_CONFIGS, dict(Cin=128, Cout=128), FLAT_K=False, PIX=1)) == len(CI._GPU_CONFIGS)


@pytest.mark.interpreter
@pytest.mark.parametrize("name", ["res_first", "out9x9_px5"])
def test_autotuned_launch_runs_every_gpu_config(monkeypatch, name):
    """The GPU launch path (triton.autotune over the pruned _GPU_CONFIGS, keyed, grid from META) under
    the interpreter with a stub benchmark that runs each config once: every config's output is checked."""
    if torch.cuda.is_available():
        pytest.skip("on a GPU the real autotuner runs (test_layer_on_gpu_autotuned)")
    outputs = []

    def bench_once(fn, quantiles):
        fn()
        outputs.append(y.clone())
        return [float(len(outputs))] * len(quantiles)  # the first config "wins"

    tuned = triton.autotune(configs=CI._GPU_CONFIGS, key=CI._TUNE_KEY, do_bench=bench_once,
                            prune_configs_by={"early_config_prune": CI._prune})(CI._conv_in_kernel)
    monkeypatch.setattr(CI, "_AUTOTUNE", True)
    monkeypatch.setattr(CI, "_conv_in_tuned", tuned)
    monkeypatch.setitem(CI.TUNING, "stat_m", CI.GPU_STAT_M)
    monkeypatch.setitem(CI.TUNING, "flat_max_cin", 15)  # the GPU's K-order choice
    c = make_case(name, torch.float32, size=(5, 8))  # 9x9: the smallest size its reflection allows
    last = name.startswith("out9x9")
    y = torch.empty(2, 3, 5, 8) if last else torch.empty_like(c["x"])  # 3x3 stride 1: x's shape
    y, stats, _, _ = run_fused(c, torch.float32, out=y, stats=not last)
    ref = functional_layer(c)
    assert len(outputs) >= 2, "pruning left a single config: nothing was tuned"
    for got in outputs + [y]:
        assert_derived_close("y", got, ref, None, torch.float32, atol=CONV_ATOL)
    if stats is not None:
        torch.testing.assert_close(CI.finalize(stats, torch.ones(16), torch.zeros(16)),
                                   CI.norm_params_ref(y, torch.ones(16), torch.zeros(16)), rtol=2e-5, atol=1e-5)


_COMPILE_SM90 = """
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from instyle.kernels import conv_in_gemm as CI
k = CI._conv_in_kernel
base = dict(KH=3, KW=3, STRIDE=1, UPSAMPLE=False, NORM=True, RELU=False, HAS_SKIP=True, WRITE_SKIP=True,
            HAS_BIAS=False, HAS_STATS=True, FLAT_K=False, DOT_IEEE=False, PIX=1, PADDED=False,
            PHASE=0, STAT_M=CI.GPU_STAT_M)
variants = [  # (pointer dtype, flags, BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages)
    ("fp16", base, 128, 128, 32, 8, 3),                                                  # res conv1, x_k store
    ("bf16", dict(base, UPSAMPLE=True, WRITE_SKIP=False), 256, 64, 32, 8, 4),            # deconv1
    ("fp16", dict(base, KH=2, KW=2, HAS_SKIP=False, WRITE_SKIP=False, PHASE=4), 256, 64, 32, 8, 4),  # deconv phase
    ("fp16", dict(base, KH=9, KW=9, NORM=False, HAS_SKIP=False, WRITE_SKIP=False, FLAT_K=True), 128, 32, 64, 4, 3),
    ("fp16", dict(base, KH=9, KW=1, NORM=False, HAS_SKIP=False, WRITE_SKIP=False, PADDED=True), 256, 32, 64, 8, 3),
    ("fp16", dict(base, KH=9, KW=9, RELU=True, HAS_SKIP=False, WRITE_SKIP=False, HAS_BIAS=True, HAS_STATS=False),
     128, 8, 32, 4, 4),                                                                  # 9x9, Cout 3: wgmma n8
    ("fp16", dict(base, KH=9, KW=9, NORM=False, HAS_SKIP=False, WRITE_SKIP=False, HAS_BIAS=True, HAS_STATS=False,
                  PIX=5), 128, 16, 32, 4, 4),                                            # deconv3: 5 px x 3 ch
    ("fp32", dict(base, STRIDE=2, RELU=True, HAS_SKIP=False, WRITE_SKIP=False, DOT_IEEE=True), 128, 64, 32, 4, 4),
]
fp32 = {"norm_ptr", "b_ptr", "pmean_ptr", "pm2_ptr"}
for dt, flags, bm, bn, bk, warps, stages in variants:
    consts = dict(flags, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk)
    sig = {n: "constexpr" if n in consts else ("*fp32" if n in fp32 else "*" + dt) if n.endswith("_ptr") else "i32"
           for n in k.arg_names}
    triton.compile(ASTSource(k, sig, consts), target=GPUTarget("cuda", 90, 32),
                   options=dict(num_warps=warps, num_stages=stages))
from instyle.kernels import conv_in_normalize as NA
a = NA._in_apply_kernel
consts = dict(RELU=True, HAS_SKIP=True, PAD=1, BLOCK_HW=64, BLOCK_C=64)
sig = {n: "constexpr" if n in consts else ("*fp32" if n == "norm_ptr" else "*bf16") if n.endswith("_ptr") else "i32"
       for n in a.arg_names}
triton.compile(ASTSource(a, sig, consts), target=GPUTarget("cuda", 90, 32), options=dict(num_warps=4))
print("compiled")
"""


def test_kernel_compiles_for_sm90_without_a_gpu():
    """The interpreter does not type-check like the compiler: build the kernel's variants for sm_90."""
    assert_compiles_for_sm90(_COMPILE_SM90)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=_id)
@pytest.mark.parametrize("name", list(CASES))
def test_layer_on_gpu_autotuned(name, dtype):
    """The autotuned GPU configs (no TUNING override) against the same references and tolerances."""
    check_layer(name, dtype, "cuda")


def test_row_window_input_view():
    """window_input: the view's channel k at (h, w) is the padded image's pixel (h, w + k // 4), channel
    k % 4 (zero past the image's channels); pack_weight(window=True) puts zero rows wherever the view reads
    something that is not a tap (the fourth channel, the columns past the kernel's); more than 4 channels
    is refused."""
    x = torch.rand(2, 3, 6, 7) * 255
    v = CI.window_input(x, 5, torch.float32)
    assert v.shape == (2, CI.window_k(5, 3), 10, 7) and CI.window_k(5, 3) == 32
    padded = F.pad(x, (2,) * 4, mode="reflect")
    for h, w, k in [(0, 0, 0), (9, 6, 18), (4, 3, 6), (5, 2, 9), (9, 6, 16)]:
        assert v[1, k, h, w] == padded[1, k % 4, h, w + k // 4], (h, w, k)
    assert (v[:, 3::4][:, :5] == 0).all()  # the fourth channel of each of the 5 window pixels
    w = torch.randn(6, 3, 5, 5)
    packed = CI.pack_weight(w, torch.float32, window=True).view(5, 32, 6)  # [ky, k, cout]
    assert torch.equal(packed[:, :20].reshape(5, 5, 4, 6)[:, :, :3], w.permute(2, 3, 1, 0))
    assert (packed[:, 3:20:4] == 0).all() and (packed[:, 20:] == 0).all()
    with pytest.raises(ValueError, match="at most 4 input channels, not 8"):
        CI.window_channels(8)
