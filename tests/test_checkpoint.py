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


# --- odd and hostile checkpoints: one CheckpointError naming the file (and the key), nothing big allocated ---

def _save_raw(path, tensors, config, arch="johnson"):
    from safetensors.torch import save_file

    save_file(tensors, str(path), metadata={"instyle.format": "1", "arch": arch, "config": json.dumps(config),
                                            "style": "", "training": "{}"})
    return path


@pytest.fixture
def builds_on(monkeypatch):
    """Records the default device in force each time checkpoint.load builds a model."""
    from instyle import models

    seen = []
    real = models.build

    def build(arch, config=None):
        seen.append(torch.empty(0).device.type)
        return real(arch, config)

    monkeypatch.setattr(models, "build", build)
    return seen


def test_config_that_disagrees_with_the_weights_is_refused_before_allocating(tmp_path, builds_on):
    model = JohnsonNet(width=8, blocks=1)
    config = {**model.config, "width": 200}  # a few KB of weights that ask for a 200-wide net
    path = _save_raw(tmp_path / "wide.safetensors", model.state_dict(), config)
    with pytest.raises(checkpoint.CheckpointError) as err:
        checkpoint.load(path)
    assert "wide.safetensors: conv1.conv2d.weight: shape [8, 3, 9, 9] in the file" in str(err.value)
    assert "[200, 3, 9, 9]" in str(err.value) and "\n" not in str(err.value)
    assert builds_on and set(builds_on) == {"meta"}, "the model was built for real before the shapes were checked"


def test_stride0_tensor_in_a_pth_is_refused_cheaply(tmp_path, data, builds_on):
    state = torch.load(data / "pretrained" / "random-transformernet.pth", weights_only=True)
    wide = dict(state)
    wide["conv1.conv2d.weight"] = torch.zeros(1).expand(2048, 3, 9, 9)  # 4 bytes that claim width 2048
    torch.save(wide, tmp_path / "wide.pth")
    with pytest.raises(checkpoint.CheckpointError, match=r"wide\.pth: .*shape"):
        checkpoint.load(tmp_path / "wide.pth")
    assert set(builds_on) == {"meta"}
    same = dict(state)
    same["in1.weight"] = torch.ones(1).expand(32)  # the right shape, but not a plain tensor
    torch.save(same, tmp_path / "overlap.pth")
    with pytest.raises(checkpoint.CheckpointError, match=r"overlap\.pth: in1\.weight: .*overlapping strides"):
        checkpoint.load(tmp_path / "overlap.pth")


def test_shape_mismatch_names_the_key(tmp_path):
    model = JohnsonNet(width=8, blocks=1)
    tensors = dict(model.state_dict())
    tensors["res1.in1.weight"] = torch.ones(7)
    path = _save_raw(tmp_path / "bad.safetensors", tensors, model.config)
    with pytest.raises(checkpoint.CheckpointError, match=r"bad\.safetensors: res1\.in1\.weight: shape \[7\] in "
                                                         r"the file, but .* expects \[32\]"):
        checkpoint.load(path)
    del tensors["res1.in1.weight"]
    tensors["extra"] = torch.ones(1)
    _save_raw(path, tensors, model.config)
    with pytest.raises(checkpoint.CheckpointError, match=r"missing res1\.in1\.weight; unexpected extra"):
        checkpoint.load(path)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused(tmp_path, value):
    model = JohnsonNet(width=8, blocks=1)
    with torch.no_grad():
        model.deconv3.conv2d.weight[0, 0, 0, 0] = value
    path = checkpoint.save(model, tmp_path / "diverged.safetensors")
    with pytest.raises(checkpoint.CheckpointError, match=r"diverged\.safetensors: deconv3\.conv2d\.weight: 1 "
                                                         r"non-finite value"):
        checkpoint.load(path)


def test_empty_text_and_list_header_files_are_one_line_errors(tmp_path):
    (tmp_path / "empty.pth").write_bytes(b"")
    (tmp_path / "notes.pth").write_text("these are my notes, not a model\n")
    (tmp_path / "list.safetensors").write_bytes(len(b"[1, 2]").to_bytes(8, "little") + b"[1, 2]")
    cases = {"empty.pth": "empty file", "notes.pth": "neither a zip archive nor a pickle",
             "list.safetensors": "the header is a JSON list"}
    for name, cause in cases.items():
        with pytest.raises(checkpoint.CheckpointError) as err:
            checkpoint.load(tmp_path / name)
        message = str(err.value)
        assert message.startswith(f"{tmp_path / name}: ") and cause in message and "\n" not in message
        assert "code" not in message, "a damaged file is not a malicious one"


def test_bad_checkpoints_via_cli_are_one_line(tmp_path, capsys, data):
    Image = pytest.importorskip("PIL.Image")
    Image.open(data / "content" / "demo" / "chicago.jpg").convert("RGB").resize((16, 12)).save(tmp_path / "p.png")
    model = JohnsonNet(width=4, blocks=0)
    with torch.no_grad():
        model.conv1.conv2d.bias[0] = float("nan")
    nan = checkpoint.save(model, tmp_path / "nan.safetensors")
    (tmp_path / "empty.pth").write_bytes(b"")
    for bad in (nan, tmp_path / "empty.pth"):
        code = main(["stylize", str(tmp_path / "p.png"), "-o", str(tmp_path / "out"), "--model", str(bad),
                     "--backend", "eager", "--device", "cpu"])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 1 and len(err) == 1 and err[0].startswith(f"error: {bad}: "), err
    assert not (tmp_path / "out" / "p.png").exists()


def test_saved_files_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        path = checkpoint.save(JohnsonNet(width=4, blocks=0), tmp_path / "m.safetensors")
    finally:
        os.umask(old)
    assert os.stat(path).st_mode & 0o777 == 0o644


@pytest.mark.parametrize("change", [{"blocks": 10**7}, {"width": 2048}, {"width": 10**12}, {"width": -1},
                                    {"width": "wide"}, {"norm": "quantum"}])
def test_absurd_configs_are_refused_quickly(tmp_path, change):
    import time

    model = JohnsonNet(width=8, blocks=1)
    path = _save_raw(tmp_path / "odd.safetensors", model.state_dict(), {**model.config, **change})
    start = time.monotonic()
    with pytest.raises(checkpoint.CheckpointError, match=r"odd\.safetensors: "):
        checkpoint.load(path)
    assert time.monotonic() - start < 2


def test_config_that_is_not_an_object_is_refused(tmp_path):
    path = _save_raw(tmp_path / "odd.safetensors", JohnsonNet(width=4, blocks=0).state_dict(), [1, 2])
    with pytest.raises(checkpoint.CheckpointError, match="a JSON list, not an object"):
        checkpoint.load(path)
