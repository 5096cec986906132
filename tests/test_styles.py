"""Several styles in one network (conditional instance norm): models, mixes, baking, and the style controls."""
import copy
import json

import pytest
import torch
from conftest import need

import instyle
from instyle import checkpoint, models
from instyle.engine import Stylizer, controls
from instyle.models.norm import ConditionalInstanceNorm2d
from instyle.models.styles import StyleError, bake, mix_weights

NAMES = ["a", "b", "c"]


@pytest.fixture(autouse=True)
def _inference():
    """Inference only in this file (a fixture, so the rest of the session keeps autograd)."""
    with torch.no_grad():
        yield


def multi(styles=3, seed=0, **config):
    """A small multi-style Johnson net whose per-style (gamma, beta) rows really differ."""
    torch.manual_seed(seed)
    m = models.build("johnson", dict(width=8, blocks=1, styles=styles, **config))
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, ConditionalInstanceNorm2d):
                mod.weight.normal_(1, 0.4)
                mod.bias.normal_(0, 0.4)
        m.deconv3.conv2d.bias.fill_(127.5)
    return m.eval()


def photo(data, h=45, w=61):
    from instyle import io

    photo = io.to_tensor([io.read_image(need(data / "content" / "demo" / "chicago.jpg"))])
    return photo[:, :, 100:100 + h, 200:200 + w]


def one_hot(i, n=1, s=3):
    w = torch.zeros(n, s)
    w[:, i] = 1
    return w


def test_single_style_model_is_unchanged():
    """S = 1 keeps plain InstanceNorm2d layers, the TransformerNet keys and the old config."""
    m = models.build("johnson")
    assert "styles" not in m.config
    assert all(not isinstance(x, ConditionalInstanceNorm2d) for x in m.modules())
    assert m.state_dict()["in1.weight"].shape == (32,)
    with pytest.raises(ValueError, match="single-style"):
        m(torch.rand(1, 3, 16, 16), torch.ones(1, 2) / 2)


def test_multi_style_layout_and_default_style():
    m = multi()
    assert m.state_dict()["res1.in2.weight"].shape == (3, 32)
    x = torch.rand(2, 3, 20, 28) * 255
    torch.testing.assert_close(m(x), m(x, one_hot(0, 2)))
    assert not torch.allclose(m(x, one_hot(0, 2)), m(x, one_hot(1, 2)))
    with pytest.raises(ValueError, match="N x 3"):
        m(x, torch.ones(2, 2))
    with pytest.raises(ValueError, match="instance"):
        models.build("johnson", dict(styles=2, norm="batch"))


def test_pyramid_multi_style():
    torch.manual_seed(1)
    p = models.build("pyramid", dict(ratios=[4, 2, 1], channels=4, styles=2))
    x = torch.rand(2, 3, 16, 16) * 255
    a, b = p(x, one_hot(0, 2, 2)), p(x, one_hot(1, 2, 2))
    assert a.shape == x.shape and torch.allclose(a, b)  # identical rows at init: the same output
    with torch.no_grad():
        p.scales[0][2].weight[1].mul_(3)
    assert not torch.allclose(p(x, one_hot(0, 2, 2)), p(x, one_hot(1, 2, 2)))


def test_mix_weight_one_on_a_style_is_that_style(data):
    m = multi()
    x = photo(data)
    for i in range(3):
        single = bake(m, mix_weights(NAMES, NAMES[i]))
        assert isinstance(single.in1, torch.nn.InstanceNorm2d)
        assert (single(x) - m(x, one_hot(i))).abs().max() <= 1e-3


def test_mixes_are_continuous_and_convex(data):
    m = multi()
    x = photo(data)
    with torch.no_grad():
        outs = [m(x, torch.tensor([[1 - t, t, 0.0]])) for t in torch.linspace(0, 1, 6).tolist()]
    steps = [float((b - a).abs().mean()) for a, b in zip(outs, outs[1:])]
    total = float((outs[-1] - outs[0]).abs().mean())
    assert total > 0.1 and max(steps) < 0.5 * total  # each 0.2 step moves the output a part of the way
    assert mix_weights(NAMES, {"a": 2, "c": 2}).tolist() == [0.5, 0.0, 0.5]


