"""bench/reproduce.py: the paper's comparisons (IN vs BN, reflect vs zero padding) end to end at a tiny budget, and
its two figures checked against what they must say on constructed cases."""
from __future__ import annotations

import json

import pytest
import torch

from instyle.bench.reproduce import border_error, flatness


def _photos(data, n=2):
    return sorted((data / "content" / "demo").glob("*.jpg"))[:n]


def test_border_error_is_zero_for_a_network_without_borders_and_sees_a_painted_frame(data):
    photos = _photos(data)
    clean = border_error(lambda x: x * 0.5, photos, side=64, margin=16, band=8)
    assert clean["band"] == clean["interior"] == clean["excess"] == 0

    def framed(x):  # what a padding artifact looks like: the outer 4 px of any input painted black
        y = x.clone()
        y[..., :4, :] = y[..., -4:, :] = 0
        y[..., :, :4] = y[..., :, -4:] = 0
        return y

    r = border_error(framed, photos, side=64, margin=16, band=8)
    assert r["interior"] == 0 and r["band"] > 10 and r["excess"] == r["band"]


def test_flatness_compares_the_last_quarter_with_the_one_before(tmp_path):
    path = tmp_path / "log.csv"
    rows = [(s, 100.0 if s <= 50 else 100.0 if s <= 75 else 90.0) for s in range(5, 105, 5)]
    path.write_text("step,total\n" + "".join(f"{s},{v}\n" for s, v in rows))
    r = flatness(path)
    assert r == {"last_quarter_drop": 0.1, "flattened": False}
    path.write_text("step,total\n" + "".join(f"{s},100\n" for s in range(5, 105, 5)))
    assert flatness(path) == {"last_quarter_drop": 0.0, "flattened": True}


@pytest.mark.slow
def test_reproduce_end_to_end_at_a_tiny_budget(tmp_path, data):
    from instyle import checkpoint
    from instyle.bench.reproduce import main

    out = tmp_path / "repro"
    assert main(["--out", str(out), "--steps", "2", "--size", "64", "--photos", "2", "--sides", "64,96",
                 "--runs", "johnson-in,johnson-bn,johnson-in-zero"]) == 0
    result = json.loads((out / "results.json").read_text())
    assert result["setup"]["steps"] == 2 and result["setup"]["style"] == "candy.jpg"
    assert list(result["runs"]) == ["johnson-in", "johnson-bn", "johnson-in-zero"]
    for name, run in result["runs"].items():
        model, meta = checkpoint.load(out / name / "model.safetensors")
        assert json.loads(meta["training"])["iterations"] == 2
        assert set(run["gate"]) == {"64", "96"} and run["gate"]["64"]["photos"] == 2
    assert json.loads(checkpoint.read_metadata(out / "johnson-bn" / "model.safetensors")["config"])["norm"] == "batch"
    bn, _ = checkpoint.load(out / "johnson-bn" / "model.safetensors")
    assert bn.in1.running_mean.abs().sum() > 0, "batch norm kept running statistics to be evaluated with"
    table = (out / "table.md").read_text().splitlines()
    assert len(table) == 5 and all(line.count("|") == table[0].count("|") for line in table)
    for picture in ("curves.png", "norm-johnson.jpg", "padding-border.jpg", "resolutions.jpg"):
        assert (out / picture).stat().st_size > 1000
    # a second run finds the model trained and only scores it again
    before = checkpoint.load(out / "johnson-in" / "model.safetensors")[0].conv1.conv2d.weight
    stamp = (out / "johnson-in" / "model.safetensors").stat().st_mtime_ns
    assert main(["--out", str(out), "--steps", "2", "--size", "64", "--photos", "2", "--sides", "64",
                 "--runs", "johnson-in"]) == 0
    assert (out / "johnson-in" / "model.safetensors").stat().st_mtime_ns == stamp
    assert torch.equal(checkpoint.load(out / "johnson-in" / "model.safetensors")[0].conv1.conv2d.weight, before)
