"""Checkpoints: safetensors round trip, metadata without torch, .pth import, refusing code-executing pickles."""
import json
import os
import subprocess
import sys

import pytest
import torch

from instyle import checkpoint
from instyle.cli import main
from instyle.models import JohnsonNet, PyramidNet


@pytest.mark.parametrize("model", [JohnsonNet(width=8, blocks=1, upsampling="transposed", padding="zero"),
                                   PyramidNet(ratios=(4, 2, 1), norm="batch")])
def test_safetensors_round_trip_is_identical(tmp_path, model):
    model.eval()
    path = checkpoint.save(model, tmp_path / "m.safetensors", style="test", training={"iterations": 3})
    loaded, meta = checkpoint.load(path)
    x = torch.rand(1, 3, 32, 32) * 255
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    assert meta["arch"] == model.arch and json.loads(meta["config"]) == model.config
    assert json.loads(meta["training"]) == {"iterations": 3}


def test_metadata_readable_without_torch(tmp_path):
    path = checkpoint.save(JohnsonNet(width=4, blocks=0), tmp_path / "m.safetensors", style="mosaic")
    code = ("import sys; sys.modules['torch'] = None\n"
            "from instyle.checkpoint import read_metadata\n"
            f"print(read_metadata({str(path)!r})['style'])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "mosaic"


def test_pth_import_drops_legacy_running_stats(data):
    src = data / "pretrained" / "random-transformernet.pth"
    raw = torch.load(src, weights_only=True)
    assert any("running_mean" in k for k in raw), "fixture should carry the legacy keys"
    model, meta = checkpoint.load(src)
    assert json.loads(meta["config"])["upsampling"] == "nearest"
    for k, v in model.state_dict().items():
        assert torch.equal(v, raw[k]), k


def test_convert_cli(data, tmp_path):
    dst = tmp_path / "random.safetensors"
    assert main(["convert", str(data / "pretrained" / "random-transformernet.pth"), str(dst), "--fp16"]) == 0
    model, meta = checkpoint.load(dst)
    assert meta["style"] == "random-transformernet"
    assert os.path.getsize(dst) < 4_000_000  # fp16: about half the .pth


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_code_executing_pickle_is_refused(tmp_path, capsys, data):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.jpg").write_bytes((data / "content" / "demo" / "chicago.jpg").read_bytes())
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pth"
    torch.save({"conv1.conv2d.weight": _Payload(marker)}, evil)
    with pytest.raises(checkpoint.CheckpointError, match="refused"):
        checkpoint.load(evil)
    assert main(["stylize", str(tmp_path / "in"), "--model", str(evil), "-o", str(tmp_path / "o")]) == 1
    assert not marker.exists(), "the payload ran"
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and "evil.pth" in err[-1]


def test_bad_model_files_are_one_line_errors(tmp_path):
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 3)
    with pytest.raises(checkpoint.CheckpointError, match="junk.safetensors: not a safetensors file"):
        checkpoint.load(junk)
    with pytest.raises(checkpoint.CheckpointError, match="no such model file"):
        checkpoint.resolve(tmp_path / "missing.pth")
    wrong = tmp_path / "wrong.pth"
    torch.save({"foo": torch.zeros(1)}, wrong)
    with pytest.raises(checkpoint.CheckpointError, match="not a pytorch/examples TransformerNet"):
        checkpoint.load(wrong)
