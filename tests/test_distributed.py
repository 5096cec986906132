"""`instyle stylize --distributed ray` on a local Ray cluster: the outputs, errors and exit codes of a local run."""
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageSequence

from instyle.cli import main

# (source photo, crop box, output name): mixed sizes, odd ones, a subfolder, PNG with alpha beside JPEGs
PHOTOS = [
    ("demo/chicago.jpg", (40, 30, 136, 94), "chicago.jpg"),
    ("demo/amber.jpg", (0, 0, 65, 97), "sub/amber.png"),
    ("demo/hoovertowernight.jpg", (100, 50, 228, 130), "sub/tower.jpg"),
    ("train/bsds_train_100075.jpg", (10, 10, 106, 74), "train/a.jpg"),
    ("train/bsds_train_100080.jpg", (0, 20, 128, 148), "train/b.png"),
    ("train/bsds_train_100098.jpg", (5, 5, 55, 42), "c.jpg"),
]


def _make_inputs(data: Path, folder: Path) -> None:
    for source, box, name in PHOTOS:
        with Image.open(data / "content" / source) as img:
            crop = img.convert("RGB").crop(box)
        if name.endswith(".png") and "sub" in name:
            crop.putalpha(Image.linear_gradient("L").resize(crop.size))
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        crop.save(folder / name, quality=95)
    (folder / "broken.jpg").write_bytes((data / "content" / "demo" / "chicago.jpg").read_bytes()[:400])
    os.mkfifo(folder / "sub" / "pipe.png")  # no file: one warning from the driver, never sent to a worker
    for name in ("dup.jpg", "DUP.JPG"):  # one output on macOS and Windows: two errors, neither written
        (folder / name).write_bytes((folder / "c.jpg").read_bytes())
    if importlib.util.find_spec("av"):  # an animated GIF is a video: one Ray task, the local video path
        with Image.open(data / "content" / "demo" / "amber.jpg") as img:
            frames = [img.convert("RGB").crop((i, 0, i + 24, 16)) for i in (0, 40, 80)]
        frames[0].save(folder / "sub" / "anim.gif", save_all=True, append_images=frames[1:], duration=60)


def _outputs(folder: Path) -> list[str]:
    video = ["sub/anim.gif"] if (folder / "sub" / "anim.gif").exists() else []
    return sorted([name for _, _, name in PHOTOS] + video)


def _pixels(path: Path) -> np.ndarray:
    """Every frame's RGB pixels (one frame for a still image)."""
    with Image.open(path) as img:
        return np.stack([np.asarray(f.convert("RGBA" if path.suffix == ".png" else "RGB"), dtype=int)
                         for f in ImageSequence.Iterator(img)])


def _tree(root: Path, skip: set[str]) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")
            if p.is_file() and p.relative_to(root).parts[0] not in skip}


def _ray_stylize(cwd: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # always a fresh local cluster
    cmd = [sys.executable, "-m", "instyle", "stylize", "../in", "-o", "../out_ray", "--backend", "eager",
           "--device", "cpu", "--distributed", "ray", "--workers", "2", *extra]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=90)


def test_same_outputs_errors_and_skips_as_local(tmp_path, data):
    pytest.importorskip("ray.data", reason="ray[data] is not installed: pip install 'instyle[ray]'")
    from instyle import checkpoint

    style = list(checkpoint.shipped_styles())[1]  # not the default: the style controls must reach the workers
    _make_inputs(data, tmp_path / "in")
    (tmp_path / "cwd").mkdir()
    assert main(["stylize", str(tmp_path / "in"), "-o", str(tmp_path / "out_local"), "--backend", "eager",
                 "--device", "cpu", "--style", style]) == 1
    before = _tree(tmp_path, {"out_ray", "out_local"})

    run = _ray_stylize(tmp_path / "cwd", "--style", style)
    assert run.returncode == 1, run.stderr[-3000:]
    lines = [line for line in run.stderr.splitlines() if line.startswith(("error:", "warning:"))]
    errors = [line for line in lines if line.startswith("error:")]
    assert lines[0] == "warning: ../in/sub/pipe.png: not a regular file (a FIFO); skipped", run.stderr[-3000:]
    assert [e.split(":")[1] for e in errors] == [" ../in/DUP.JPG", " ../in/dup.jpg", " ../in/broken.jpg"]
    assert "same output as ../in/dup.jpg (../out_ray/DUP.JPG" in errors[0]
    names = _outputs(tmp_path / "in")
    assert f"{len(names)} stylized, 0 skipped (exist), 3 failed -> ../out_ray" in run.stderr
    for name in names:
        a, b = (_pixels(tmp_path / out / name) for out in ("out_local", "out_ray"))
        assert a.shape == b.shape and np.abs(a - b).max() <= 1, f"{name}: max |Δ| {np.abs(a - b).max()}"
    written = _tree(tmp_path / "out_ray", set())
    assert sorted(written) == names  # no temp files left, no output for broken.jpg
    assert _tree(tmp_path, {"out_ray", "out_local"}) == before, "something was written outside -o"

    again = _ray_stylize(tmp_path / "cwd", "--style", style)
    assert again.returncode == 1, again.stderr[-3000:]
    assert f"0 stylized, {len(names)} skipped (exist), 3 failed -> ../out_ray" in again.stderr
    assert [line for line in again.stderr.splitlines() if line.startswith("error:")] == errors
    assert _tree(tmp_path / "out_ray", set()) == written
    assert _tree(tmp_path, {"out_ray", "out_local"}) == before


def test_a_worker_that_cannot_build_its_stylizer_is_one_error_line(tmp_path, data):
    """The driver checks the model with the eager backend; a backend a worker cannot build fails the run."""
    pytest.importorskip("ray.data", reason="ray[data] is not installed: pip install 'instyle[ray]'")
    if importlib.util.find_spec("tensorrt"):
        pytest.skip("tensorrt is installed here: pick a backend that cannot be built")
    (tmp_path / "in").mkdir()
    (tmp_path / "cwd").mkdir()
    with Image.open(data / "content" / "demo" / "chicago.jpg") as img:
        img.convert("RGB").crop((0, 0, 32, 24)).save(tmp_path / "in" / "a.png")
    run = _ray_stylize(tmp_path / "cwd", "--backend", "tensorrt", "--workers", "1")
    assert run.returncode == 1, run.stderr[-3000:]
    assert run.stderr.splitlines()[-1].startswith("error: instyle worker: cannot build the Stylizer: "), run.stderr
    assert "Traceback" not in run.stderr.splitlines()[-1]
    assert not (tmp_path / "out_ray").exists() and not list((tmp_path / "cwd").iterdir())


@pytest.mark.parametrize("flags, message", [
    (["--workers", "2"], "--workers needs --distributed ray"),
    (["--distributed", "ray", "--workers", "0"], "--workers must be >= 1"),
    (["--distributed", "ray", "--gpus-per-worker", "-1"], "--gpus-per-worker must be >= 0"),
])
def test_usage_errors(tmp_path, capsys, flags, message):
    (tmp_path / "a.png").write_bytes(b"")
    assert main(["stylize", str(tmp_path / "a.png"), "-o", str(tmp_path / "out"), *flags]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_without_ray_the_flag_names_the_install_command(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # as if ray were not installed
    (tmp_path / "a.png").write_bytes(b"")
    assert main(["stylize", str(tmp_path / "a.png"), "-o", str(tmp_path / "out"), "--distributed", "ray"]) == 2
    assert "pip install 'instyle[ray]'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
