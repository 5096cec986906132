"""The int8 model shipped with the zoo (export/zoo_int8.py): it was built from the shipped weights (a stale one fails
here), `auto` runs it on a CPU with int8 dot products, a stale or missing one is one note and a float run, and
`instyle quantize --ship` writes what `auto` then runs."""
import importlib.util
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from instyle import checkpoint
from instyle.cli import main
from instyle.engine import Stylizer, load
from instyle.export import zoo_int8
from instyle.export.cache import sha256_file, weights_digest
from instyle.metrics import psnr_db
from instyle.models import JohnsonNet
from instyle.models.styles import restyle

HAVE_OV = importlib.util.find_spec("openvino") is not None
HAVE_NNCF = HAVE_OV and importlib.util.find_spec("nncf") is not None
needs_ov = pytest.mark.skipif(not HAVE_OV, reason="openvino is not installed (pip install openvino)")


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("INSTYLE_CACHE", str(tmp_path / "cache"))


def multi_style_zoo_files():
    files = [p for p in checkpoint.shipped().values() if len(checkpoint.style_names(checkpoint.read_metadata(p))) > 1]
    if not files:
        pytest.skip("no multi-style file shipped")
    return files


def test_the_shipped_int8_model_was_built_from_the_shipped_zoo():
    """Fails when the zoo's weights change and the IR is not rebuilt (`instyle quantize --ship`)."""
    for zoo_file in multi_style_zoo_files():
        meta = zoo_int8.sidecar(zoo_file)
        assert meta is not None, f"no {zoo_int8.files(zoo_file)[2].name}: run `{zoo_int8.REBUILD}`"
        assert meta["zoo_sha256"] == sha256_file(zoo_file), f"stale: run `{zoo_int8.REBUILD}`"
        assert meta["weights_digest"] == weights_digest(checkpoint.load(zoo_file)[0])
        # the IR is intact and current; a failed gate is allowed (auto then runs float) but must be the recorded one
        failed = sorted(n for n, r in meta["gate"]["styles"].items() if not r["passed"])
        gate_line = f"the shipped int8 model of {zoo_file.name} did not pass its quality gate"
        assert zoo_int8.problems(zoo_file) == ([gate_line] if failed else [])
        assert meta["gate"]["passed"] == (not failed)
        assert set(meta["gate"]["styles"]) >= set(checkpoint.style_names(checkpoint.read_metadata(zoo_file)))


def test_the_shipped_zoo_stays_small():
    zoo = checkpoint.shipped()
    folder = next(iter(zoo.values())).parent
    total = sum(p.stat().st_size for p in folder.iterdir() if p.is_file() and p.suffix != ".py")
    assert total <= 8 * 2**20, f"instyle/zoo holds {total / 2**20:.1f} MiB"


@needs_ov
def test_auto_runs_the_shipped_int8_where_the_cpu_has_int8_dot_products(tmp_path, monkeypatch):
    """A shipped IR runs under auto on an int8-dot CPU for the styles whose gate passed (a copy of the zoo whose
    sidecar records the verdicts); a style whose gate failed runs float with its name and PSNR in one note; with no
    style passed, everything runs float with the reason in one note."""
    from instyle.export import ov_runner

    plain = "bf16" if ov_runner.bf16_supported() else "fp32"
    monkeypatch.setattr(ov_runner, "has_int8_dot", lambda: True)
    copy, (_, _, sidecar) = _copy_zoo(tmp_path, monkeypatch)
    meta = json.loads(sidecar.read_text())
    names = checkpoint.style_names(checkpoint.read_metadata(copy))
    styles = {n: {**r, "passed": n != names[1]} for n, r in meta["gate"]["styles"].items()}
    styles[names[1]]["min_psnr_db"] = 37.25
    sidecar.write_text(json.dumps({**meta, "gate": {**meta["gate"], "styles": styles, "passed": False}}))
    st = load(device="cpu", report=False)
    assert (st.backend, st.precision, st.notes) == ("openvino", "int8", [])
    st.set_style(names[1])
    assert st.precision == plain and st.notes == [f"int8 failed its 40 dB quality gate for {names[1]} 37.2 dB: "
                                                  f"that style runs {plain}"]
    assert load(names[1], device="cpu", report=False).precision == plain
    every_failed = {n: {**r, "passed": False} for n, r in styles.items()}
    sidecar.write_text(json.dumps({**meta, "gate": {**meta["gate"], "styles": every_failed, "passed": False}}))
    st = load(device="cpu", report=False)
    assert (st.backend, st.precision) == ("openvino", plain) and len(st.notes) == 1
    assert "did not pass its quality gate" in st.notes[0]
    sidecar.write_text(json.dumps({**meta, "gate": {**meta["gate"], "passed": True}}))
    st = load(device="cpu", report=False)
    assert (st.backend, st.precision, st.notes) == ("openvino", "int8", [])
    monkeypatch.setattr(ov_runner, "has_int8_dot", lambda: False)
    assert load(device="cpu", report=False).precision == plain


