"""The openvino backend (parity with eager on real photos, its disk cache) and the CPU `auto` chain
openvino -> onnxruntime -> eager: every cause of moving down lands on a working backend with one stderr line."""
import copy
import importlib.util
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from instyle import checkpoint
from instyle.cli import main
from instyle.engine import BackendUnavailable, Stylizer, load
from instyle.metrics import psnr_db
from instyle.models import JohnsonNet

HAVE_OV = importlib.util.find_spec("openvino") is not None
HAVE_ORT = importlib.util.find_spec("onnxruntime") is not None and importlib.util.find_spec("onnx") is not None
needs_ov = pytest.mark.skipif(not HAVE_OV, reason="openvino is not installed (pip install openvino)")
needs_ort = pytest.mark.skipif(not HAVE_ORT, reason="onnxruntime/onnx are not installed (pip install 'instyle[onnx]')")
# tolerances on the 0..255 scale, against eager fp32
FP32_MAX_ABS = 1e-3
BF16_MIN_PSNR = 45.0
SIZES = [(37, 53), (64, 48), (101, 77)]  # (H, W): odd, a stride multiple, mixed across calls


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("INSTYLE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def generator(data):
    module, _ = checkpoint.load(data / "pretrained" / "random-transformernet.pth")
    return module.eval()


@pytest.fixture(scope="module")
def photos(data):
    """Three real photos as float 0..255 H,W,3 arrays (crops of them make the test images)."""
    names = ["demo/chicago.jpg", "demo/amber.jpg", "train/bsds_train_100075.jpg"]
    out = []
    for name in names:
        with Image.open(data / "content" / name) as img:
            out.append(np.asarray(img.convert("RGB"), dtype=np.float32))
    return out


def batch(photos, n, h, w, offset=0):
    crops = [photos[(offset + i) % len(photos)][10 + i:10 + i + h, 20:20 + w] for i in range(n)]
    return torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).contiguous()


def narrow():
    torch.manual_seed(0)
    return JohnsonNet(width=8, blocks=1).eval()


def block(monkeypatch, *packages):
    """Make `import package` fail as if it were not installed."""
    for name in packages:
        monkeypatch.setitem(sys.modules, name, None)


def one_line(capsys) -> str:
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1, lines
    assert "Traceback" not in lines[0]
    return lines[0]


# -- parity ---------------------------------------------------------------------------------------------


@needs_ov
def test_fp32_parity_with_eager_on_real_photos(generator, photos):
    """max |delta| <= 1e-3 vs eager fp32 at odd sizes, batches, mixed sizes across calls, and a larger photo
    crop (where OpenVINO's native MVN was 0.08 off: the fp32 graph uses two-pass instance norms)."""
    eager = Stylizer(copy.deepcopy(generator), backend="eager", precision="fp32", tile="off")
    ov = Stylizer(copy.deepcopy(generator), backend="openvino", precision="fp32", tile="off")
    assert ov.precision == "fp32"
    cases = [(1, SIZES[0], 0), (3, SIZES[0], 0), (2, SIZES[1], 1), (1, SIZES[2], 2), (1, (515, 771), 1),
             (2, SIZES[0], 1)]
    for n, (h, w), offset in cases:
        x = batch(photos, n, h, w, offset=offset)
        y, ref = ov(x), eager(x)
        assert y.shape == x.shape and y.dtype == torch.float32
        d = (y - ref).abs().max().item()
        assert d <= FP32_MAX_ABS, f"{n}x{h}x{w}: max |delta| vs eager {d:.3g} > {FP32_MAX_ABS}"


