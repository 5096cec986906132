"""int8 per style (export/ov_per_style.py): under `auto`, a multi-style network's rows run its shipped int8 network
where every style of the row's mix passed the gate, and the float network where one failed; an explicit int8 runs
every row in int8; a warm server has built both before its first request.

To see which network ran a row, the "int8" IR here is a different network (the styles' gamma scaled): its output
is told apart from the float one's by comparing each row with the eager fp32 run of either network."""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
from PIL import Image

from instyle import checkpoint
from instyle.engine import Stylizer, load
from instyle.export import zoo_int8
from instyle.export.cache import weights_digest
from instyle.models import JohnsonNet
from instyle.models.styles import restyle

if importlib.util.find_spec("openvino") is None:
    pytest.skip("openvino is not installed (pip install openvino)", allow_module_level=True)

NAMES = ["calm", "loud", "third"]


@pytest.fixture
def zoo(tmp_path, monkeypatch):
    """A three-style shipped file whose 'int8' IR is another network; the gate passed for calm and third only."""
    from instyle.export import ov_runner

    monkeypatch.setenv("INSTYLE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(ov_runner, "has_int8_dot", lambda: True)
    torch.manual_seed(0)
    net = restyle(JohnsonNet(width=8, blocks=1), 3,
                  lambda old: torch.cat([old, old * 0.5 + 0.3, old * 1.5 - 0.2])).eval()
    other = restyle(net, 3, lambda old: old.view(3, -1).flip(0).reshape(old.shape) * 0.7).eval()
    zoo_file = checkpoint.save(net, tmp_path / "zoo" / "tiny.safetensors",
                               styles=[{"name": n, "source": ""} for n in NAMES])
    monkeypatch.setattr(checkpoint, "shipped", lambda: {"tiny": zoo_file})
    verdicts = {"calm": (True, 44.0), "loud": (False, 37.25), "third": (True, 41.0), "even mix": (True, 42.0)}
    gate = {"styles": {n: {"photos": [], "min_psnr_db": db, "passed": ok, "gate_db": 40.0}
                       for n, (ok, db) in verdicts.items()}, "min_psnr_db": 37.25, "passed": False, "gate_db": 40.0}
    zoo_int8.write(zoo_file, ov_runner.convert(other, "int8"), {"weights_digest": weights_digest(net), "gate": gate})
    return net, other


@pytest.fixture
def photo(data):
    with Image.open(data / "content" / "demo" / "chicago.jpg") as im:
        x = torch.from_numpy(np.asarray(im.convert("RGB"), np.float32)[:53, :71].copy()).permute(2, 0, 1)
    return torch.stack([x, x.flip(-1), x.flip(-2), x])


def eager(net, rows, x):
    return Stylizer(net, backend="eager", precision="fp32")(x, style_weights=rows)


def test_each_row_runs_in_the_network_its_styles_passed_in(zoo, photo):
    net, other = zoo
    st = load("tiny", device="cpu", report=False)
    assert (st.backend, st.precision, st.notes) == ("openvino", "int8", [])
    rows = torch.tensor([[1.0, 0, 0], [0, 1, 0], [0.5, 0, 0.5], [0.5, 0.5, 0]])  # passed, failed, both passed, one not
    got = st(photo, style_weights=rows)
    as_int8, as_float = eager(other, rows, photo), eager(net, rows, photo)
    ran_int8 = [(got[i] - as_int8[i]).abs().max() < 0.05 for i in range(4)]
    ran_float = [(got[i] - as_float[i]).abs().max() < 0.05 for i in range(4)]
    assert ran_int8 == [True, False, True, False] and ran_float == [False, True, False, True]


def test_the_failed_style_alone_runs_float_with_one_note_and_explicit_int8_runs_it_in_int8(zoo, photo):
    from instyle.export import ov_runner

    net, other = zoo
    plain = "bf16" if ov_runner.bf16_supported() else "fp32"
    st = load("loud", device="cpu", report=False)
    assert st.precision == plain
    assert st.notes == [f"int8 failed its 40 dB quality gate for loud 37.2 dB: that style runs {plain}"]
    row = torch.tensor([[0.0, 1, 0]])
    assert (st(photo[:1]) - eager(net, row, photo[:1])).abs().max() < 0.05
    asked = load("loud", precision="int8", device="cpu", report=False)
    assert asked.precision == "int8" and "did not pass its quality gate" in asked.notes[0]
    assert (asked(photo[:1]) - eager(other, row, photo[:1])).abs().max() < 0.05


def test_a_warm_server_switches_styles_without_building_or_compiling(zoo, photo, monkeypatch):
    from instyle.export import ov_runner

    st = load("calm", device="cpu", report=False)
    st.warm()
    builds = []
    real = ov_runner.graph_of
    monkeypatch.setattr(ov_runner, "graph_of", lambda *a, **k: builds.append(a[1]) or real(*a, **k))
    st(photo[:1])  # the first call of this size compiles it for both networks
    compiled = {kind: r.compiled_shapes for kind, r in st._run._runners.items()}
    assert len(compiled) == 2
    for name in NAMES:
        st.set_style(name)
        st(photo[:1])
    assert builds == []
    assert {kind: r.compiled_shapes for kind, r in st._run._runners.items()} == compiled  # no shape compiled again
