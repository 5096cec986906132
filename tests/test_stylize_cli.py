"""`instyle stylize` end to end on real photos, checked against an independent functional forward."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from instyle.cli import main
from test_models import transformer_net_functional


@pytest.fixture(scope="module")
def model_path(data):
    return data / "pretrained" / "random-transformernet.pth"


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


@pytest.mark.parametrize("bad", [["--batch", "0"], ["--tile", "huge"], ["--format", "xyz"], ["--quality", "0"]])
def test_usage_errors_exit_2(tmp_path, bad, capsys):
    assert main(["stylize", str(tmp_path), *bad]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_missing_model_is_one_line(tmp_path, photo, capsys):
    photo.crop((0, 0, 8, 8)).save(tmp_path / "p.png")
    assert main(["stylize", str(tmp_path / "p.png"), "--model", str(tmp_path / "none.pth")]) == 1
    assert capsys.readouterr().err.strip().endswith("none.pth: no such model file or shipped style")