@needs_ov
def test_bf16_psnr_vs_eager_on_real_photos(generator, photos):
    """PSNR >= 45 dB vs eager fp32 at photo-like odd sizes, batches and mixed sizes. On tiny crops this
    random-weight net amplifies any bf16 rounding (PyTorch's own bf16 gets ~34 dB at 37x53), so there the
    bound is derived: no worse than PyTorch bf16 minus 1 dB."""
    from instyle.export import ov_runner

    if not ov_runner.bf16_supported():
        pytest.skip("this CPU reports no BF16 capability to OpenVINO")
    eager = Stylizer(copy.deepcopy(generator), backend="eager", precision="fp32", tile="off")
    ov = Stylizer(copy.deepcopy(generator), backend="openvino", precision="bf16", tile="off")
    assert ov.precision == "bf16"
    for i, (n, (h, w)) in enumerate([(1, (241, 283)), (2, (287, 259)), (1, (241, 283))]):
        x = batch(photos, n, h, w, offset=i)
        y = ov(x)
        assert y.shape == x.shape
        assert psnr_db(y, eager(x)) >= BF16_MIN_PSNR, f"{n}x{h}x{w}: PSNR {psnr_db(y, eager(x)):.1f} dB"
    x = batch(photos, 3, *SIZES[0])
    torch_bf16 = Stylizer(copy.deepcopy(generator), backend="eager", precision="bf16", tile="off")
    ref = eager(x)
    assert psnr_db(ov(x), ref) >= psnr_db(torch_bf16(x), ref) - 1.0


@needs_ov
def test_tiled_inference_works_with_openvino(generator, photos):
    x = batch(photos, 1, 75, 90)
    ref = Stylizer(copy.deepcopy(generator), backend="eager", precision="fp32", tile="off")(x)
    s = Stylizer(copy.deepcopy(generator), backend="openvino", precision="fp32", tile=32)
    y = s(x)
    assert s.last_tile == 32
    assert (y - ref).abs().max().item() <= 1e-2


@needs_ov
def test_precisions(monkeypatch):
    from instyle.export import ov_runner

    with pytest.raises(BackendUnavailable, match="fp32 or bf16"):
        Stylizer(narrow(), backend="openvino", precision="fp16")
    monkeypatch.setattr(ov_runner, "bf16_supported", lambda: False)
    s = Stylizer(narrow(), backend="openvino", precision="bf16", tile="off")
    assert s.precision == "fp32" and "no BF16" in s.notes[0]
    assert ov_runner.auto_precision(torch.device("cpu"))[0] == "fp32"


# -- the disk cache -------------------------------------------------------------------------------------


@needs_ov
def test_second_build_reads_the_cached_graph(monkeypatch, cache):
    from instyle.export import ov_runner

    real_convert = ov_runner.convert
    x = torch.rand(2, 3, 21, 30) * 255
    y1 = Stylizer(narrow(), backend="openvino", precision="fp32", tile="off")(x)
    entries = list((cache / "openvino").glob("*.xml"))
    assert len(entries) == 1 and all(entries[0].with_suffix(ext).is_file() for ext in (".bin", ".json"))
    monkeypatch.setattr(ov_runner, "convert", lambda *a: pytest.fail("converted again despite the cache"))
    s = Stylizer(narrow(), backend="openvino", precision="fp32", tile="off")
    assert s.notes == []
    assert torch.equal(s(x), y1)
    # the key holds the precision: bf16 is another entry
    if ov_runner.bf16_supported():
        monkeypatch.setattr(ov_runner, "convert", real_convert)
        Stylizer(narrow(), backend="openvino", precision="bf16", tile="off")
        assert len(list((cache / "openvino").glob("*.xml"))) == 2


@needs_ov
def test_each_input_shape_is_compiled_once_and_the_oldest_dropped(cache):
    """Static shapes (export/ov_runner.py OpenVINORunner): one compilation per shape, reused; the LRU keeps SHAPES."""
    s = Stylizer(narrow(), backend="openvino", precision="fp32", tile="off")
    run = s._run
    run.shapes = 2
    ref = Stylizer(narrow(), backend="eager", precision="fp32", tile="off")
    for size in ((20, 24), (28, 20), (20, 24), (36, 36), (20, 24)):
        x = torch.rand(1, 3, *size) * 255
        assert (s(x) - ref(x)).abs().max() <= 1.0
    assert run.compiled_shapes == 3  # (20, 24) stayed the most recent; (28, 20) made way for (36, 36)
    s(torch.rand(1, 3, 28, 20) * 255)
    assert run.compiled_shapes == 4 and len(run._requests) == 2
    run.shapes, run.pixels = 8, 2 * 28 * 20  # a pixel budget: the kept shapes' activations stay bounded
    s(torch.rand(1, 3, 40, 44) * 255)  # larger than the budget alone: kept, everything older dropped
    assert list(run._requests) == [(("image", (1, 3, 40, 44)),)]
    s(torch.rand(1, 3, 20, 24) * 255)
    s(torch.rand(1, 3, 28, 20) * 255)  # 480 + 560 pixels fit in 1120 together
    assert len(run._requests) == 2 and run.compiled_shapes == 7


