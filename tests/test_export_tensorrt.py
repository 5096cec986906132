"""TensorRT export: profile strings and buckets (pure Python), sidecar, and engine build/run when possible."""
import importlib.util
import json

import pytest
import torch

from instyle.cli import main
from instyle.export import tensorrt as trt_export

HAS_TRT = importlib.util.find_spec("tensorrt") is not None


@pytest.mark.parametrize("text,expected", [
    ("256x256:1024x1024:1024x1024", ((1, 3, 256, 256), (1, 3, 1024, 1024), (4, 3, 1024, 1024))),
    ("1x3x256x256:1x3x1024x1024:4x3x1024x1024", ((1, 3, 256, 256), (1, 3, 1024, 1024), (4, 3, 1024, 1024))),
    ("8x8:1280X720:1x3x1080x1920", ((1, 3, 8, 8), (1, 3, 720, 1280), (1, 3, 1080, 1920))),
    ("16x8:1920x1080:1920x1080", ((1, 3, 8, 16), (1, 3, 1080, 1920), (4, 3, 1080, 1920))),  # WxH: width first
])
def test_parse_profile(text, expected):
    assert trt_export.parse_profile(text, max_batch=4) == expected


@pytest.mark.parametrize("text,needle", [
    ("256x256:1024x1024", "MIN:OPT:MAX"),
    ("256:1024x1024:1024x1024", "WxH or NxCxHxW"),
    ("1x4x8x8:1x4x8x8:1x4x8x8", "3 channels"),
    ("0x8:8x8:8x8", ">= 1"),
    ("64x64:32x32:128x128", "MIN <= OPT <= MAX"),
    ("2x3x64x64:1x3x64x64:4x3x64x64", "MIN <= OPT <= MAX"),
    ("4x4:8x8:8x8", "H and W >= 8"),
    ("a:b:c", "WxH or NxCxHxW"),
])
def test_parse_profile_rejects(text, needle):
    with pytest.raises(ValueError, match=needle.replace("(", r"\(")) as info:
        trt_export.parse_profile(text, min_size=8)
    assert "\n" not in str(info.value)


def test_profile_round_trip():
    p = trt_export.parse_profile("1x3x8x8:2x3x64x96:4x3x128x128")
    assert trt_export.parse_profile(trt_export.format_profile(p)) == p


def test_default_buckets_and_pick():
    profiles = trt_export.default_profiles(min_size=8, max_batch=2)
    assert [p[2][2:] for p in profiles] == [(1024, 1024), (1920, 1920), (3840, 3840)]
    assert all(p[0] == (1, 3, 8, 8) and p[2][0] == 2 for p in profiles)
    pick = trt_export.pick_profile
    assert pick(profiles, (1, 3, 512, 512)) == 0
    assert pick(profiles, (2, 3, 1024, 1024)) == 0
    assert pick(profiles, (1, 3, 1080, 1920)) == 1
    assert pick(profiles, (1, 3, 1920, 1080)) == 1  # portrait fits the same bucket
    assert pick(profiles, (1, 3, 2160, 3840)) == 2
    with pytest.raises(ValueError, match="fits no optimization profile"):
        pick(profiles, (1, 3, 4000, 4000))
    with pytest.raises(ValueError, match="fits no optimization profile"):
        pick(profiles, (3, 3, 64, 64))


def test_sidecar_hashes_the_onnx(tmp_path):
    import hashlib

    src = tmp_path / "m.onnx"
    src.write_bytes(b"not really onnx")
    side = trt_export.engine_sidecar("10.x", trt_export.default_profiles(), "fp16", src)
    assert side["onnx_sha256"] == hashlib.sha256(b"not really onnx").hexdigest()
    assert side["precision"] == "fp16" and side["tensorrt"] == "10.x"
    assert side["profiles"][0] == "1x3x8x8:1x3x1024x1024:1x3x1024x1024"
    json.dumps(side)


@pytest.mark.skipif(HAS_TRT, reason="tensorrt is installed: the missing-package error cannot be shown")
def test_cli_without_tensorrt_is_one_clear_error(tmp_path, capsys):
    assert main(["export", "tensorrt", "--model", "m.onnx", "-o", str(tmp_path / "m.engine")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: TensorRT is not installed") and len(err.splitlines()) == 1
    assert not list(tmp_path.iterdir())


def test_backend_unavailable_without_cuda_or_tensorrt():
    from instyle.engine import BackendUnavailable
    from instyle.export import trt_runner
    from instyle.models import JohnsonNet

    with pytest.raises(BackendUnavailable, match="CUDA device"):
        trt_runner.make_runner(JohnsonNet(width=4, blocks=0), torch.device("cpu"), torch.float16)


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_TRT, reason="tensorrt is not installed (pip install 'instyle[tensorrt]')")
def test_engine_matches_eager(tmp_path, monkeypatch):
    from instyle.engine import Stylizer
    from instyle.models import JohnsonNet

    monkeypatch.setenv("INSTYLE_CACHE", str(tmp_path))
    torch.manual_seed(0)
    model = JohnsonNet(width=8, blocks=1).eval()
    x = torch.rand(3, 3, 67, 93, device="cuda") * 255
    ref = Stylizer(model, backend="eager", precision="fp32", device="cuda")(x)
    out = Stylizer(model, backend="tensorrt", precision="fp32", device="cuda")(x)  # batch 3 > max 1: chunks
    assert (out - ref).abs().max().item() <= 0.05
    assert list((tmp_path / "tensorrt").glob("*.engine.json"))


def test_engine_precision_is_the_graphs(tmp_path):
    """Strongly typed engines (TensorRT 11): --fp16 needs the fp16 graph; a model is exported at --fp16."""
    import argparse

    from instyle.cli import UsageError
    from instyle.export import cli as export_cli
    from instyle.export.onnx import export_onnx
    from instyle.models import JohnsonNet

    pytest.importorskip("onnxscript")
    fp32 = export_onnx(JohnsonNet(width=4, blocks=0), tmp_path / "m.onnx")
    args = argparse.Namespace(model=str(fp32), engine_precision="fp16")
    with pytest.raises(UsageError, match="fp32 graph.*--precision fp16"):
        export_cli._onnx_source(args, tmp_path)
    args.engine_precision = "fp32"
    assert export_cli._onnx_source(args, tmp_path)[0] == fp32
    repo = argparse.Namespace(model=str(fp32), engine_precision="fp16", format="onnx")  # triton-repo, ONNX Runtime
    assert export_cli._onnx_source(repo, tmp_path)[0] == fp32
    with pytest.raises(ValueError, match="fp32 graph"):
        trt_export.build_engine(fp32, tmp_path / "e.engine", profiles=trt_export.default_profiles(),
                                precision="fp16")
