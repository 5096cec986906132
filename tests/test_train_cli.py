"""Training with the real VGG file and real photos: layer outputs vs a plain functional VGG, file
resolution and conventions, and `instyle train|gatys|texture` end to end (a few steps, tiny sizes)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from conftest import need
from PIL import Image
from test_train_core import one_thread  # noqa: F401  (autouse fixture: one thread on a busy machine)

from instyle import checkpoint
from instyle.cli import main
from instyle.train.vgg import VGGFeatures, VGGWeightsError, load_vgg, resolve_path


def functional_vgg16(x_rgb255, state, layers):
    """VGG-16 written out with torch.nn.functional, caffe convention (BGR, 0..255, minus mean)."""
    mean = torch.tensor([103.939, 116.779, 123.68]).view(1, 3, 1, 1)
    h = x_rgb255.flip(1) - mean
    convs = [0, 2, None, 5, 7, None, 10, 12, 14, None, 17, 19, 21, None, 24, 26, 28]
    names = ["1_1", "1_2", None, "2_1", "2_2", None, "3_1", "3_2", "3_3", None, "4_1", "4_2", "4_3", None,
             "5_1", "5_2", "5_3"]
    out = {}
    for idx, name in zip(convs, names):
        if idx is None:
            h = F.max_pool2d(h, 2, 2)
            continue
        h = F.relu(F.conv2d(h, state[f"features.{idx}.weight"].float(), state[f"features.{idx}.bias"].float(),
                            padding=1))
        if f"relu{name}" in layers:
            out[f"relu{name}"] = h
        if len(out) == len(layers):
            return out
    return out


def test_real_vgg_matches_functional_forward(data):
    from safetensors.torch import load_file

    path = need(data / "vgg" / "vgg16-features.safetensors")
    layers = ["relu1_1", "relu2_2", "relu3_3", "relu4_2", "relu5_1"]
    vgg = load_vgg(layers, path)
    assert (vgg.arch, vgg.convention) == ("vgg16", "caffe") and len(vgg.features) == 26
    g = torch.Generator().manual_seed(0)
    x = torch.rand(1, 3, 40, 36, generator=g) * 255
    got = vgg(x)
    want = functional_vgg16(x, load_file(str(path)), layers)
    for name in layers:
        assert got[name].shape == want[name].shape
        torch.testing.assert_close(got[name], want[name], rtol=1e-4, atol=1e-3)
    # the fp16 device bundle: same weights to fp16 rounding, conv1_1..conv4_3 only
    bundle = need(data / "device-bundle" / "vgg16-features-relu4_3-fp16.safetensors")
    small = load_vgg(["relu2_2"], bundle)
    assert small.convention == "caffe"
    torch.testing.assert_close(small(x)["relu2_2"], got["relu2_2"], rtol=2e-2, atol=0.5)
    with pytest.raises(VGGWeightsError, match="conv5_1"):
        load_vgg(["relu5_1"], bundle)


def test_vgg_file_resolution_and_torchvision_pth(tmp_path, monkeypatch):
    monkeypatch.setenv("INSTYLE_DATA", str(tmp_path / "nothing"))
    monkeypatch.delenv("INSTYLE_VGG", raising=False)
    with pytest.raises(VGGWeightsError, match="vgg16-397923af.pth"):
        resolve_path(None)
    with pytest.raises(VGGWeightsError, match="no such VGG weights file"):
        resolve_path(tmp_path / "missing.pth")
    # a torchvision-layout .pth (random weights) in a folder named by $INSTYLE_VGG: RGB 0..1 mean/std input
    ref = VGGFeatures(["relu2_1"], widths=(64, 128, 256, 512, 512))
    torch.manual_seed(0)
    for p in ref.parameters():
        p.data.normal_(0, 0.05)
    folder = tmp_path / "weights"
    folder.mkdir()
    torch.save({f"features.{k}": v for k, v in ref.features.state_dict().items()}, folder / "vgg16-397923af.pth")
    monkeypatch.setenv("INSTYLE_VGG", str(folder))
    vgg = load_vgg(["relu2_1"])
    assert vgg.convention == "torchvision"
    x = torch.rand(1, 3, 8, 8) * 255
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    torch.testing.assert_close(vgg(x)["relu2_1"], ref.features((x / 255 - mean) / std))
    assert load_vgg(["relu2_1"], convention="caffe").convention == "caffe"  # the flag overrides


def test_cli_train_end_to_end_and_resume(data, tmp_path, capsys):
    vgg = need(data / "vgg" / "vgg16-features.safetensors")
    content = need(data / "content" / "train")
    out = tmp_path / "mosaic.safetensors"
    argv = ["train", "--style", str(need(data / "styles" / "mosaic.jpg")), "--data", str(content),
            "--max-images", "4", "--out", str(out), "--iterations", "3", "--batch-size", "2", "--image-size", "32",
            "--width", "8", "--blocks", "1", "--workers", "0", "--style-size", "64", "--checkpoint-every", "2",
            "--sample-every", "3", "--log-every", "1", "--vgg", str(vgg), "--style-layers", "relu1_2,relu2_2",
            "--no-progress"]
    assert main(argv) == 0
    model, meta = checkpoint.load(out)
    training = json.loads(meta["training"])
    assert meta["style"] == "mosaic" and training["iterations"] == 3 and training["images"] == 4
    assert training["data"] == str(content) and training["losses"]["style_layers"] == ["relu1_2", "relu2_2"]
    assert training["vgg"]["convention"] == "caffe" and set(training["final_losses"]) >= {"content", "style"}
    assert "git_rev" in training
    y = model(torch.rand(1, 3, 32, 32) * 255)
    assert y.shape == (1, 3, 32, 32) and torch.isfinite(y).all()
    assert (tmp_path / "mosaic.samples" / "00000003.png").is_file()
    assert main([*argv[:-1], "--iterations", "4", "--resume", "--no-progress"]) == 0
    assert json.loads(checkpoint.read_metadata(out)["training"])["iterations"] == 4
    rows = (tmp_path / "mosaic.log.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows] == ["step", "1", "2", "3", "4"]
    assert main(argv) == 1  # a fresh run would overwrite the earlier run's state
    assert "--overwrite" in capsys.readouterr().err
    assert main(["train", "--style", "nope.jpg", "--data", str(content), "--out", str(out)]) == 2
    assert main(["train", "--style", str(data / "styles" / "mosaic.jpg"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "--data" in err


def test_a_wide_generator_checkpoints_and_resumes(data, tmp_path):
    """--width 64: Adam's moments beside the checkpoint are ~27 MB (bf16, two per weight); a trainer saves what it
    trains, whatever its size, and --resume goes on from the checkpoint."""
    from instyle.train.adam_state import adam_path

    out = tmp_path / "wide.safetensors"
    argv = ["train", "--style", str(need(data / "styles" / "mosaic.jpg")),
            "--data", str(need(data / "content" / "demo")), "--max-images", "2", "--out", str(out),
            "--iterations", "2", "--batch-size", "1", "--image-size", "32",
            "--width", "64", "--workers", "0", "--style-size", "64", "--checkpoint-every", "2", "--sample-every", "0",
            "--vgg", str(need(data / "vgg" / "vgg16-features.safetensors")), "--style-layers", "relu1_2,relu2_2",
            "--no-progress"]
    assert main(argv) == 0
    model, meta = checkpoint.load(out)
    assert json.loads(meta["config"])["width"] == 64 and json.loads(meta["training"])["iterations"] == 2
    assert adam_path(out).stat().st_size > 16 * 2**20  # over what a GPU loan's returned file may hold
    assert main([*argv[:-1], "--iterations", "3", "--resume", "--no-progress"]) == 0
    resumed, meta = checkpoint.load(out)
    assert json.loads(meta["training"])["iterations"] == 3
    assert not torch.equal(resumed.conv1.conv2d.weight, model.conv1.conv2d.weight)  # it went on training


def test_cli_gatys_and_texture(data, tmp_path, capsys):
    vgg = need(data / "vgg" / "vgg16-features.safetensors")
    out = tmp_path / "g.png"
    assert main(["gatys", str(need(data / "content" / "demo" / "chicago.jpg")), str(data / "styles" / "candy.jpg"),
                 "-o", str(out), "--steps", "6", "--size", "32", "--style-size", "48", "--vgg", str(vgg),
                 "--style-layers", "relu1_2,relu2_2", "--optimizer", "adam"]) == 0
    assert Image.open(out).size == (32, 21)
    assert "loss" in capsys.readouterr().out
    model_path = tmp_path / "tex.safetensors"
    assert main(["train", "--mode", "texture", "--arch", "pyramid", "--ratios", "4,2,1", "--channels", "4",
                 "--style", str(data / "styles" / "candy.jpg"), "--out", str(model_path), "--iterations", "2",
                 "--batch-size", "1", "--image-size", "32", "--style-size", "48", "--vgg", str(vgg),
                 "--style-layers", "relu1_1,relu2_1", "--no-progress", "--sample-every", "0"]) == 0
    png = tmp_path / "t.png"
    assert main(["texture", "--model", str(model_path), "--size", "50x30", "-o", str(png)]) == 0
    assert Image.open(png).size == (50, 30)
    assert main(["texture", "--model", str(model_path), "--size", "5xq", "-o", str(png)]) == 2
    assert main(["train", "--mode", "texture", "--style", str(data / "styles" / "candy.jpg"),
                 "--out", str(model_path)]) == 2


def test_torn_state_write_by_kill(tmp_path):
    """A process killed (SIGKILL) in the middle of writing the state never corrupts the last good one."""
    script = f"""
