"""int8 for the openvino backend: NNCF quantization of a narrow generator on real photo crops, its cache entry
and quality report, the gate `auto` reads, and the one-line refusals (nncf missing, nothing cached)."""
import importlib.util
import json
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from instyle.cli import main
from instyle.engine import BackendUnavailable, Stylizer, load
from instyle.metrics import psnr_db
from instyle.models import JohnsonNet
from instyle.models.styles import restyle

HAVE = all(importlib.util.find_spec(p) is not None for p in ("openvino", "nncf"))
pytestmark = pytest.mark.skipif(not HAVE, reason="openvino and nncf are not installed (pip install 'instyle[int8]')")
TINY = dict(crops=6, side=40)  # a calibration set that quantizes in a second or two
MIN_PSNR = 25.0  # int8 of a narrow random net vs its fp32 self on photos: far above noise, far below identical


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("INSTYLE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def narrow(seed=0):
    torch.manual_seed(seed)
    return JohnsonNet(width=8, blocks=1).eval()


@pytest.fixture
def dirs(data):
    return data / "content" / "train", sorted((data / "content" / "demo").glob("*.jpg"))[:2]


def photo(path, h, w):
    with Image.open(path) as img:
        a = np.asarray(img.convert("RGB"), dtype=np.float32)[:h, :w]
    return torch.from_numpy(a.copy()).permute(2, 0, 1)[None].contiguous()


def test_calibration_set_is_seeded_real_crops(dirs):
    from instyle.export.int8_recipe import Recipe
    from instyle.export.ov_quant import calibration_set

    a, b = calibration_set(Recipe(**TINY), dirs[0]), calibration_set(Recipe(**TINY), dirs[0])
    c = calibration_set(Recipe(seed=1, **TINY), dirs[0])
    assert len(a) == TINY["crops"] and a[0].shape == (1, 3, 40, 40) and a[0].dtype == np.float32
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))
    assert 0 <= min(x.min() for x in a) and max(x.max() for x in a) <= 255 and np.std(a[0]) > 1  # photo content


def test_quantize_caches_reports_and_runs(dirs):
    from instyle.export import ov_quant, ov_runner
    from instyle.export.int8_recipe import Recipe

    net, recipe = narrow(), Recipe(**TINY)
    report, hit = ov_quant.build(net, recipe, dirs[0], dirs[1], max_side=96)
    (style,) = report["styles"].values()
    assert not hit and [r["photo"] for r in style["photos"]] == [p.name for p in dirs[1]]
    assert report["passed"] == style["passed"] == (report["min_psnr_db"] >= 40.0)
    again, hit = ov_quant.build(net, recipe, dirs[0], dirs[1], max_side=96)
    assert hit and again == report
    assert ov_runner.int8_entry(net, recipe)["recipe"]["crops"] == TINY["crops"]


def _quantized_inputs(q):
    """{op type: how many of its inputs a FakeQuantize feeds} and, per conv (in order), whether its data input
    is quantized (directly or through the Pad before it)."""
    from collections import Counter

    fed, convs = Counter(), []
    for op in q.get_ordered_ops():
        if op.get_type_name() == "FakeQuantize":
            for t in op.output(0).get_target_inputs():
                fed[t.get_node().get_type_name()] += 1
        if op.get_type_name() == "Convolution":
            src = op.input_value(0).get_node()
            if src.get_type_name() == "Pad":
                src = src.input_value(0).get_node()
            convs.append(src.get_type_name() == "FakeQuantize")
    return fed, convs


def test_recipe_decides_what_stays_float(dirs):
    """Default: the first convs (RGB, downsampling) read float, every other conv int8, and
    nothing of the instance norms is quantized (NNCF's own default quantizes the norms' inputs, which cost candy
    ~8 dB); each switch does what it says."""
    from instyle.export import ov_quant
    from instyle.export.int8_recipe import Recipe

    fed, convs = _quantized_inputs(ov_quant.quantize(narrow(), Recipe(**TINY), dirs[0]))
    head = Recipe().float_head
    assert not any(convs[:head]) and all(convs[head:]), convs
    assert set(fed) <= {"Pad", "Convolution", "Interpolate"}, fed  # nearest x2 of int8 is exact
    fed, convs = _quantized_inputs(ov_quant.quantize(narrow(), Recipe(float_norms=False, **TINY), dirs[0]))
    assert {"MVN", "Multiply"} & set(fed), fed  # the recipe's switch is what keeps them out
    _, convs = _quantized_inputs(ov_quant.quantize(narrow(), Recipe(float_head=0, ignore_last_conv=True, **TINY),
                                                   dirs[0]))
    assert convs[0] and not convs[-1] and all(convs[1:-1]), convs