def _copy_zoo(tmp_path, monkeypatch) -> "tuple":
    zoo_file = multi_style_zoo_files()[0]
    folder = tmp_path / "zoo"
    folder.mkdir()
    for src in (zoo_file, *zoo_int8.files(zoo_file)):
        if src.is_file():
            shutil.copy(src, folder / src.name)
    copy = folder / zoo_file.name
    monkeypatch.setattr(checkpoint, "shipped", lambda: {copy.stem: copy})
    return copy, zoo_int8.files(copy)


def _stale(paths):
    side = paths[2]
    meta = json.loads(side.read_text())
    meta["zoo_sha256"], meta["weights_digest"] = "0" * 64, "0" * 64  # built from other weights
    side.write_text(json.dumps(meta))


@needs_ov
@pytest.mark.parametrize("damage,words", [(_stale, "stale"), (lambda p: p[0].unlink(), "missing or damaged"),
                                          (lambda p: p[2].unlink(), "no int8 model shipped")])
def test_a_stale_or_missing_shipped_int8_model_is_one_line_and_runs_float(tmp_path, monkeypatch, capsys, data,
                                                                        damage, words):
    from instyle.export import ov_runner

    _, paths = _copy_zoo(tmp_path, monkeypatch)
    damage(paths)
    monkeypatch.setattr(ov_runner, "has_int8_dot", lambda: True)
    with Image.open(data / "content" / "demo" / "chicago.jpg") as img:
        img.convert("RGB").crop((0, 0, 45, 31)).save(tmp_path / "p.png")
    assert main(["stylize", str(tmp_path / "p.png"), "-o", str(tmp_path / "out")]) == 0
    err = capsys.readouterr().err
    plain = "bf16" if ov_runner.bf16_supported() else "fp32"
    lines = [e for e in err.splitlines() if "int8" in e]
    assert len(lines) == 1 and lines[0].startswith(f"instyle: backend openvino {plain} [") and words in lines[0]
    assert "Traceback" not in err and (tmp_path / "out" / "p.png").is_file()


@pytest.mark.skipif(not HAVE_NNCF, reason="openvino and nncf are not installed (pip install 'instyle[int8]')")
def test_quantize_ship_writes_the_model_auto_runs(tmp_path, monkeypatch, capsys, data):
    """`instyle quantize --ship` on a (tiny, two-style) shipped file: the IR and its sidecar beside it, recording the
    file it was built from; once its gate passed, auto loads it, and it runs close to the eager fp32 model."""
    from instyle.export import ov_runner

    torch.manual_seed(0)
    two = restyle(JohnsonNet(width=8, blocks=1), 2, lambda old: torch.cat([old, old * 0.5])).eval()
    zoo_file = checkpoint.save(two, tmp_path / "zoo" / "tiny.safetensors",
                               styles=[{"name": "a", "source": ""}, {"name": "b", "source": ""}])
    monkeypatch.setattr(checkpoint, "shipped", lambda: {"tiny": zoo_file})
    held_out = tmp_path / "held-out"
    held_out.mkdir()
    (held_out / "chicago.jpg").symlink_to(data / "content" / "demo" / "chicago.jpg")
    assert main(["quantize", "--ship", "--crops", "6", "--side", "40", "--held-out", str(held_out),
                 "--check-side", "64"]) == 0
    out = capsys.readouterr()
    assert "wrote tiny.int8.xml" in out.err and "even mix" in out.out
    xml, bin_, side = zoo_int8.files(zoo_file)
    meta = json.loads(side.read_text())
    assert meta["zoo_sha256"] == sha256_file(zoo_file) and meta["xml_sha256"] == sha256_file(xml)
    assert meta["recipe"]["crops"] == 6 and meta["weights_digest"] == weights_digest(checkpoint.load(zoo_file)[0])
    meta["gate"]["passed"] = True  # a random net's gate says nothing; what auto does once it passed does
    side.write_text(json.dumps(meta))
    monkeypatch.setattr(ov_runner, "has_int8_dot", lambda: True)
    st = load("tiny", device="cpu", report=False)
    assert (st.backend, st.precision, st.style_input) == ("openvino", "int8", True)
    x = torch.from_numpy(np.asarray(Image.open(held_out / "chicago.jpg").convert("RGB"), np.float32)[:61, :75].copy())
    x = x.permute(2, 0, 1)[None]
    ref = Stylizer(checkpoint.load(zoo_file)[0], backend="eager", precision="fp32")(x)
    assert 25.0 <= psnr_db(st(x), ref) < float("inf")
    assert main(["quantize", "--ship", "--model", str(data / "pretrained" / "random-transformernet.pth")]) == 2
    assert "not one" in capsys.readouterr().err