import os, signal, sys, torch
sys.path.insert(0, {os.path.dirname(__file__)!r})
torch.set_num_threads(1)
from test_train_core import tiny_loss
from instyle.train import state as S
from instyle.train.trainer import TrainConfig, Trainer
cfg = TrainConfig(style="s.png", out={str(tmp_path / "k.safetensors")!r}, arch="pyramid", mode="texture",
                  model_config=dict(ratios=[2, 1], channels=2), image_size=16, batch_size=1, iterations=4,
                  checkpoint_every=2, sample_every=0, progress=False)
tr = Trainer(cfg, tiny_loss(texture=True))
real = torch.save
calls = []
def dying_save(obj, f, *a, **k):
    calls.append(1)
    real(obj, f, *a, **k)
    if len(calls) == 2:  # the second checkpoint: half the bytes, then the process dies
        data = open(f, "rb").read()
        open(f, "wb").write(data[: len(data) // 2])
        os.kill(os.getpid(), signal.SIGKILL)
S.torch.save = dying_save
tr.fit()
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == -9, proc.stderr[-2000:]
    from instyle.train.state import load_state

    assert load_state(tmp_path / "k.state.pt")["step"] == 2
    model, _ = checkpoint.load(tmp_path / "k.safetensors")
    assert model.mode == "texture"


def test_two_style_model_end_to_end(tmp_path, data, capsys):
    """train 2 styles -> checkpoint lists them -> stylize --style/--mix -> ONNX export -> onnxruntime parity."""
    styles = [need(data / "styles" / "candy.jpg"), need(data / "styles" / "udnie.jpg")]
    out = tmp_path / "two.safetensors"
    args = ["train", "--style", str(styles[0]), "--style", f"{styles[1]}:2.5", "--data", str(data / "content" / "demo"),
            "--out", str(out), "--iterations", "3", "--batch-size", "2", "--image-size", "32", "--workers", "0",
            "--width", "4", "--blocks", "1", "--style-size", "64", "--log-every", "1", "--sample-every", "3",
            "--no-progress", "--vgg", str(need(data / "vgg" / "vgg16-features.safetensors"))]
    assert main(args) == 0
    meta = checkpoint.read_metadata(out)
    assert checkpoint.style_names(meta) == ["candy", "udnie"]
    assert json.loads(meta["styles"])[1]["source"] == "udnie.jpg"
    losses = json.loads(meta["training"])["losses"]  # several styles: balanced by Gram magnitude, udnie x2.5
    assert losses["style_balance"] == "gram" and losses["style_multipliers"] == [1.0, 2.5]
    assert main([*args[:4], f"{styles[1]}:-1", *args[5:]]) == 2
    assert "the weight multiplier must be a positive number, got '-1'" in capsys.readouterr().err
    header = (tmp_path / "two.log.csv").read_text().splitlines()[0]
    assert header.endswith("style_candy,style_udnie")
    assert (tmp_path / "two.samples" / "00000003.png").is_file()
    photo = tmp_path / "in" / "p.png"
    photo.parent.mkdir()
    Image.open(need(data / "content" / "demo" / "amber.jpg")).convert("RGB").crop((0, 0, 45, 37)).save(photo)
    outs = {}
    for flag in (["--style", "udnie"], ["--style", "1"], ["--mix", "candy=1,udnie=3"], ["--style", "candy"]):
        o = tmp_path / f"o{len(outs)}"
        assert main(["stylize", str(photo), "--model", str(out), "--backend", "eager", "-o", str(o), *flag]) == 0
        outs[" ".join(flag)] = torch.tensor(list(Image.open(o / "p.png").getdata())).float()
    assert torch.equal(outs["--style udnie"], outs["--style 1"])
    assert not torch.equal(outs["--style udnie"], outs["--style candy"])
    assert main(["stylize", str(photo), "--model", str(out), "--style", "wave", "-o", str(tmp_path / "x")]) == 2
    assert "unknown style 'wave' (known: candy, udnie)" in capsys.readouterr().err
    # the ONNX route: the engine bakes the chosen mix; onnxruntime agrees with eager
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from instyle.engine import load

    x = torch.rand(1, 3, 36, 44) * 255
    ref = load(str(out), backend="eager", device="cpu", mix={"candy": 1, "udnie": 3})(x)
    ort = load(str(out), backend="onnxruntime", device="cpu", mix={"candy": 1, "udnie": 3})(x)
    assert (ort - ref).abs().max() <= 1e-2


def test_finetune_adds_a_style_and_trains_only_its_rows(tmp_path, data):
    """--finetune: the base model's convolutions and style rows stay bit for bit; the new rows move."""
    from instyle.models.norm import ConditionalInstanceNorm2d

    base = tmp_path / "base.safetensors"
    common = ["--data", str(data / "content" / "demo"), "--batch-size", "2", "--image-size", "32", "--workers", "0",
              "--style-size", "64", "--no-progress", "--vgg", str(need(data / "vgg" / "vgg16-features.safetensors"))]
    assert main(["train", "--style", str(need(data / "styles" / "candy.jpg")), "--style",
                 str(need(data / "styles" / "udnie.jpg")), "--out", str(base), "--iterations", "2", "--width", "4",
                 "--blocks", "1", *common]) == 0
    out = tmp_path / "three.safetensors"
    assert main(["train", "--finetune", str(base), "--style", str(need(data / "styles" / "wave.jpg")), "--out",
                 str(out), "--iterations", "3", "--lr", "0.05", "--width", "4", "--blocks", "1", *common]) == 0
    old, _ = checkpoint.load(base)
    new, meta = checkpoint.load(out)
    assert checkpoint.style_names(meta) == ["candy", "udnie", "wave"] and new.styles == 3
    moved = False
    for (name, a), (_, b) in zip(old.state_dict().items(), new.state_dict().items()):
        owner = new.get_submodule(name.rpartition(".")[0])
        if isinstance(owner, ConditionalInstanceNorm2d):
            assert torch.equal(a, b[:2]), name      # the base styles' rows are untouched
            moved |= not torch.allclose(b[2], a.mean(0))  # the new row has learnt
        else:
            assert torch.equal(a, b), name          # shared weights are frozen
    assert moved


def test_finetune_runs_for_minutes_and_gates_the_new_style(tmp_path, data, capsys):
    """--finetune without --iterations trains for a time budget (--minutes) and ends with the zoo's gate for the
    new style only: one line with its figures, which match train/zoo.py's gate of the written model."""
    from instyle.train import zoo

    base = tmp_path / "base.safetensors"
    vgg = need(data / "vgg" / "vgg16-features.safetensors")
    demo = data / "content" / "demo"
    common = ["--data", str(demo), "--batch-size", "2", "--workers", "0", "--style-size", "64", "--no-progress",
              "--vgg", str(vgg)]
    assert main(["train", "--style", str(need(data / "styles" / "candy.jpg")), "--style",
                 str(need(data / "styles" / "udnie.jpg")), "--out", str(base), "--iterations", "2", "--width", "4",
                 "--blocks", "1", "--image-size", "32", *common]) == 0
    capsys.readouterr()
    out = tmp_path / "three.safetensors"
    wave = need(data / "styles" / "wave.jpg")
    assert main(["train", "--finetune", str(base), "--style", str(wave), "--out", str(out), "--minutes", "0.01",
                 "--image-size", "32", *common]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("gate:")]
    assert len(lines) == 1 and lines[0].startswith("gate: wave: ")
    training = json.loads(checkpoint.read_metadata(out)["training"])
    assert training["iterations"] >= 1 and training["losses"]["style_balance"] == "gram"
    photos = sorted(demo.iterdir())
    ref = zoo.gate(out, data, photos, side=384, device="cpu", only=["wave"], style_images={"wave": wave},
                   vgg_path=vgg, style_size=64)["styles"]["wave"]
    assert f"style ratio {ref['gram_ratio_median']:.3f}" in lines[0]
    assert ("passed" if ref["passed"] else "falls short") in lines[0]


def test_init_warm_starts_every_weight_with_rows_matched_by_name(tmp_path, data, capsys):
    """--init: the run starts from the base's weights, its style rows picked by name (a new style from the
    mean row), and then every weight trains; a generator setting that differs from the base is one line."""
    from instyle.models.norm import ConditionalInstanceNorm2d
    from instyle.train.finetune import warm_start

    base = tmp_path / "base.safetensors"
    common = ["--data", str(data / "content" / "demo"), "--batch-size", "2", "--image-size", "32", "--workers", "0",
              "--style-size", "64", "--no-progress", "--vgg", str(need(data / "vgg" / "vgg16-features.safetensors"))]
    styles = {n: str(need(data / "styles" / f"{n}.jpg")) for n in ("candy", "udnie", "wave")}
    assert main(["train", "--style", styles["candy"], "--style", styles["udnie"], "--out", str(base),
                 "--iterations", "2", "--width", "4", "--blocks", "1", *common]) == 0
    old, _ = checkpoint.load(base)
    start, record = warm_start(base, "johnson", {"width": 4, "blocks": 1}, ["udnie", "wave"])
    assert record["kept"] == ["udnie"] and record["styles"] == ["candy", "udnie"] and record["iterations"] == 2
    for (name, a), (_, b) in zip(old.state_dict().items(), start.state_dict().items()):
        if isinstance(start.get_submodule(name.rpartition(".")[0]), ConditionalInstanceNorm2d):
            assert torch.equal(b[0], a[1].float()) and torch.allclose(b[1], a.float().mean(0)), name
        else:
            assert torch.equal(a, b), name

    out = tmp_path / "more.safetensors"
    assert main(["train", "--init", str(base), "--style", styles["udnie"], "--style", styles["wave"], "--out",
                 str(out), "--iterations", "2", "--lr", "0.05", "--width", "4", "--blocks", "1", *common]) == 0
    new, meta = checkpoint.load(out)
    assert checkpoint.style_names(meta) == ["udnie", "wave"]
    assert json.loads(meta["training"])["init"]["file"] == "base.safetensors"
    assert not torch.equal(new.conv1.conv2d.weight, start.conv1.conv2d.weight)  # shared weights train too
    capsys.readouterr()
    assert main(["train", "--init", str(base), "--style", styles["wave"], "--out", str(tmp_path / "w.safetensors"),
                 "--iterations", "1", "--width", "8", "--blocks", "1", *common]) == 1
    err = capsys.readouterr().err.strip()
    assert "--init" in err and "width=4" in err and "width=8" in err and len(err.splitlines()) == 1
    assert main(["train", "--init", str(base), "--finetune", str(base), "--style", styles["wave"], "--out",
                 str(tmp_path / "w.safetensors"), *common]) == 2
    assert "exclude each other" in capsys.readouterr().err


@pytest.mark.slow
def test_zoo_cli_trains_resumes_gates_and_ships_only_when_better(tmp_path, data, monkeypatch):
    """python -m instyle.train.zoo_cli end to end at a tiny budget from the shipped zoo: the phase's model, the
    gate files with the shipped zoo beside the new one on the same photos, a rerun skips the finished phase, and
    --ship replaces the zoo file only when train/zoo.py's `better` says so."""
    from instyle.paths import ZOO_DIR
    from instyle.train import zoo_cli

    need(data / "vgg" / "vgg16-features.safetensors")
    shipped = tmp_path / "zoo.safetensors"
    shipped.write_bytes((ZOO_DIR / "styles.safetensors").read_bytes())
    monkeypatch.setattr(zoo_cli, "_shipped_zoo", lambda: shipped)
    out = tmp_path / "run"
    argv = ["--out", str(out), "--init", str(shipped), "--phases", "16:1", "--gate-photos", "1", "--report-photos",
            "0", "--ship"]
    before = shipped.read_bytes()
    assert zoo_cli.main(argv) == 0
    model = out / "phase1-16" / "train" / "styles.safetensors"
    assert json.loads(checkpoint.read_metadata(model)["training"])["iterations"] == 1
    gate = json.loads((out / "gate.json").read_text())
    assert gate["new"]["photos"] == gate["shipped"]["photos"] and len(gate["new"]["photos"]) == 1
    assert set(gate["shipped"]["styles"]) <= set(gate["new"]["styles"])  # a style the zoo lacks would be new
    assert "lattice_median" in gate["new"]["styles"]["candy"]
    assert (shipped.read_bytes() != before) == gate["decision"]["better"]
    stamp = model.stat().st_mtime_ns
    assert zoo_cli.main(argv[:-1]) == 0  # the phase is done: skipped, only the gate runs again
    assert model.stat().st_mtime_ns == stamp
