"""A multi-style model runs through one network per backend with the style as an input: per-sample mixes of the
shipped zoo, at odd sizes on real photos, equal the baked eager fp32 result (fp32 within 1 on 0..255; bf16 and
int8 within the int8 gate), and switching among every shipped style, a mix or a batch of mixes builds nothing."""
import importlib.util

import numpy as np
import pytest
import torch
from PIL import Image

from instyle import checkpoint
from instyle.engine import Stylizer, backends, load
from instyle.metrics import psnr_db
from instyle.models.styles import bake

HAVE_OV = importlib.util.find_spec("openvino") is not None
HAVE_ORT = all(importlib.util.find_spec(p) is not None for p in ("onnxruntime", "onnx", "onnxscript"))
FP32_MAX_ABS = 1.0  # 0..255: the same network, reassociated arithmetic
LOW_MIN_PSNR = 40.0  # bf16 and int8: the int8 gate (export/int8_recipe.py GATE_DB)
SIZE = (203, 157)  # H, W: odd, not a stride multiple


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("INSTYLE_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def zoo():
    path, _ = checkpoint.resolve_style(None)
    model, meta = checkpoint.load(path)
    if model.styles < 3:
        pytest.skip("the shipped zoo holds fewer than three styles")
    return model.float().eval(), meta


@pytest.fixture(scope="module")
def photos(data):
    """Four real photos, cropped to SIZE: one batch."""
    names = ["demo/chicago.jpg", "demo/amber.jpg", "demo/hoovertowernight.jpg", "train/bsds_train_100075.jpg"]
    crops = []
    for name in names:
        with Image.open(data / "content" / name) as img:
            crops.append(np.asarray(img.convert("RGB"), dtype=np.float32)[7:7 + SIZE[0], 11:11 + SIZE[1]])
    return torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).contiguous()


def rows(styles: int) -> torch.Tensor:
    """Four per-sample mixes: the first style, the last, a two-style mix, the even mix of all."""
    w = torch.zeros(4, styles)
    w[0, 0], w[1, -1], w[2, 1], w[2, 2] = 1, 1, 0.3, 0.7
    w[3] = 1 / styles
    return w


def baked_eager(model, x, w):
    """The reference: each sample through the eager fp32 network with its own mix baked in."""
    return torch.cat([Stylizer(bake(model, row), backend="eager", precision="fp32", tile="off")(x[i:i + 1])
                      for i, row in enumerate(w)])


def _cases():
    yield "eager", "fp32"
    yield pytest.param("onnxruntime", "fp32", marks=pytest.mark.skipif(not HAVE_ORT, reason="needs instyle[onnx]"))
    for precision in ("fp32", "bf16", "int8", "auto"):  # auto: int8 per style, the gate's failed styles float
        yield pytest.param("openvino", precision, marks=pytest.mark.skipif(not HAVE_OV, reason="needs openvino"))


@pytest.mark.parametrize("backend,precision", list(_cases()))
def test_per_sample_mixes_equal_the_baked_eager_result(zoo, photos, backend, precision):
    model, meta = zoo
    if precision == "bf16":
        from instyle.export import ov_runner

        if not ov_runner.bf16_supported():
            pytest.skip("this CPU reports no BF16 capability to OpenVINO (bf16 would run fp32)")
    if precision == "int8":
        from instyle.export import zoo_int8

        if zoo_int8.find(model)[0] is None:
            pytest.skip(f"no usable shipped int8 model: {zoo_int8.find(model)[1]}")
    if precision == "auto":
        from instyle.export import ov_runner

        if ov_runner.auto_precision(torch.device("cpu"), model)[0] != "int8":
            pytest.skip("auto runs no int8 here (no int8 dot products, or no style passed the shipped gate)")
    w = rows(model.styles)
    st = Stylizer(model, backend=backend, precision=precision, metadata=meta, tile="off")
    assert st.style_input and st.precision == ("int8" if precision == "auto" else precision)
    got = st(photos, style_weights=w)
    ref = baked_eager(model, photos, w)
    assert got.shape == photos.shape
    one = st(photos[:1])  # the Stylizer's own style: the first, through the same network
    for i, (y, want) in enumerate([*zip(got, ref), (one[0], ref[0])]):
        if precision == "fp32":
            d = (y - want).abs().max().item()
            assert d <= FP32_MAX_ABS, f"sample {i}: max |delta| {d:.3g} > {FP32_MAX_ABS}"
        else:
            p = psnr_db(y[None], want[None])
            assert p >= LOW_MIN_PSNR, f"sample {i}: {p:.1f} dB < {LOW_MIN_PSNR}"


def _count_builds(monkeypatch) -> list[str]:
    built = []
    real = backends.factory

    def counting(name):
        make = real(name)

        def build(*args, **kwargs):
            built.append(name)
            return make(*args, **kwargs)

        return build

    monkeypatch.setattr(backends, "factory", counting)
    return built


@pytest.mark.parametrize("backend", [
    "eager",
    pytest.param("openvino", marks=pytest.mark.skipif(not HAVE_OV, reason="needs openvino")),
    pytest.param("onnxruntime", marks=pytest.mark.skipif(not HAVE_ORT, reason="needs instyle[onnx]"))])
def test_switching_among_every_shipped_style_builds_nothing(zoo, monkeypatch, backend):
    """One build at load; then every shipped style in turn, a mix, and a batch of mixes run through it."""
    model, meta = zoo
    built = _count_builds(monkeypatch)
    if backend == "openvino":  # compilations, cached or not
        from instyle.export import ov_runner

        compiled = []
        real = ov_runner.graph_of
        monkeypatch.setattr(ov_runner, "graph_of", lambda *a, **k: compiled.append(1) or real(*a, **k))
    st = Stylizer(model, backend=backend, precision="fp32", metadata=meta, tile="off")
    x = torch.rand(2, 3, 37, 45) * 255
    outputs = []
    for name in st.style_names:
        st.set_style(name)
        assert st.style == name
        outputs.append(st(x))
    st.set_style(mix={st.style_names[0]: 1, st.style_names[1]: 2})
    st(x)
    calls, run = [], st._run
    st._run = lambda *a: calls.append(a[1].shape) or run(*a)
    st(torch.cat([x, x]), style_weights=rows(model.styles))  # a micro-batch of four mixes: one call of the network
    assert calls == [(4, model.styles)]
    assert built == [backend]
    if backend == "openvino":  # one graph; compiled per input shape (two here), never per style
        assert len(compiled) == 1 and run.compiled_shapes == 2
    assert all((a - b).abs().max() > 1 for a, b in zip(outputs, outputs[1:]))  # the styles really differ


@pytest.mark.skipif(not HAVE_OV, reason="needs openvino")
def test_auto_builds_the_network_requests_use_once(zoo, monkeypatch):
    """The default load (auto) of the shipped zoo: the network it builds serves every style afterwards."""
    built = _count_builds(monkeypatch)
    st = load(device="cpu", tile="off", report=False)
    assert st.backend == "openvino" and st.style_input
    for name in st.style_names:
        st.set_style(name)
        st(torch.rand(1, 3, 33, 35) * 255)
    assert built == ["openvino"]
