"""Image I/O: orientation, alpha, ICC, high-bit input, pixel limit, atomic writes."""
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, ImageOps

from instyle import io


def test_16bit_grayscale_png_keeps_full_precision(tmp_path):
    values = (np.arange(480, dtype=np.uint32) * 131).astype(np.uint16).reshape(16, 30)  # 480 distinct levels
    Image.fromarray(values).save(tmp_path / "g16.png")
    pic = io.read_image(tmp_path / "g16.png")
    assert pic.rgb.dtype == np.float32
    np.testing.assert_allclose(pic.rgb[..., 0], values * (255 / 65535), rtol=0, atol=1e-3)
    assert len(np.unique(pic.rgb)) == 480, "8-bit quantisation would leave at most 256 levels"


@pytest.mark.parametrize("orientation", [1, 2, 3, 4, 5, 6, 7, 8])
@pytest.mark.parametrize("planes", [3, 4])
def test_16bit_rgb_png_keeps_full_precision_and_orientation(tmp_path, data, orientation, planes):
    png = pytest.importorskip("png")
    with Image.open(data / "content" / "demo" / "amber.jpg") as photo:
        base = np.asarray(photo.convert("RGB").resize((13, 7)), dtype=np.uint16)
    rgb16 = base * 257 + np.arange(13, dtype=np.uint16)[None, :, None]  # low bits that 8-bit decoding loses
    pixels = np.concatenate([rgb16, np.full((7, 13, 1), 65535, np.uint16)], axis=2)[..., :planes]
    path = tmp_path / "rgb16.png"
    with open(path, "wb") as f:
        png.Writer(13, 7, greyscale=False, alpha=planes == 4, bitdepth=16).write(f, pixels.reshape(7, -1))
    if orientation != 1:  # Pillow would re-save at 8 bits, so splice an eXIf chunk in right after IHDR
        exif = Image.Exif()
        exif[0x0112] = orientation
        blob = exif.tobytes()
        raw = path.read_bytes()
        chunk = struct.pack(">I", len(blob)) + b"eXIf" + blob + struct.pack(">I", zlib.crc32(b"eXIf" + blob))
        path.write_bytes(raw[:33] + chunk + raw[33:])  # signature (8) + IHDR chunk (25)
    pic = io.read_image(path)
    with Image.open(path) as img:  # Pillow's 8-bit view, oriented: the geometry we must match
        expected_8bit = np.asarray(ImageOps.exif_transpose(img).convert("RGB"), dtype=np.float32)
    assert pic.rgb.dtype == np.float32 and pic.rgb.shape == expected_8bit.shape
    assert np.abs(pic.rgb - expected_8bit).max() <= 1.0  # same pixels in the same places...
    upright = io._orient(rgb16.astype(np.float32) * (255 / 65535), orientation)
    np.testing.assert_allclose(pic.rgb, upright, rtol=0, atol=1e-3)  # ...at 16-bit precision


@pytest.mark.parametrize("mode", ["L", "LA", "P", "CMYK", "RGBA", "I;16"])
def test_modes_become_rgb(tmp_path, mode):
    src = Image.new("RGB", (7, 5), (200, 30, 90)).convert(mode)
    path = tmp_path / ("m.tif" if mode == "CMYK" else "m.png")
    src.save(path)
    pic = io.read_image(path)
    assert pic.rgb.shape == (5, 7, 3)
    assert (pic.alpha is not None) == (mode in ("LA", "RGBA"))


def test_exif_orientation_applied(data):
    path = data / "content" / "hires" / "exif_hdr_canon_hdr_NO.jpg"  # stored 2048x1536, Orientation=6
    assert io.image_size(path) == (1536, 2048)


def test_icc_profile_survives(tmp_path, data):
    from PIL import ImageCms

    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    Image.new("RGB", (9, 9), (1, 2, 3)).save(tmp_path / "in.png", icc_profile=icc)
    pic = io.read_image(tmp_path / "in.png")
    io.write_image(tmp_path / "out.jpg", pic)
    with Image.open(tmp_path / "out.jpg") as out:
        assert out.info.get("icc_profile") == icc


def test_pixel_limit_is_a_clear_error(tmp_path):
    Image.new("1", (300, 200)).save(tmp_path / "big.png")
    with pytest.raises(io.ImageError, match=r"big.png: 300x200 = 60000 pixels is over the limit of 50000"):
        io.read_image(tmp_path / "big.png", max_pixels=50_000)


def test_failed_write_leaves_nothing(tmp_path, monkeypatch):
    pic = io.Picture(np.zeros((4, 4, 3), np.uint8))

    def broken_save(self, fp, *args, **kwargs):
        open(fp, "wb").write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", broken_save)
    with pytest.raises(io.ImageError, match="out.png: cannot write"):
        io.write_image(tmp_path / "out.png", pic)
    assert list(tmp_path.iterdir()) == []


def test_unknown_output_extension(tmp_path):
    with pytest.raises(io.ImageError, match="unknown output format"):
        io.write_image(tmp_path / "out.xyz", io.Picture(np.zeros((2, 2, 3), np.uint8)))


# --- hostile and odd inputs: every failure is one ImageError naming the file ---

