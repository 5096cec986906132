"""Mask files for regions (`instyle stylize --mask M.png --regions ... --strength-map S.png`).

A mask is an 8-bit greyscale or RGB image (any format Pillow reads; EXIF orientation applied, as for photos)
whose values name regions through `--regions` (instyle/specs.py, parse_regions); a strength map is an 8-bit
greyscale image, 0 = the photo, 255 = the full style. Either is read whole, once, before any output is
written: an unreadable file, transparency, 16 bits, a colour strength map, fewer than 2x2 pixels, more pixels
than --max-pixels, or a mask value that no region names is a UsageError (one line naming the file), so a bad
mask never leaves a half-written output. Resizing to each image happens in engine/regions.py.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from instyle.errors import UsageError

MIN_SIDE = 2


def _describe(rgb: tuple[int, int, int]) -> str:
    return str(rgb[0]) if rgb[0] == rgb[1] == rgb[2] else "#{:02x}{:02x}{:02x}".format(*rgb)


def _read(path: Path, flag: str, max_pixels: int) -> np.ndarray:
    """H x W x 3 uint8, or a UsageError naming the flag and the file."""
    from instyle import io

    try:
        pic = io.read_image(path, max_pixels=max_pixels)
    except io.ImageError as e:
        raise UsageError(f"{flag} {e}") from None
    w, h = pic.size
    if pic.rgb.dtype != np.uint8:
        raise UsageError(f"{flag} {path}: a 16-bit image; save the mask with 8 bits per channel")
    if pic.alpha is not None and np.asarray(pic.alpha).min() < 255:
        raise UsageError(f"{flag} {path}: has transparency; a mask is greyscale or RGB, without alpha")
    if w < MIN_SIDE or h < MIN_SIDE:
        raise UsageError(f"{flag} {path}: {w}x{h} pixels; a mask needs at least {MIN_SIDE}x{MIN_SIDE}")
    return pic.rgb


def read_mask(path: str | Path, regions: list, max_pixels: int) -> tuple[np.ndarray, tuple]:
    """(labels H x W int64, mixes): each pixel's index into `mixes`, the mixes of the regions the mask uses.
    `regions` is parse_regions' list of (value, mix)."""
    path = Path(path)
    rgb = _read(path, "--mask", max_pixels)
    packed = (rgb[..., 0].astype(np.int64) << 16) | (rgb[..., 1].astype(np.int64) << 8) | rgb[..., 2]
    values, inverse = np.unique(packed, return_inverse=True)
    table = {key: mix for key, mix in regions}
    mixes, index, lut = [], {}, []  # lut: each distinct mask value -> its label
    for v in values.tolist():
        rgb_v = ((v >> 16) & 255, (v >> 8) & 255, v & 255)
        key = rgb_v if rgb_v in table else "*" if "*" in table else None
        if key is None:
            raise UsageError(f"--mask {path}: the value {_describe(rgb_v)} has no region in --regions "
                             f"(add {_describe(rgb_v)}=..., or *=... for every value not listed)")
        if key not in index:
            index[key] = len(mixes)
            mixes.append(table[key])
        lut.append(index[key])
    return np.asarray(lut, dtype=np.int64)[inverse.reshape(packed.shape)], tuple(mixes)


def read_strength_map(path: str | Path, max_pixels: int) -> np.ndarray:
    """H x W float32 in 0..1 from an 8-bit greyscale image."""
    path = Path(path)
    rgb = _read(path, "--strength-map", max_pixels)
    if not ((rgb[..., 0] == rgb[..., 1]) & (rgb[..., 1] == rgb[..., 2])).all():
        raise UsageError(f"--strength-map {path}: has colours; a strength map is greyscale (0 = the photo, "
                         "255 = the full style)")
    return rgb[..., 0].astype(np.float32) / 255.0


def distinct_styles(mixes: tuple) -> int:
    """How many different style mixes (their `none` share set aside) the regions use: 2 or more need a
    per-pixel style map; 0 or 1 are a strength map, which every backend runs."""
    seen = set()
    for mix in mixes:
        styled = {k: float(w) for k, w in mix.items() if k != "none" and float(w) > 0}
        total = sum(styled.values())
        if total > 0:
            seen.add(tuple(sorted((str(k), round(w / total, 6)) for k, w in styled.items())))
    return len(seen)
