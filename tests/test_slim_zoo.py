"""The slim zoo (instyle/zoo/slim.safetensors): a twin of the full zoo with the same styles in the same rows and
>= 3x fewer FLOPs per pixel, distilled by this project's code and gated; `auto` runs it on a CPU without AMX, and
nothing else is ever swapped."""
import json

import pytest

from instyle import checkpoint, cpu
from instyle.paths import ZOO_DIR

FULL, SLIM = ZOO_DIR / f"{checkpoint.FULL_ZOO}.safetensors", ZOO_DIR / f"{checkpoint.SLIM_ZOO}.safetensors"


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("INSTYLE_CACHE", str(tmp_path / "cache"))


def test_the_slim_zoo_is_the_full_ones_twin_trained_here_and_gated():
    from instyle.bench.flops import count

    assert checkpoint.slim_twin(FULL) == SLIM
    assert checkpoint.shipped_styles()["candy"][0] == FULL, "a style name means the full network's row"
    assert next(iter(checkpoint.shipped())) == checkpoint.FULL_ZOO, "the full network stays the default file"
    meta = checkpoint.read_metadata(SLIM)
    training = json.loads(meta["training"])
    assert training["gate"] == "passed"
    assert training["losses"]["distill_weight"] > 0, "distilled by train/losses.py"
    slim, full = checkpoint.load(SLIM)[0], checkpoint.load(FULL)[0]
    ratio = count(full)["total"] / count(slim)["total"]
    assert ratio >= 3, f"the slim zoo saves only {ratio:.2f}x FLOPs per pixel"


def _load(model, monkeypatch, amx: bool):
    from instyle.engine import load

    monkeypatch.setattr(cpu, "has_amx", lambda: amx)
    return load(model, backend="auto", device="cpu", report=False)


@pytest.mark.parametrize("model", [None, "mosaic"])
def test_auto_on_a_cpu_without_amx_runs_the_slim_twin_and_says_so(model, monkeypatch):
    s = _load(model, monkeypatch, amx=False)
    assert s.source.config["width"] == checkpoint.load(SLIM)[0].config["width"] < 32
    assert "slim zoo" in s.choice and f"--model {checkpoint.FULL_ZOO}" in s.choice
    assert s.style_names[s.weights.argmax()] == (model or s.style_names[0])


def test_with_amx_or_a_named_file_the_full_network_runs(monkeypatch):
    assert _load("mosaic", monkeypatch, amx=True).source.config["width"] == 32
    assert "slim" not in _load("mosaic", monkeypatch, amx=True).choice
    assert _load(checkpoint.FULL_ZOO, monkeypatch, amx=False).source.config["width"] == 32
    assert _load(str(FULL), monkeypatch, amx=False).source.config["width"] == 32


def test_a_onednn_cap_below_amx_counts_as_no_amx(monkeypatch):
    monkeypatch.setattr(cpu, "isa", lambda: ("avx512f", "avx512_vnni", "amx_tile", "amx_int8", "amx_bf16"))
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    assert cpu.has_amx()
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_BF16")
    assert not cpu.has_amx()
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_AMX")
    assert cpu.has_amx()
    monkeypatch.setattr(cpu, "isa", lambda: ("avx2",))
    assert not cpu.has_amx()


def test_an_explicit_int8_runs_the_shipped_ir_even_where_its_gate_failed(data):
    import torch

    from instyle.engine import load
    from instyle.export import zoo_int8
    from instyle.io import read_image, to_tensor
    from instyle.metrics import psnr_db

    pytest.importorskip("openvino")
    x = to_tensor([read_image(data / "content" / "demo" / "chicago.jpg")]).float()[..., :96, :128]
    s = load("slim", backend="openvino", precision="int8", device="cpu", report=False)
    assert s.precision == "int8"
    if not zoo_int8.sidecar(SLIM)["gate"]["passed"]:
        assert any("did not pass its quality gate" in n for n in s.notes)
    ref = load("slim", backend="eager", precision="fp32", device="cpu", report=False)
    with torch.no_grad():
        assert psnr_db(s(x), ref(x)) >= 30