def test_int8_stylizer_runs_the_cached_model(dirs, monkeypatch):
    from instyle.export import int8_recipe, ov_quant

    net = narrow()
    ov_quant.build(net, int8_recipe.Recipe(**TINY), dirs[0], dirs[1][:1], max_side=64)
    monkeypatch.setattr("instyle.export.ov_runner.Recipe", lambda: int8_recipe.Recipe(**TINY))
    st = Stylizer(net, backend="openvino", precision="int8")
    assert st.precision == "int8"
    x = photo(dirs[1][0], 53, 71)  # odd: the engine pads to the stride multiple
    ref = Stylizer(narrow(), backend="eager", precision="fp32")(x)
    got = st(x)
    assert got.shape == x.shape and 0 <= got.min() and got.max() <= 255
    assert MIN_PSNR <= psnr_db(got, ref) < float("inf")


def test_cache_key_follows_recipe_and_model():
    from instyle.export.int8_recipe import Recipe
    from instyle.export.ov_runner import entry_path

    base = entry_path(narrow(), "int8", Recipe())
    assert entry_path(narrow(), "int8", Recipe()) == base
    assert entry_path(narrow(), "int8", Recipe(crops=299)) != base
    assert entry_path(narrow(), "int8", Recipe(ignore_last_conv=True)) != base
    assert entry_path(narrow(seed=1), "int8", Recipe()) != base
    assert entry_path(narrow(), "bf16") != base


def _set_gate(net, recipe, passed, per_style=None):
    """Overwrite the cached entry's verdicts: overall `passed`, every style the same unless `per_style` {name: bool}."""
    from instyle.export import ov_runner

    sidecar = ov_runner.entry_path(net, "int8", recipe).with_suffix(".json")
    meta = json.loads(sidecar.read_text())
    meta["gate"]["passed"] = passed
    for name, row in meta["gate"].get("styles", {}).items():
        row["passed"] = (per_style or {}).get(name, passed)
    sidecar.write_text(json.dumps(meta))


def test_a_multi_style_network_is_quantized_once_and_gated_per_style(dirs, monkeypatch):
    """One cache entry for the whole two-style network (style_weights an input), a report per style and for the even
    mix; auto picks int8 for the styles whose gate passed (the others run float), and with every verdict passed every
    style, mix and per-sample mix runs through that one int8 network, each close to the baked eager fp32 result."""
    from instyle.export import ov_quant, ov_runner
    from instyle.export.int8_recipe import Recipe
    from instyle.models.styles import bake

    recipe = Recipe(**TINY)
    monkeypatch.setattr(ov_runner, "Recipe", lambda: recipe)
    two = restyle(narrow(), 2, lambda old: torch.cat([old, old * 0.5]))
    cpu = torch.device("cpu")
    plain = "bf16" if ov_runner.bf16_supported() else "fp32"
    assert ov_runner.auto_precision(cpu, two)[0] == plain  # nothing cached: never quantizes
    report, _ = ov_quant.build(two, recipe, dirs[0], dirs[1][:1], names=["a", "b"], max_side=64)
    assert list(report["styles"]) == ["a", "b", ov_quant.EVEN_MIX]
    assert len(list(ov_runner.entry_path(two, "int8", recipe).parent.glob("*-int8-*.xml"))) == 1
    _set_gate(two, recipe, False)
    assert ov_runner.auto_precision(cpu, two)[0] == plain
    _set_gate(two, recipe, False, {"a": True})  # one style passed: it runs int8, the other float
    assert ov_runner.auto_precision(cpu, two)[0] == "int8"
    assert load(two, device="cpu", style=0, report=False).precision == "int8"
    assert load(two, device="cpu", style=1, report=False).precision == plain
    _set_gate(two, recipe, True)
    assert ov_runner.auto_precision(cpu, two)[0] == "int8"
    st = load(two, backend="auto", device="cpu", style=1, report=False)
    assert (st.backend, st.precision, st.style_input) == ("openvino", "int8", True)
    x = photo(dirs[1][0], 40, 48).repeat(3, 1, 1, 1)
    w = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]])
    got = st(x, style_weights=w)
    for i, row in enumerate(w):
        ref = Stylizer(bake(two, row), backend="eager", precision="fp32")(x[i:i + 1])
        assert MIN_PSNR <= psnr_db(got[i:i + 1], ref) < float("inf")
    st.set_style(0)
    assert st.precision == "int8" and not st._mix_cache


