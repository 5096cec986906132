"""CLI boundaries: a missing optional package is one line with the install command (exit 2); so is a bad number."""
import sys

import pytest

from instyle import checkpoint
from instyle.cli import main
from instyle.models import JohnsonNet


def _one_line(capsys):
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


@pytest.mark.parametrize("package", ["onnx", "onnxscript"])
def test_export_onnx_without_onnx(tmp_path, capsys, monkeypatch, package):
    model = checkpoint.save(JohnsonNet(width=4, blocks=0), tmp_path / "m.safetensors")
    monkeypatch.setitem(sys.modules, package, None)
    assert main(["export", "onnx", "--model", str(model), "-o", str(tmp_path / "m.onnx")]) == 2
    line = _one_line(capsys)
    assert f"{package} is not installed" in line and "pip install 'instyle[onnx]'" in line
    assert not (tmp_path / "m.onnx").exists()


def test_bench_without_matplotlib_fails_before_timing(tmp_path, capsys, monkeypatch):
    from instyle.bench import harness

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setattr(harness, "run", lambda *a, **k: pytest.fail("timed a benchmark that cannot be reported"))
    code = main(["bench", "--backends", "eager", "--sizes", "16", "--iters", "1", "--warmup", "0",
                 "--device", "cpu", "--out", str(tmp_path / "b")])
    assert code == 2
    line = _one_line(capsys)
    assert "matplotlib is not installed" in line and "pip install" in line


def test_any_other_missing_module_is_one_line(capsys, monkeypatch):
    from instyle import models_cli

    def run(args):
        import some_optional_thing  # noqa: F401

    monkeypatch.setattr(models_cli, "run", run)
    assert main(["models"]) == 2
    assert "some_optional_thing is not installed: pip install some_optional_thing" in _one_line(capsys)


@pytest.mark.parametrize("value", ["-1", "0", "nan"])
def test_tensorrt_workspace_must_be_positive(tmp_path, capsys, value):
    assert main(["export", "tensorrt", "--model", "x.onnx", "-o", str(tmp_path / "x.engine"),
                 "--workspace-gb", value]) == 2
    assert "--workspace-gb" in _one_line(capsys)
