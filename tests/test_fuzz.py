"""Seeded, time-bounded fuzzing of the image read path and `instyle stylize` with mutated real photos.

Every supported format is made from a real photo at a small size, then mutated (bit flips, truncation,
"interesting" integers written over header fields, inserted and repeated slices, splices across formats).
The read path must answer each file with a Picture or one ImageError line naming it; the CLI must print one
line per bad file, never a traceback, exit 1 when any failed, and still write every good file.
Knobs: INSTYLE_FUZZ_SEED (default 20261126), INSTYLE_FUZZ_SECONDS (total budget, default 20).
"""
import importlib.util
import io as _io
import os
import random
import re
import time
import warnings
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from instyle import checkpoint, io
from instyle.cli import main
from instyle.models import JohnsonNet

SEED = int(os.environ.get("INSTYLE_FUZZ_SEED", "20261126"))
BUDGET_S = float(os.environ.get("INSTYLE_FUZZ_SECONDS", "20"))
MAX_PIXELS = 16_384  # a mutated header asking for more is refused cheaply; pypng decodes in pure Python
INTERESTING = [0, 1, 0x7F, 0x80, 0xFF, 0x7FFF, 0x8000, 0xFFFF, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF]


@pytest.fixture(scope="module")
def seeds(data) -> dict[str, bytes]:
    """name -> bytes: one small real photo in every format the reader supports."""
    with Image.open(data / "content" / "demo" / "chicago.jpg") as img:
        rgb = img.convert("RGB").resize((40, 28), Image.Resampling.LANCZOS)
    out = {}

    def save(name, image, **kwargs):
        buf = _io.BytesIO()
        image.save(buf, format=kwargs.pop("format"), **kwargs)
        out[name] = buf.getvalue()

    save("photo.jpg", rgb, format="JPEG", quality=85)
    save("photo.png", rgb, format="PNG")
    rgba = rgb.copy()
    rgba.putalpha(Image.linear_gradient("L").resize(rgb.size))
    save("alpha.png", rgba, format="PNG")
    save("photo.tif", rgb, format="TIFF", compression="tiff_lzw")
    save("raw.tiff", rgb, format="TIFF")
    save("photo.webp", rgb, format="WEBP", quality=80)
    save("photo.bmp", rgb, format="BMP")
    frames = [rgb, rgb.transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
    if importlib.util.find_spec("av") is not None:  # an animated GIF is a video input: it needs PyAV
        save("anim.gif", frames[0].convert("P"), format="GIF", save_all=True, append_images=[frames[1].convert("P")],
             duration=40)
    gray16 = Image.fromarray(np.asarray(rgb.convert("L"), dtype=np.uint16) * 257)  # mode I;16
    save("gray16.png", gray16, format="PNG")
    png = pytest.importorskip("png")
    buf = _io.BytesIO()
    rgb16 = np.asarray(rgb, dtype=np.uint16) * 257
    png.Writer(40, 28, greyscale=False, bitdepth=16).write(buf, rgb16.reshape(28, -1))
    out["rgb16.png"] = buf.getvalue()
    return out


def mutate(rng: random.Random, blob: bytes, others: list[bytes]) -> bytes:
    b = bytearray(blob)
    head = min(len(b), 256)  # half the mutations hit the header, where the parsers' trust lives
    pos = lambda: rng.randrange(head) if rng.random() < 0.5 else rng.randrange(len(b))  # noqa: E731
    kind = rng.randrange(6)
    if kind == 0:
        for _ in range(rng.randint(1, 8)):
            b[pos()] ^= 1 << rng.randrange(8)
    elif kind == 1:
        del b[rng.randrange(1, len(b)):]
    elif kind == 2:
        value, width = rng.choice(INTERESTING), rng.choice((1, 2, 4))
        i = min(pos(), len(b) - width)
        b[i:i + width] = (value & ((1 << 8 * width) - 1)).to_bytes(width, rng.choice(("big", "little")))
    elif kind == 3:
        i = pos()
        b[i:i] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 32)))
    elif kind == 4:
        i = pos()
        j = min(len(b), i + rng.randint(1, 64))
        b[i:i] = b[i:j] * rng.randint(1, 8)
    else:
        other = rng.choice(others)
        b = b[:pos()] + other[rng.randrange(len(other)):]
    if b[:8] == b"\x89PNG\r\n\x1a\n" and rng.random() < 0.7:
        _fix_png_crcs(b)  # otherwise the CRC check rejects nearly every mutated PNG before its decoder runs
    return bytes(b)


