"""Backend "fused": the whole JohnsonNet as a chain of fused conv-IN kernels, against the eager model.

Tolerance (fp32), derived: the eager model in float64 is the truth; eager fp32 differs from it by
e32 (summation order, rounding). The chain rounds in different places (per-tile statistics, Chan
merge, bias folded into IN, different conv summation order), errors of the same kind and size, which
the 5 residual blocks and 5 INs amplify alike. So the chain must satisfy
    max|fused - eager64| <= 4 * e32 + 1e-5 * max(1, max|eager64|)    (and never more than 1e-2),
i.e. within a small factor of what fp32 itself costs (measured: the pretrained net on the photo crop has
e32 = 5.1e-4 and a fused error of 4.8e-4 on outputs ~90..164). fp16 is judged by PSNR against the fp32
chain output (a low-precision run cannot be closer than fp16 rounding of ~1e-3 relative allows).
Without CUDA the kernels run in the Triton interpreter, so sizes are small.
"""
import dataclasses

import numpy as np
import pytest
import torch
from conftest import need
from PIL import Image
from tolerances import assert_derived_close

from instyle import checkpoint
from instyle.engine import Stylizer, backends
from instyle.engine.backends import fused_gemm as FC
from instyle.engine.graphs import GRAPH_CACHE_SIZE, GraphCache, shape_key
from instyle.metrics import psnr_db
from instyle.models.johnson import JohnsonNet


def photo_crop(data, h=40, w=56, top=180, left=300):
    img = np.asarray(Image.open(need(data / "content/demo/chicago.jpg")).convert("RGB"))
    return torch.from_numpy(img[top:top + h, left:left + w].copy()).permute(2, 0, 1)[None].float()


@pytest.fixture(scope="module")
def pretrained(data):
    model, _ = checkpoint.load(need(data / "pretrained/random-transformernet.pth"))
    return model.eval()


def narrow_net(seed=0, blocks=2):
    """width 8 (Cin 8..32), two blocks (both ping-pong skip buffers), IN affine params away from 1/0."""
    torch.manual_seed(seed)
    model = JohnsonNet(width=8, blocks=blocks).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.InstanceNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    return model


def assert_chain_close(fused, model, x):
    with torch.no_grad():
        ref64 = model.double()(x.double())
        eager32 = model.float()(x)
    assert_derived_close("fused chain vs eager float64", fused, ref64, eager32, torch.float32, factor=4, cap=1e-2)


