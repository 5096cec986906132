"""`instyle stylize` end to end on real photos, checked against an independent functional forward."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from test_models import transformer_net_functional

from instyle.cli import main


@pytest.fixture(scope="module")
def photo(data):
    """A 517x333 (odd, not a multiple of 4) lossless crop of a real photo."""
    with Image.open(data / "content" / "demo" / "chicago.jpg") as img:
        return img.convert("RGB").crop((60, 70, 60 + 517, 70 + 333))


def reference_pixels(img: Image.Image, sd) -> np.ndarray:
    """Pad bottom/right by reflection to a multiple of 4, run the functional net, crop, clamp, round."""
    x = torch.from_numpy(np.asarray(img, dtype=np.float32)).permute(2, 0, 1)[None]
    h, w = x.shape[-2:]
    x = F.pad(x, (0, -w % 4, 0, -h % 4), mode="reflect")
    with torch.no_grad():
        y = transformer_net_functional(x, sd)[..., :h, :w]
    return y[0].clamp(0, 255).round().to(torch.uint8).permute(1, 2, 0).numpy()


def stylize(*args):
    return main(["stylize", *map(str, args), "--backend", "eager", "--device", "cpu"])


def test_same_pixels_as_independent_forward(tmp_path, photo, model_path):
    photo.save(tmp_path / "photo.png")
    assert stylize(tmp_path / "photo.png", "-o", tmp_path / "out", "--model", model_path) == 0
    out = np.asarray(Image.open(tmp_path / "out" / "photo.png"))
    ref = reference_pixels(photo, torch.load(model_path, weights_only=True))
    assert out.shape == (333, 517, 3)
    diff = np.abs(out.astype(int) - ref.astype(int))
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-3, f"max {diff.max()}, {(diff > 0).sum()} pixels differ"
    assert out.std() > 5, "a real photo should not stylize to a flat image"


def test_tiny_images_and_batches(tmp_path, photo, model_path):
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    photo.crop((0, 0, 1, 1)).save(src / "one.png")
    photo.crop((0, 0, 45, 31)).save(src / "sub" / "a.png")
    photo.crop((100, 100, 145, 131)).save(src / "sub" / "b.png")
    assert stylize(src, "-o", tmp_path / "b1", "--model", model_path) == 0
    assert stylize(src, "-o", tmp_path / "b2", "--model", model_path, "--batch", "2") == 0
    assert Image.open(tmp_path / "b1" / "one.png").size == (1, 1)
    for name in ("sub/a.png", "sub/b.png"):  # relative paths kept; IN is per image, so batching changes nothing
        a, b = (np.asarray(Image.open(tmp_path / d / name), dtype=int) for d in ("b1", "b2"))
        assert a.shape == (31, 45, 3) and np.abs(a - b).max() <= 1


def test_rgba_keeps_alpha_and_exif_rotation_is_upright(tmp_path, photo, model_path):
    small = photo.crop((0, 0, 64, 40))
    rgba = small.copy()
    alpha = Image.linear_gradient("L").resize(small.size)
    rgba.putalpha(alpha)
    rgba.save(tmp_path / "rgba.png")
    small.save(tmp_path / "upright.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # displayed after a 90 degree clockwise turn
    small.transpose(Image.Transpose.ROTATE_90).save(tmp_path / "rotated.png", exif=exif)
    assert stylize(tmp_path, "-o", tmp_path / "out", "--model", model_path) == 0
    out = Image.open(tmp_path / "out" / "rgba.png")
    assert out.mode == "RGBA" and np.array_equal(np.asarray(out.getchannel("A")), np.asarray(alpha))
    upright = np.asarray(Image.open(tmp_path / "out" / "upright.png"), dtype=int)
    rotated = np.asarray(Image.open(tmp_path / "out" / "rotated.png"), dtype=int)
    assert rotated.shape == upright.shape == (40, 64, 3)
    assert np.abs(rotated - upright).max() <= 1


def test_bad_files_do_not_stop_the_batch(tmp_path, data, model_path, capsys):
    src = tmp_path / "in"
    src.mkdir()
    jpeg = (data / "content" / "demo" / "hoovertowernight.jpg").read_bytes()
    (src / "good.jpg").write_bytes(jpeg)
    (src / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 3])
    (src / "empty.png").write_bytes(b"")
    (src / "notes.jpg").write_text("this is not an image\n")
    Image.new("1", (17000, 17000)).save(src / "bomb.png")  # 289 Mpx > 2^28, a few KB on disk
    out = tmp_path / "out"
    assert stylize(src, "-o", out, "--model", model_path, "--max-side", "96") == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert sorted(e.split(":")[1].strip().rsplit("/", 1)[-1] for e in errors) == [
        "bomb.png", "empty.png", "notes.jpg", "truncated.jpg"]
    assert [p.name for p in out.rglob("*")] == ["good.jpg"], "no partial or temporary files"
    assert Image.open(out / "good.jpg").size == (96, 51)


def test_existing_outputs_are_skipped_unless_overwrite(tmp_path, photo, model_path, capsys):
    photo.crop((0, 0, 20, 20)).save(tmp_path / "p.png")
    out = tmp_path / "out"
    assert stylize(tmp_path / "p.png", "-o", out, "--model", model_path, "--format", "jpg") == 0
    (out / "p.jpg").write_bytes(b"keep me")
    assert stylize(tmp_path / "p.png", "-o", out, "--model", model_path, "--format", "jpg") == 0
    assert (out / "p.jpg").read_bytes() == b"keep me"
    assert stylize(tmp_path / "p.png", "-o", out, "--model", model_path, "--format", "jpg", "--overwrite") == 0
    assert Image.open(out / "p.jpg").size == (20, 20)


def test_globs_and_missing_inputs(tmp_path, photo, model_path, capsys):
    (tmp_path / "a").mkdir()
    photo.crop((0, 0, 16, 16)).save(tmp_path / "a" / "x.png")
    code = stylize(str(tmp_path / "*" / "*.png"), tmp_path / "nope.jpg", "-o", tmp_path / "out",
                   "--model", model_path)
    assert code == 1
    assert (tmp_path / "out" / "a" / "x.png").is_file()
    assert "nope.jpg: no such file or folder" in capsys.readouterr().err


@pytest.mark.parametrize("bad", [["--batch", "0"], ["--tile", "huge"], ["--format", "xyz"], ["--quality", "0"],
                                 ["--backend-option", "prenorm"], ["--backend", "eager", "--backend-option", "a=1"],
                                 ["--device", "cpu", "--backend-option", "prenorm=all"]])
def test_usage_errors_exit_2(tmp_path, bad, capsys):
    assert main(["stylize", str(tmp_path), *bad]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_backend_options_reach_the_backend(tmp_path, photo, model_path, monkeypatch):
    from instyle.engine import backends

    seen = []

    def fake(model, device, dtype, *, compiler="inductor"):
        seen.append(compiler)
        return lambda x: model(x.to(dtype))

    monkeypatch.setattr(backends.TABLE["compile"], "factory", fake)
    photo.crop((0, 0, 24, 16)).save(tmp_path / "p.png")
    assert main(["stylize", str(tmp_path / "p.png"), "-o", str(tmp_path / "out"), "--model", str(model_path),
                 "--backend", "compile", "--device", "cpu", "--backend-option", "compiler=eager",
                 "--backend-option", "graphs=off", "--backend-option", "cache_size=2"]) == 0
    assert seen == ["eager"] and (tmp_path / "out" / "p.png").is_file()


def test_missing_model_is_one_line(tmp_path, photo, capsys):
    photo.crop((0, 0, 8, 8)).save(tmp_path / "p.png")
    assert main(["stylize", str(tmp_path / "p.png"), "--model", str(tmp_path / "none.pth")]) == 1
    assert "none.pth: no such model file or shipped style" in capsys.readouterr().err.strip()


# --- hostile inputs and odd paths: per-file one-line errors, nothing written outside -o ---

def _errors(capsys):
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return [line for line in err.splitlines() if line.startswith("error: ")]


def test_glob_with_dotdot_cannot_write_outside_out(tmp_path, photo, model_path, capsys):
    (tmp_path / "in" / "a").mkdir(parents=True)
    (tmp_path / "secret").mkdir()
    photo.crop((0, 0, 16, 16)).save(tmp_path / "secret" / "x.png")
    photo.crop((0, 0, 12, 12)).save(tmp_path / "in" / "a" / "ok.png")
    out = tmp_path / "in" / "out"
    pattern = tmp_path / "in" / "*" / ".." / ".." / "secret" / "*.png"
    assert stylize(pattern, tmp_path / "in" / "*" / "ok.png", "-o", out, "--model", model_path) == 1
    errors = _errors(capsys)
    assert errors and all("x.png" in e and "outside -o" in e for e in errors)  # `*` matches a/ and out/
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.png")) == [
        "in/a/ok.png", "in/out/a/ok.png", "secret/x.png"]


def test_symlink_inside_out_cannot_lead_outside(tmp_path, photo, model_path, capsys):
    (tmp_path / "in" / "sub").mkdir(parents=True)
    photo.crop((0, 0, 12, 12)).save(tmp_path / "in" / "sub" / "p.png")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "sub").symlink_to(tmp_path / "elsewhere")
    assert stylize(tmp_path / "in", "-o", tmp_path / "out", "--model", model_path) == 1
    assert "outside -o" in _errors(capsys)[0]
    assert list((tmp_path / "elsewhere").iterdir()) == []


def test_out_inside_the_input_folder_and_dot_files_are_not_inputs(tmp_path, photo, model_path, capsys):
    src = tmp_path / "photos"
    (src / ".cache").mkdir(parents=True)
    photo.crop((0, 0, 12, 12)).save(src / "p.png")
    photo.crop((0, 0, 12, 12)).save(src / ".hidden.png")
    photo.crop((0, 0, 12, 12)).save(src / ".cache" / "thumb.png")
    for _ in range(2):
        assert stylize(src, "-o", src / "stylized", "--model", model_path, "--overwrite") == 0
    assert sorted(p.relative_to(src).as_posix() for p in src.rglob("*") if "stylized" in p.parts) == [
        "stylized", "stylized/p.png"]


def test_leftover_temp_file_of_a_killed_run_is_not_an_input(tmp_path, photo, model_path, capsys):
    import subprocess
    import sys

    src = tmp_path / "in"
    src.mkdir()
    photo.crop((0, 0, 12, 12)).save(src / "p.png")
    code = ("import os, signal, sys\n"
            "from instyle.atomic import atomic_path\n"
            f"with atomic_path({str(src / 'q.png')!r}) as tmp:\n"
            "    tmp.write_bytes(b'\\x89PNG partial')\n"
            "    os.kill(os.getpid(), signal.SIGKILL)\n")
    assert subprocess.run([sys.executable, "-c", code]).returncode == -9
    leftovers = [p.name for p in src.iterdir() if p.name != "p.png"]
    assert len(leftovers) == 1 and not leftovers[0].endswith(".png")
    assert stylize(src, "-o", tmp_path / "out", "--model", model_path) == 0
    assert _errors(capsys) == []
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["p.png"]


def test_sigterm_removes_the_temp_file(tmp_path, photo, model_path):
    import subprocess
    import sys

    photo.crop((0, 0, 12, 12)).save(tmp_path / "p.png")
    code = ("import os, signal\n"
            "from PIL import Image\n"
            "from instyle.cli import main\n"
            "def save(self, fp, *a, **k):\n"
            "    open(fp, 'wb').write(b'partial')\n"
            "    os.kill(os.getpid(), signal.SIGTERM)\n"
            "Image.Image.save = save\n"
            f"raise SystemExit(main(['stylize', {str(tmp_path / 'p.png')!r}, '-o', {str(tmp_path / 'out')!r}, "
            f"'--model', {str(model_path)!r}, '--backend', 'eager', '--device', 'cpu']))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 143, proc.stderr
    assert list((tmp_path / "out").iterdir()) == [], "a temporary file was left behind"


@pytest.mark.parametrize("kind", ["file", "under-a-file", "read-only"])
def test_unusable_out_is_a_usage_error_before_any_work(tmp_path, photo, capsys, kind):
    import os

    photo.crop((0, 0, 12, 12)).save(tmp_path / "p.png")
    (tmp_path / "f").write_text("x")
    out = {"file": tmp_path / "f", "under-a-file": tmp_path / "f" / "out", "read-only": tmp_path / "ro"}[kind]
    if kind == "read-only":
        if os.geteuid() == 0:
            pytest.skip("root writes into read-only folders")
        out.mkdir(mode=0o555)
    # a model that does not exist: the -o check must come first
    assert main(["stylize", str(tmp_path / "p.png"), "-o", str(out), "--model", str(tmp_path / "none.pth")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"-o {out}" in err[0], err


@pytest.mark.parametrize("value", ["-1", "0"])
def test_max_pixels_must_be_positive(tmp_path, value, capsys):
    assert main(["stylize", str(tmp_path), "--max-pixels", value]) == 2
    assert "--max-pixels" in capsys.readouterr().err


def test_pixel_limit_applies_after_scale(tmp_path, photo, model_path, capsys):
    photo.crop((0, 0, 64, 64)).save(tmp_path / "big.png")
    photo.crop((0, 0, 16, 16)).save(tmp_path / "small.png")
    code = stylize(tmp_path / "big.png", tmp_path / "small.png", "-o", tmp_path / "out", "--model", model_path,
                   "--scale", "4", "--max-pixels", "10000")
    assert code == 1
    errors = _errors(capsys)
    assert len(errors) == 1 and "big.png: 256x256 = 65536 pixels to stylize" in errors[0]
    assert Image.open(tmp_path / "out" / "small.png").size == (64, 64)


@pytest.mark.parametrize("exc", [MemoryError, OverflowError])
def test_memory_and_overflow_errors_fail_one_file(tmp_path, photo, model_path, capsys, monkeypatch, exc):
    from instyle.engine.stylizer import Stylizer

    photo.crop((0, 0, 40, 24)).save(tmp_path / "huge.png")
    photo.crop((0, 0, 16, 16)).save(tmp_path / "fine.png")
    real = Stylizer.__call__

    def call(self, x, *a, **k):
        if x.shape[-1] == 40:
            raise exc("cannot allocate the tile buffers")
        return real(self, x, *a, **k)

    monkeypatch.setattr(Stylizer, "__call__", call)
    assert stylize(tmp_path / "huge.png", tmp_path / "fine.png", "-o", tmp_path / "out", "--model", model_path) == 1
    errors = _errors(capsys)
    assert len(errors) == 1 and "huge.png: stylizing failed" in errors[0]
    assert (tmp_path / "out" / "fine.png").is_file()


def test_decoder_type_error_fails_one_file(tmp_path, photo, model_path, capsys, monkeypatch):
    from PIL import TiffImagePlugin

    photo.crop((0, 0, 16, 16)).save(tmp_path / "a-fuzzed.tif")
    photo.crop((0, 0, 16, 16)).save(tmp_path / "b-good.png")

    def load(self):
        raise TypeError("'<' not supported between instances of 'tuple' and 'int'")

    monkeypatch.setattr(TiffImagePlugin.TiffImageFile, "load", load)
    assert stylize(tmp_path, "-o", tmp_path / "out", "--model", model_path) == 1
    errors = _errors(capsys)
    assert len(errors) == 1 and "a-fuzzed.tif: cannot decode (TypeError" in errors[0]
    assert (tmp_path / "out" / "b-good.png").is_file()


def test_animated_png_warns_that_only_the_first_frame_is_stylized(tmp_path, photo, model_path, capsys):
    """Animated PNG/WebP and multi-page TIFF are images (an animated GIF is a video: test_video.py)."""
    frames = [photo.crop((i, 0, i + 20, 12)) for i in (0, 50)]
    frames[0].save(tmp_path / "anim.png", save_all=True, append_images=frames[1:], duration=40)
    assert stylize(tmp_path / "anim.png", "-o", tmp_path / "out", "--model", model_path) == 0
    err = capsys.readouterr().err
    assert f"warning: {tmp_path / 'anim.png'}: 2 frames; only the first is stylized" in err.splitlines()
    assert Image.open(tmp_path / "out" / "anim.png").size == (20, 12)