@needs_ov
@pytest.mark.parametrize("damage", ["truncate-bin", "garbage-with-matching-sidecar", "no-sidecar"])
def test_damaged_cache_entry_is_rebuilt_once(cache, capsys, damage):
    import hashlib
    import json

    x = torch.rand(1, 3, 24, 24) * 255
    ref = Stylizer(narrow(), backend="openvino", precision="fp32", tile="off")(x)
    (xml,) = (cache / "openvino").glob("*.xml")
    bin_, sidecar = xml.with_suffix(".bin"), xml.with_suffix(".json")
    data = bin_.read_bytes()
    if damage == "truncate-bin":
        bin_.write_bytes(data[: len(data) // 3])
    elif damage == "garbage-with-matching-sidecar":
        bad = b"<not an IR>"
        xml.write_bytes(bad)
        meta = json.loads(sidecar.read_text())
        sidecar.write_text(json.dumps({**meta, "xml_sha256": hashlib.sha256(bad).hexdigest()}))
    else:
        sidecar.unlink()
    s = load(narrow(), precision="fp32", device="cpu", tile="off")
    line = one_line(capsys)
    assert s.backend == "openvino" and line.startswith("instyle: backend openvino fp32")
    assert "was unusable" in line and "rebuilt" in line
    assert torch.equal(s(x), ref)
    assert bin_.read_bytes() == data  # a whole entry again
    load(narrow(), precision="fp32", device="cpu", tile="off")
    assert "unusable" not in one_line(capsys)


@needs_ov
def test_unwritable_cache_runs_without_it(tmp_path, monkeypatch, capsys):
    # a cache "folder" below a regular file cannot be created, even by root (chmod would not stop root)
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("INSTYLE_CACHE", str(tmp_path / "file" / "cache"))
    s = load(narrow(), precision="fp32", device="cpu", tile="off")
    line = one_line(capsys)
    assert s.backend == "openvino" and "running without a cache" in line
    assert s(torch.rand(1, 3, 16, 16) * 255).shape == (1, 3, 16, 16)


# -- the auto chain -------------------------------------------------------------------------------------


@needs_ort
def test_missing_openvino_falls_to_onnxruntime(monkeypatch, capsys):
    block(monkeypatch, "openvino")
    s = load(narrow(), device="cpu", tile="off")
    line = one_line(capsys)
    assert (s.backend, s.precision) == ("onnxruntime", "fp32")
    assert "openvino: backend 'openvino' needs the package openvino (pip install openvino)" in line
    assert s(torch.rand(1, 3, 9, 13) * 255).shape == (1, 3, 9, 13)


def test_missing_openvino_and_onnxruntime_falls_to_eager(monkeypatch, capsys):
    block(monkeypatch, "openvino", "onnxruntime")
    s = load(narrow(), device="cpu", tile="off")
    line = one_line(capsys)
    assert (s.backend, s.precision) == ("eager", "fp32")
    assert "pip install openvino" in line and "pip install 'instyle[onnx]'" in line


@pytest.mark.skipif(importlib.util.find_spec("onnxruntime") is None, reason="onnxruntime is not installed")
def test_onnxruntime_without_onnx_cannot_export_and_says_so(monkeypatch, capsys):
    block(monkeypatch, "openvino", "onnx", "onnxscript")
    s = load(narrow(), device="cpu", tile="off")
    line = one_line(capsys)
    assert s.backend == "eager"
    assert "needs the package onnx" in line and "instyle[onnx]" in line


@needs_ort
def test_truncated_cached_onnx_is_rebuilt_once(monkeypatch, cache, capsys):
    block(monkeypatch, "openvino")
    x = torch.rand(1, 3, 20, 20) * 255
    ref = load(narrow(), device="cpu", tile="off")(x)
    capsys.readouterr()
    (path,) = (cache / "onnx").glob("*.onnx")
    path.write_bytes(path.read_bytes()[:1000])
    s = load(narrow(), device="cpu", tile="off")
    line = one_line(capsys)
    assert s.backend == "onnxruntime" and "was unusable" in line and "rebuilt" in line
    assert torch.allclose(s(x), ref, atol=1e-4)
    # the same for an explicit --backend onnxruntime, which used to fail on every later run
    path.write_bytes(b"not a protobuf")
    assert Stylizer(narrow(), backend="onnxruntime", tile="off")(x).shape == x.shape


@needs_ort
def test_unwritable_cache_onnxruntime_runs_from_memory(tmp_path, monkeypatch, capsys):
    block(monkeypatch, "openvino")
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("INSTYLE_CACHE", str(tmp_path / "file" / "cache"))
    s = load(narrow(), device="cpu", tile="off")
    line = one_line(capsys)
    assert s.backend == "onnxruntime" and "running without a cache" in line
    assert s(torch.rand(2, 3, 33, 17) * 255).shape == (2, 3, 33, 17)


@needs_ov
def test_failed_conversion_moves_down(monkeypatch, capsys):
    from instyle.export import ov_runner

    def broken(model, precision="fp32"):
        raise RuntimeError("Check 'x' failed at convert.cpp:1\nsecond line")

    monkeypatch.setattr(ov_runner, "convert", broken)
    block(monkeypatch, "onnxruntime")
    s = load(narrow(), device="cpu", tile="off")
    line = one_line(capsys)
    assert s.backend == "eager"
    assert "openvino: backend 'openvino': conversion failed (RuntimeError: Check 'x' failed" in line
    assert "second line" not in line


@needs_ov
def test_auto_on_cpu_prefers_openvino_at_its_best_precision(capsys):
    from instyle.export import ov_runner

    s = load(narrow(), device="cpu", tile="off")
    assert (s.backend, s.precision) == ("openvino", "bf16" if ov_runner.bf16_supported() else "fp32")
    assert one_line(capsys) == f"instyle: backend openvino {s.precision}"


def test_explicit_backend_that_cannot_build_is_one_line_exit_2(tmp_path, monkeypatch, capsys, data):
    block(monkeypatch, "openvino")
    with Image.open(data / "content" / "demo" / "chicago.jpg") as img:
        img.convert("RGB").crop((0, 0, 40, 30)).save(tmp_path / "p.png")
    model = data / "pretrained" / "random-transformernet.pth"
    rc = main(["stylize", str(tmp_path / "p.png"), "-o", str(tmp_path / "out"), "--model", str(model),
               "--backend", "openvino"])
    assert rc == 2
    assert one_line(capsys) == ("instyle stylize: error: backend 'openvino' needs the package openvino "
                                "(pip install openvino)")
    with pytest.raises(BackendUnavailable, match="pip install openvino"):
        load(narrow(), backend="openvino", device="cpu")


def test_cli_auto_writes_the_image_with_one_backend_line(tmp_path, capsys, data):
    with Image.open(data / "content" / "demo" / "chicago.jpg") as img:
        img.convert("RGB").crop((0, 0, 45, 31)).save(tmp_path / "p.png")
    model = data / "pretrained" / "random-transformernet.pth"
    assert main(["stylize", str(tmp_path / "p.png"), "-o", str(tmp_path / "out"), "--model", str(model)]) == 0
    err = capsys.readouterr().err.splitlines()
    assert [e for e in err if e.startswith("instyle: backend")] == err[:1] and len(err) == 2
    assert (tmp_path / "out" / "p.png").is_file()