def test_per_sample_weights_in_one_batch(data):
    m = multi()
    x = photo(data).expand(3, -1, -1, -1).contiguous()
    w = torch.tensor([[1.0, 0, 0], [0, 0, 1], [0.3, 0.3, 0.4]])
    batch = m(x, w)
    for i in range(3):
        assert (batch[i:i + 1] - m(x[i:i + 1], w[i:i + 1])).abs().max() <= 1e-3


def test_unknown_styles_are_style_errors():
    with pytest.raises(StyleError, match="known: a, b, c"):
        mix_weights(NAMES, "zzz")
    with pytest.raises(StyleError, match="out of range"):
        mix_weights(NAMES, 7)
    with pytest.raises(StyleError, match="positive sum"):
        mix_weights(NAMES, {"a": 0})


def test_checkpoint_roundtrip_lists_styles(tmp_path):
    m = multi()
    path = checkpoint.save(m, tmp_path / "m.safetensors", style="a",
                           styles=[{"name": n, "source": f"{n}.jpg"} for n in NAMES])
    meta = checkpoint.read_metadata(path)
    assert checkpoint.style_names(meta) == NAMES and json.loads(meta["config"])["styles"] == 3
    loaded, _ = checkpoint.load(path)
    x = torch.rand(1, 3, 24, 24) * 255
    torch.testing.assert_close(loaded(x, one_hot(2)), m(x, one_hot(2)))


def stylizer(m, **kw):
    meta = {"styles": json.dumps([{"name": n, "source": ""} for n in NAMES]), "style": "a"}
    return Stylizer(copy.deepcopy(m), backend="eager", precision="fp32", tile="off", metadata=meta, **kw)


@pytest.fixture(scope="module")
def trained():
    """The shipped multi-style model (trained by the project): outputs that are really stylized."""
    zoo = checkpoint.shipped()
    if not zoo:
        pytest.skip("no shipped model")
    model, meta = checkpoint.load(next(iter(zoo.values())))
    if getattr(model, "styles", 1) < 2:
        pytest.skip("the shipped model holds one style")
    return Stylizer(model.float(), backend="eager", precision="fp32", tile="off", metadata=meta)


def test_stylizer_style_and_mix(data):
    m = multi()
    x = photo(data, 44, 60)
    s = stylizer(m, style="b")
    assert s.style == "b" and s.style_names == NAMES
    torch.testing.assert_close(s(x), m(x, one_hot(1)).clamp(0, 255), atol=1e-3, rtol=0)
    s.set_style(mix={"a": 1, "c": 3})
    assert s.style == "a=0.25,c=0.75"
    torch.testing.assert_close(s(x), m(x, torch.tensor([[0.25, 0, 0.75]])).clamp(0, 255), atol=1e-3, rtol=0)
    with pytest.raises(StyleError):
        s.set_style("nope")


def test_strength(data, trained):
    s = trained
    x = photo(data)
    full = s(x)
    assert (s(x, strength=0) - x).abs().max() <= 1
    torch.testing.assert_close(s(x, strength=0.5), (full + x) / 2, atol=1e-3, rtol=0)
    with pytest.raises(ValueError, match="strength"):
        s(x, strength=1.5)


def test_preserve_color_keeps_input_chroma_and_stylized_luma(data, trained):
    s = trained
    x = photo(data)
    full, kept = s(x), s(x, preserve_color=True)
    yx, yf, yk = controls.to_ycbcr(x), controls.to_ycbcr(full), controls.to_ycbcr(kept)
    assert float((yk[:, 1:] - yx[:, 1:]).abs().mean()) <= 2  # chroma of the input
    assert float((yk[:, :1] - yf[:, :1]).abs().mean()) <= 2  # luma of the stylized image
    assert float((yf[:, 1:] - yx[:, 1:]).abs().mean()) > 4   # (the style did change the colours)


def test_ycbcr_roundtrip():
    x = torch.rand(2, 3, 5, 7) * 255
    torch.testing.assert_close(controls.to_rgb(controls.to_ycbcr(x)), x, atol=1e-3, rtol=0)