def _fix_png_crcs(b: bytearray) -> None:
    i = 8
    while i + 12 <= len(b):
        n = int.from_bytes(b[i:i + 4], "big")
        if i + 12 + n > len(b):
            return
        b[i + 8 + n:i + 12 + n] = zlib.crc32(b[i + 4:i + 8 + n]).to_bytes(4, "big")
        i += 12 + n


def test_read_path_survives_mutated_files(tmp_path, seeds):
    rng = random.Random(SEED)
    names, blobs = list(seeds), list(seeds.values())
    deadline = time.monotonic() + BUDGET_S * 0.4
    tried, outcomes = 0, {}
    while time.monotonic() < deadline:
        name = rng.choice(names)
        path = tmp_path / f"{tried:05d}-{name}"
        path.write_bytes(mutate(rng, seeds[name], blobs))
        for fn in (io.image_size, lambda p: io.read_image(p, max_pixels=MAX_PIXELS)):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    fn(path)
                outcomes["ok"] = outcomes.get("ok", 0) + 1
            except io.ImageError as e:
                message = str(e)
                assert message.startswith(f"{path}: ") and "\n" not in message, (SEED, tried, message)
                outcomes["ImageError"] = outcomes.get("ImageError", 0) + 1
            except Exception as e:
                pytest.fail(f"seed {SEED}, file {tried} ({name}): {type(e).__name__}: {e} escaped the reader")
        path.unlink()
        tried += 1
    assert tried >= 50, f"only {tried} files in the budget"
    assert outcomes.get("ImageError") and outcomes.get("ok"), outcomes


_LINE = re.compile(r"^(error|warning): |^\d+ stylized, \d+ skipped \(exist\), \d+ failed -> ")


def test_cli_survives_mutated_files_and_good_files_still_come_out(tmp_path, seeds, capfd):
    model = checkpoint.save(JohnsonNet(width=4, blocks=1), tmp_path / "tiny.safetensors")
    rng = random.Random(SEED + 1)
    deadline = time.monotonic() + BUDGET_S * 0.6
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # 40x28 images: thread start-up and spinning would cost more than the convolutions
    try:
        _cli_rounds(tmp_path, seeds, capfd, model, rng, deadline)
    finally:
        torch.set_num_threads(threads)


def _cli_rounds(tmp_path, seeds, capfd, model, rng, deadline):
    names, blobs = list(seeds), list(seeds.values())
    rounds = 0
    while rounds == 0 or time.monotonic() < deadline:
        src, out = tmp_path / f"in{rounds}", tmp_path / f"out{rounds}"
        (src / "good").mkdir(parents=True)
        for name, blob in seeds.items():
            (src / "good" / name).write_bytes(blob)
        for i in range(24):
            name = rng.choice(names)
            (src / f"{i:02d}-{name}").write_bytes(mutate(rng, seeds[name], blobs))
        code = main(["stylize", str(src), "-o", str(out), "--model", str(model), "--backend", "eager",
                     "--device", "cpu", "--max-pixels", str(MAX_PIXELS)])
        err = capfd.readouterr().err  # the file descriptor too: C libraries (libtiff) write there
        where = f"seed {SEED}, round {rounds}"
        assert "Traceback" not in err, where
        lines = err.splitlines()
        assert all(_LINE.match(line) for line in lines), (where, [x for x in lines if not _LINE.match(x)])
        errors = [x for x in lines if x.startswith("error: ")]
        assert code == (1 if errors else 0), (where, code, errors)
        for name in seeds:
            assert (out / "good" / name).is_file(), (where, name)
        written = [p for p in out.rglob("*") if p.is_file()]
        assert not [p for p in written if ".tmp-" in p.name or p.name.startswith(".")], where
        done = int(re.search(r"^(\d+) stylized", lines[-1]).group(1))
        assert done == len(written) and done + len(errors) == len(seeds) + 24, (where, done, len(errors))
        rounds += 1