def test_explicit_int8_without_a_cached_model_is_one_line():
    with pytest.raises(BackendUnavailable, match="instyle quantize") as e:
        Stylizer(narrow(), backend="openvino", precision="int8")
    assert "\n" not in str(e.value)


def test_auto_with_int8_asked_names_the_missing_quantized_model(tmp_path, capsys, model_path, data):
    """backend auto tries only backends that run the precision asked: int8 is openvino's refusal, not eager's."""
    with pytest.raises(BackendUnavailable, match="instyle quantize"):
        load(narrow(), backend="auto", device="cpu", precision="int8", report=False)
    out = tmp_path / "out.jpg"
    photo_path = sorted((data / "content" / "demo").glob("*.jpg"))[0]
    assert main(["stylize", str(photo_path), "--model", str(model_path), "--precision", "int8", "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "instyle quantize" in err and "eager" not in err
    assert not out.exists()


def test_nncf_missing_is_one_line_and_bf16_still_runs(monkeypatch, capsys, model_path):
    monkeypatch.setitem(sys.modules, "nncf", None)  # import nncf -> ImportError
    assert main(["quantize", "--model", str(model_path), "--crops", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "nncf" in err and "pip install 'instyle[int8]'" in err
    st = load(narrow(), backend="auto", device="cpu", report=False)
    assert st.backend == "openvino" and st.precision in ("bf16", "fp32")


def test_quantize_cli_prints_the_report(dirs, capsys, model_path, tmp_path):
    demo = tmp_path / "held-out"
    demo.mkdir()
    (demo / dirs[1][0].name).symlink_to(dirs[1][0])
    args = ["quantize", "--model", str(model_path), "--crops", "3", "--side", "32", "--held-out", str(demo),
            "--check-side", "64"]
    assert main(args + ["--json"]) == 0
    out = capsys.readouterr()
    report = json.loads(out.out)
    (entry,) = report.values()
    assert entry["photos"][0]["photo"] == dirs[1][0].name and not entry["cached"]
    assert "gate (>= 40 dB" in out.err
    assert main(args) == 0
    assert "[cached]" in capsys.readouterr().out


def test_quantize_cli_refuses_bad_arguments(capsys, model_path, data):
    assert main(["quantize", "--model", str(model_path), "--crops", "0"]) == 2
    assert "positive" in capsys.readouterr().err
    train = data / "content" / "train"
    assert main(["quantize", "--model", str(model_path), "--held-out", str(train)]) == 2
    assert "held-out" in capsys.readouterr().err


def test_int8_picture_panels_are_bf16_int8_and_the_amplified_difference():
    from instyle.bench.int8_picture import DIFF_GAIN, panels

    a = torch.full((1, 3, 5, 7), 100.0)
    b = a.clone()
    b[0, 1, 2, 3] = 110.4  # rounds to 110: |Δ| 10
    im = np.asarray(panels(a, b))
    assert im.shape == (5, 21, 3)
    assert (im[:, :7] == 100).all() and im[2, 7 + 3, 1] == 110
    diff = im[:, 14:].astype(int)
    assert diff[2, 3, 1] == 10 * DIFF_GAIN and diff.sum() == 10 * DIFF_GAIN