def _rgb48_png(path, width=13, height=7, planes=3):
    png = pytest.importorskip("png")
    pixels = (np.arange(width * height * planes, dtype=np.uint32) * 977 % 65536).astype(np.uint16)
    with open(path, "wb") as f:
        png.Writer(width, height, greyscale=False, alpha=planes == 4, bitdepth=16).write(
            f, pixels.reshape(height, width * planes))
    return path


@pytest.mark.parametrize("exc", [TypeError("unsupported operand"), KeyError(273), MemoryError(), OverflowError()])
def test_any_decoder_exception_is_an_image_error(tmp_path, monkeypatch, exc):
    from PIL import ImageFile

    Image.new("RGB", (8, 8)).save(tmp_path / "fuzzed.tif")

    def load(self):
        raise exc

    monkeypatch.setattr(ImageFile.ImageFile, "load", load)
    with pytest.raises(io.ImageError, match=r"fuzzed\.tif: ") as err:
        io.read_image(tmp_path / "fuzzed.tif")
    assert "\n" not in str(err.value)


def test_missing_pypng_is_an_image_error_with_the_install_command(tmp_path, monkeypatch):
    path = _rgb48_png(tmp_path / "deep.png")
    monkeypatch.setitem(__import__("sys").modules, "png", None)
    with pytest.raises(io.ImageError, match=r"deep\.png: .*pip install pypng"):
        io.read_image(path)


def test_16bit_png_is_decoded_once(tmp_path, monkeypatch):
    from PIL import ImageFile

    path = _rgb48_png(tmp_path / "deep.png", planes=4)
    with Image.open(path) as img:
        eight_bit_alpha = np.asarray(img.getchannel("A"))
    calls = []
    real = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: calls.append(1) or real(self))
    pic = io.read_image(path)
    assert calls == [], "Pillow decoded the 16-bit PNG to 8 bits only to throw it away"
    assert np.array_equal(np.asarray(pic.alpha), eight_bit_alpha)


def test_16bit_png_decoding_memory_is_about_the_result(tmp_path):
    import tracemalloc

    path = _rgb48_png(tmp_path / "deep.png", width=1200, height=800)  # pypng's own buffers are a few MB
    tracemalloc.start()
    try:
        pic = io.read_image(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1.5 * pic.rgb.nbytes, f"peak {peak / 1e6:.1f} MB for a {pic.rgb.nbytes / 1e6:.1f} MB result"


def test_huge_16bit_png_is_refused_from_the_header(tmp_path, monkeypatch):
    ihdr = struct.pack(">IIBBBBB", 60000, 60000, 16, 2, 0, 0, 0)
    chunk = struct.pack(">I", 13) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    iend = struct.pack(">I", 0) + b"IEND" + struct.pack(">I", zlib.crc32(b"IEND"))
    (tmp_path / "huge.png").write_bytes(b"\x89PNG\r\n\x1a\n" + chunk + iend)
    png = pytest.importorskip("png")
    monkeypatch.setattr(png, "Reader", lambda *a, **k: pytest.fail("decoding started"))
    with pytest.raises(io.ImageError, match=r"huge\.png: 60000x60000 = 3600000000 pixels is over the limit"):
        io.read_image(tmp_path / "huge.png")


def test_multi_frame_files_report_their_frame_count(tmp_path):
    frames = [Image.new("RGB", (8, 6), c) for c in ("red", "blue", "green")]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:], duration=50)
    frames[0].save(tmp_path / "pages.tif", save_all=True, append_images=frames[1:2])
    assert io.read_image(tmp_path / "anim.gif").frames == 3
    assert io.read_image(tmp_path / "pages.tif").frames == 2
    assert io.read_image(tmp_path / "anim.gif").rgb[0, 0].tolist() == [255, 0, 0]  # the first frame


def test_temporary_names_do_not_look_like_images(tmp_path):
    from instyle.atomic import atomic_path

    with atomic_path(tmp_path / "photo.png") as tmp:
        assert tmp.name.startswith(".photo.png.tmp-") and tmp.suffix.lower() not in io.IMAGE_EXTENSIONS
        tmp.write_bytes(b"x")
    with pytest.raises(KeyboardInterrupt), atomic_path(tmp_path / "other.png") as tmp:
        tmp.write_bytes(b"partial")
        raise KeyboardInterrupt
    assert sorted(p.name for p in tmp_path.iterdir()) == ["photo.png"]


def test_image_size_never_decodes(tmp_path, monkeypatch):
    from PIL import ImageFile

    ihdr = struct.pack(">IIBBBBB", 30000, 30000, 8, 2, 0, 0, 0)  # 900 Mpx, no eXIf before IDAT
    chunk = struct.pack(">I", 13) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    idat = zlib.compress(b"\x00" * 64)
    idat = struct.pack(">I", len(idat)) + b"IDAT" + idat + struct.pack(">I", zlib.crc32(b"IDAT" + idat))
    iend = struct.pack(">I", 0) + b"IEND" + struct.pack(">I", zlib.crc32(b"IEND"))
    (tmp_path / "bomb.png").write_bytes(b"\x89PNG\r\n\x1a\n" + chunk + idat + iend)
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: pytest.fail("image_size decoded the image"))
    assert io.image_size(tmp_path / "bomb.png") == (30000, 30000)