@pytest.mark.interpreter
@pytest.mark.parametrize("first_layer,conv3x3", [("flat", "prologue"), ("window", "prologue"), ("flat", "tma")],
                         ids=["flat", "window", "tma"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["float32", "float16"])
def test_pretrained_generator_on_a_photo(data, pretrained, dtype, first_layer, conv3x3):
    """The real checkpoint on a 40x56 crop of chicago.jpg: every layer type, 5 residual blocks. fp16
    (measured: 69 dB, max |d| 0.34 against eager float64) must keep PSNR >= 45 dB and max |d| <= 2.
    first_layer: the RGB layer gathers from the photo in place (flat) or reads row windows of a padded
    NHWC copy (window); conv3x3=tma: the residual convs read a normalized, padded copy by TMA. All meet the same
    bounds."""
    x = photo_crop(data)
    run = FC.make_runner(pretrained, torch.device("cpu"), dtype, first_layer=first_layer, conv3x3=conv3x3)
    y = run(x)
    assert y.shape == x.shape and y.dtype == torch.float32
    if dtype == torch.float32:
        assert_chain_close(y, pretrained, x)
        return
    with torch.no_grad():
        ref64 = pretrained.double()(x.double())
        pretrained.float()
    assert psnr_db(y.clamp(0, 255), ref64.clamp(0, 255)) >= 45
    assert (y.double() - ref64).abs().max().item() <= 2


def test_first_layer_option_picks_the_rgb_layer_only(pretrained):
    chain = FC.FusedChain(pretrained, torch.float16, first_layer="window")
    assert [layer.window for layer in chain.layers()] == [True] + [False] * (len(chain.layers()) - 1)
    assert not any(layer.window for layer in FC.FusedChain(pretrained, torch.float16).layers())
    with pytest.raises(ValueError, match="first_layer must be one of"):
        FC.FusedChain(pretrained, torch.float16, first_layer="rows")
    with pytest.raises(ValueError, match="first_layer must be one of"):  # before any device check
        FC.make_runner(pretrained, torch.device("meta"), torch.float16, first_layer="rows")


def test_upsample_option_picks_the_upsampling_convs_only(pretrained):
    chain = FC.FusedChain(pretrained, torch.float16, upsample="phase")
    assert [layer.name for layer in chain.layers() if layer.phase] == ["deconv1", "deconv2"]
    assert all(layer.weight.shape == (4, 4 * layer.cin, layer.cout) for layer in chain.layers() if layer.phase)
    assert not any(layer.phase for layer in FC.FusedChain(pretrained, torch.float16).layers())
    with pytest.raises(ValueError, match="upsample must be one of"):  # before any device check
        FC.make_runner(pretrained, torch.device("meta"), torch.float16, upsample="bilinear")


@pytest.mark.parametrize("dtype,prenorm", [(torch.float32, "auto"), (torch.float16, "auto"), (torch.float32, "all")],
                         ids=["float32", "float16", "float32-all-prenorm"])
@pytest.mark.interpreter
def test_narrow_generator_batch2_phase_upsampling(monkeypatch, dtype, prenorm):
    """upsample=phase (deconv1/deconv2 as four 2x2 phase launches each), batch 2, 12x20 (the deconvs read 3x5,
    then 6x10), tap-outer order as on a GPU: the bounds of the direct chain. auto: the phase launches apply the
    pending IN (+ skip for deconv1) in their prologue; all: in a separate pass."""
    monkeypatch.setitem(FC.ci.TUNING, "flat_max_cin", 3)
    model = narrow_net(seed=2)
    g = torch.Generator().manual_seed(4)
    x = torch.rand(2, 3, 12, 20, generator=g) * 255
    y = FC.make_runner(model, torch.device("cpu"), dtype, prenorm=prenorm, upsample="phase")(x)
    assert_batch2_matches_model(y, model, x, dtype)


@pytest.mark.parametrize("dtype,k_order,prenorm", [
    (torch.float32, "interpreter", "auto"), (torch.float16, "interpreter", "auto"),
    (torch.float32, "gpu", "none"), (torch.float32, "interpreter", "all")],
    ids=["float32", "float16", "float32-gpu-order-all-prologue", "float32-all-prenorm"])
@pytest.mark.interpreter
def test_narrow_generator_batch2(monkeypatch, dtype, k_order, prenorm):
    """Batch 2 (different images, so per-image statistics), width 8, 2 blocks, 16x20. "gpu" runs every
    layer but the RGB input one on the tap-outer K order, as a GPU does (the interpreter's default
    takes the flat order wherever it may, for speed). prenorm: where each layer's input IN is applied
    (auto: deconvs in a separate pass; none: every prologue; all: every separate pass)."""
    if k_order == "gpu":
        monkeypatch.setitem(FC.ci.TUNING, "flat_max_cin", 3)
    model = narrow_net()
    g = torch.Generator().manual_seed(1)
    x = torch.rand(2, 3, 16, 20, generator=g) * 255
    y = FC.make_runner(model, torch.device("cpu"), dtype, prenorm=prenorm)(x)
    assert_batch2_matches_model(y, model, x, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["float32", "float16"])
@pytest.mark.interpreter
def test_narrow_generator_batch2_tma_residual_convs(monkeypatch, dtype):
    """conv3x3=tma: the residual blocks' convs read a normalized, reflect-padded copy through tensor descriptors
    (kernels/conv_tma.py), the stored skips are that copy's interior; batch 2, 12x20 (the blocks run at 3x5),
    row tiles of 4 pixels (two per row, the second ragged): the bounds of the prologue chain."""
    monkeypatch.setitem(FC.conv_tma.TUNING, "block_m", 4)
    monkeypatch.setitem(FC.conv_tma.TUNING, "stat_m", 2)
    model = narrow_net(seed=3)
    assert [layer.name for layer in FC.FusedChain(model, dtype, conv3x3="tma").layers() if layer.tma] == [
        "res1.conv1", "res1.conv2", "res2.conv1", "res2.conv2"]  # 32 channels: 16-byte rows in fp32 and fp16
    g = torch.Generator().manual_seed(5)
    x = torch.rand(2, 3, 12, 20, generator=g) * 255
    y = FC.make_runner(model, torch.device("cpu"), dtype, conv3x3="tma")(x)
    assert_batch2_matches_model(y, model, x, dtype)


def test_conv3x3_option_picks_the_residual_convs_only(pretrained):
    chain = FC.FusedChain(pretrained, torch.float16, conv3x3="tma")
    assert [layer.name for layer in chain.layers() if layer.tma] == [f"res{b}.conv{c}" for b in range(1, 6)
                                                                     for c in (1, 2)]
    assert not any(layer.tma and layer.prenorm for layer in chain.layers())
    assert not any(layer.tma for layer in FC.FusedChain(pretrained, torch.float16).layers())
    with pytest.raises(ValueError, match="conv3x3 must be one of"):  # before any device check
        FC.make_runner(pretrained, torch.device("meta"), torch.float16, conv3x3="wgmma")


def assert_batch2_matches_model(y, model, x, dtype):
    """fp32: the chain's derived bounds against the module; low precision: PSNR against its fp32 output
    (random init: outputs ~1, not 255, hence the peak). Two different images give two different outputs."""
    if dtype == torch.float32:
        assert_chain_close(y, model, x)
        assert not torch.equal(y[0], y[1])
    else:
        with torch.no_grad():
            y32 = model(x)
        assert psnr_db(y, y32, peak=y32.abs().max().item()) >= 45


@pytest.mark.interpreter
@pytest.mark.parametrize("blocks", [0, 1])
def test_backend_registry_and_stylizer_padding(blocks):
    """Stylizer(backend="fused") resolves through the registry; odd sizes are padded and cropped; with
    no residual blocks deconv1's prologue takes relu(IN3) directly."""
    backends.factory("fused")
    assert backends.TABLE["fused"].factory is FC.make_runner and backends.TABLE["fused"].graphs
    model = narrow_net(blocks=blocks)
    x = torch.rand(1, 3, 9, 13) * 255
    fused = Stylizer(model, backend="fused", precision="fp32", device="cpu")(x)
    eager = Stylizer(narrow_net(blocks=blocks), backend="eager", precision="fp32", device="cpu")(x)
    assert fused.shape == x.shape
    torch.testing.assert_close(fused, eager, rtol=0, atol=2e-3)


@pytest.mark.parametrize("kwargs,reason", [
    (dict(norm="batch"), "norm='instance'"),
    (dict(norm="none"), "norm='instance'"),
    (dict(padding="zero"), "padding='reflect'"),
    (dict(upsampling="transposed"), "upsampling='nearest'"),
])
def test_unsupported_johnson_configs(kwargs, reason):
    with pytest.raises(backends.BackendUnavailable, match=reason):
        FC.make_runner(JohnsonNet(width=8, blocks=1, **kwargs), torch.device("cpu"), torch.float32)


def test_unsupported_arch_and_dtype():
    from instyle.models import PyramidNet

    with pytest.raises(backends.BackendUnavailable, match="Johnson"):
        FC.make_runner(PyramidNet(), torch.device("cpu"), torch.float32)
    with pytest.raises(backends.BackendUnavailable, match="fp32, fp16 and bf16"):
        FC.make_runner(JohnsonNet(width=8, blocks=1), torch.device("cpu"), torch.float64)


def test_chain_is_built_from_the_step_list():
    """The chain runs model.steps(): a straight line of convs, each followed by IN, the last by nothing."""
    m = JohnsonNet(width=8, blocks=2)
    steps = m.steps()
    chain = FC.FusedChain(m, torch.float32)
    assert [L.name for L in chain.layers()] == [s.name for s in steps]
    assert [L.name for L in chain.layers() if L.stores_input] == ["res1.conv1", "res2.conv1"]  # x_0, x_1
    assert [L.name for L in chain.layers() if L.adds_skip] == ["res2.conv1", "deconv1"]        # x_1, x_2
    m.steps = lambda: steps[:2] + [dataclasses.replace(steps[2], srcs=(0,))] + steps[3:]
    with pytest.raises(backends.BackendUnavailable, match="step conv3"):
        FC.FusedChain(m, torch.float32)
    m.steps = lambda: steps[:-1] + [dataclasses.replace(steps[-1], relu=True)]
    with pytest.raises(backends.BackendUnavailable, match="step deconv3"):
        FC.FusedChain(m, torch.float32)


def test_layer_report_flops_and_bytes(capsys):
    """bench/fused_layers: 2.55 TFLOP at 3840x2160 (0.308 MFLOP/px), ~0.9 KB/px minimum traffic in fp16."""
    from instyle.bench import fused_layers

    px = 2160 * 3840
    rows = fused_layers.layer_table(JohnsonNet(), 1, 2160, 3840, "fp16", prenorm="none")
    assert [r["name"] for r in rows][:3] == ["conv1", "conv2", "conv3"] and len(rows) == 16
    flops, moved = sum(r["flops"] for r in rows), sum(r["bytes"] for r in rows)
    assert abs(flops / 2.5512e12 - 1) < 1e-3
    assert 850 < moved / px < 1000  # everything in prologues: ~0.9 KB per pixel, as modelled above
    auto = fused_layers.layer_table(JohnsonNet(), 1, 2160, 3840, "fp16")
    assert [r["name"] for r in auto][-3:] == ["deconv1+pre", "deconv2+pre", "deconv3+pre"]
    assert moved < sum(r["bytes"] for r in auto) < 1.3 * moved  # + one pass over three inputs
    win = fused_layers.layer_table(JohnsonNet(), 1, 2160, 3840, "fp16", first_layer="window")
    assert win[0]["name"] == "conv1+win" and win[1:] == auto[1:]
    # + the padded copy, written and read once: (2160 + 8) x (3840 + 8) x 4 channels x 2 bytes, twice;
    # + the weights padded to 9 rows of 48 (the 243 real ones are zero-padded) x 32 channels x 2 bytes
    assert win[0]["bytes"] - auto[0]["bytes"] == 2 * 2168 * 3848 * 4 * 2 + (9 * 48 - 243) * 32 * 2
    if not torch.cuda.is_available():
        fused_layers.main(["--size", "64x48"])
        assert "timings need CUDA" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------------- GPU


@pytest.mark.gpu
@pytest.mark.parametrize("first_layer", FC.FIRST_LAYER_MODES)
def test_gpu_fp16_psnr_vs_fp32_eager(data, pretrained, first_layer):
    x = photo_crop(data, 256, 256).cuda()
    model = pretrained.cuda()
    with torch.no_grad():
        ref = model.float()(x)
    run = backends.factory("fused")(model, torch.device("cuda"), torch.float16, first_layer=first_layer)
    y = run(x)
    assert psnr_db(y.clamp(0, 255), ref.clamp(0, 255)) >= 45
    torch.testing.assert_close((run(x.clone()), run(x.clone()))[1], y, rtol=0, atol=0)  # a replay = first call


@pytest.mark.gpu
def test_gpu_cuda_graph_replay_and_lru(pretrained):
    model = pretrained.cuda()
    run = backends.factory("fused")(model, torch.device("cuda"), torch.float16)
    assert isinstance(run, GraphCache)
    shapes = [(1, 3, 64, 96), (2, 3, 64, 64)] + [(1, 3, 32 + 4 * i, 32) for i in range(GRAPH_CACHE_SIZE)]
    xs = [torch.rand(s, device="cuda") * 255 for s in shapes]
    first = run(xs[0])
    again = run(xs[0].clone())
    torch.testing.assert_close(again, first, rtol=0, atol=0)  # replay is deterministic (no atomics)
    other = run(xs[0].flip(-1))
    assert not torch.equal(other, first)  # the static input really is refilled
    eager = FC.FusedChain(model, torch.float16)(xs[1])
    torch.testing.assert_close(run(xs[1]), eager, rtol=0, atol=0)
    for x in xs[2:]:
        run(x)  # warm-up call
        run(x)  # capture
    assert len(run.keys()) == GRAPH_CACHE_SIZE and shape_key(xs[0]) not in run.keys()