def test_style_scale_keeps_size_and_changes_strokes(data, trained):
    s = trained
    x = photo(data, 64, 96)
    big = s(x, style_scale=2)
    assert big.shape == x.shape
    assert float((big - s(x)).abs().mean()) > 1
    # strokes 2x larger: the same as stylizing the half-size image and enlarging it
    half = s(controls.resize(x, (32, 48)))
    torch.testing.assert_close(big, controls.resize(half, (64, 96)), atol=1e-3, rtol=0)


def test_load_shipped_style_by_name():
    zoo = checkpoint.shipped_styles()
    if len(zoo) < 2:
        pytest.skip("no multi-style file shipped")
    names = list(zoo)
    s = instyle.load(names[1], backend="eager", device="cpu")
    assert s.style == names[1] and s.style_names[:2] == names[:2]
    default = instyle.load(backend="eager", device="cpu")
    assert default.style == names[0]


@pytest.mark.parametrize("backend", [pytest.param("triton", marks=pytest.mark.interpreter), "onnxruntime"])
def test_backends_agree_with_eager_for_a_mix(data, backend):
    if backend == "onnxruntime":
        pytest.importorskip("onnxruntime")
        pytest.importorskip("onnxscript")
    m = multi()
    x = photo(data, 36, 44)
    mix = {"a": 0.2, "c": 0.8}
    ref = stylizer(m, mix=mix)(x)
    meta = {"styles": json.dumps([{"name": n, "source": ""} for n in NAMES])}
    s = Stylizer(copy.deepcopy(m), backend=backend, precision="fp32", tile="off", metadata=meta, mix=mix)
    assert (s(x) - ref).abs().max() <= 2e-2


@pytest.mark.parametrize("backend", ["eager", pytest.param("triton", marks=pytest.mark.interpreter), "onnxruntime"])
def test_mixed_batch_each_sample_its_own_weights(data, backend):
    """style_weights N x S: every backend matches the eager multi-style forward, sample by sample."""
    if backend == "onnxruntime":
        pytest.importorskip("onnxruntime")
        pytest.importorskip("onnxscript")
    m = multi()
    x = photo(data, 36, 44).expand(4, -1, -1, -1).contiguous() * torch.tensor([1.0, 0.9, 0.8, 1.0]).view(4, 1, 1, 1)
    w = torch.tensor([[1.0, 0, 0], [0, 0, 2], [1, 1, 0], [1.0, 0, 0]])  # rows 0 and 3 share a mix
    ref = m(x, w / w.sum(1, keepdim=True)).clamp(0, 255)
    meta = {"styles": json.dumps([{"name": n, "source": ""} for n in NAMES])}
    s = Stylizer(copy.deepcopy(m), backend=backend, precision="fp32", tile="off", metadata=meta)
    out = s(x, style_weights=w)
    assert (out - ref).abs().max() <= 2e-2
    assert len(s._mix_cache) == (0 if s.style_input else 3)  # style as an input: the batch in one network
    with pytest.raises(StyleError, match="N x S"):
        s(x, style_weights=torch.ones(4, 2))


@pytest.mark.parametrize("control,flag", [("strength", "--strength"), ("style_scale", "--style-scale")])
def test_control_ranges_are_the_same_for_the_cli_and_the_library(tmp_path, capsys, control, flag, data):
    """Each end of the range is accepted by Stylizer and by `instyle stylize`; just past it both refuse, the CLI
    with one usage line (exit 2) before any work."""
    from instyle.cli import main
    from instyle.specs import CONTROL_RANGES

    low, high = CONTROL_RANGES[control]
    for value in (low, high):
        Stylizer(multi(), backend="eager", tile="off", **{control: value})
    src = data / "content" / "demo" / "chicago.jpg"
    for value in (low - 0.01, high + 0.01, float("nan")):
        with pytest.raises(ValueError, match=f"{control} must be between {low:g} and {high:g}"):
            Stylizer(multi(), backend="eager", tile="off", **{control: value})
        assert main(["stylize", str(src), "-o", str(tmp_path), flag, str(value)]) == 2
        err = capsys.readouterr().err.strip()
        assert err == f"instyle stylize: error: {flag} must be between {low:g} and {high:g}, got {value}", err
        assert not any(tmp_path.iterdir())
