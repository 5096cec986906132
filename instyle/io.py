"""Image files in and out (Pillow), per the image contract (docs/architecture.md).

Read: EXIF orientation applied; ICC profile kept; alpha split off and re-attached; L/LA/P/CMYK/I;16 ->
RGB; 16-bit PNGs (grayscale via Pillow, RGB/RGBA via pypng) and 16-bit grayscale TIFFs read at full
precision (0..65535 mapped to 0..255 floats); a pixel limit, checked on the header before any decoding,
guards against decompression bombs. Multi-frame files (animated GIF/WebP/PNG, multi-page TIFF): the first
frame is read and `Picture.frames` says how many there were. Any failure while reading one file, whatever
the decoder raised, is an ImageError naming the file. Write: format from the extension, atomic (temp file +
rename).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from instyle.atomic import atomic_path
from instyle.errors import ImageError, install_command
from instyle.files import InputFileError, open_regular
from instyle.specs import DEFAULT_MAX_PIXELS

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif", ".ppm", ".pgm", ".pnm", ".tga"})
_FORMATS = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".webp": "WEBP", ".bmp": "BMP", ".tif": "TIFF",
            ".tiff": "TIFF", ".gif": "GIF", ".ppm": "PPM", ".pgm": "PPM", ".pnm": "PPM", ".tga": "TGA"}
_HIGH_BIT_MODES = {"I;16", "I;16B", "I;16L", "I;16N", "I", "F"}


@dataclass
class Picture:
    """RGB pixels (H, W, 3; uint8, or float32 0..255 for high-bit input) plus what must survive the trip."""

    rgb: np.ndarray
    alpha: Image.Image | None = None
    icc_profile: bytes | None = None
    frames: int = 1  # frames (pages) in the file; only the first is in `rgb`

    @property
    def size(self) -> tuple[int, int]:
        """(width, height), Pillow's order."""
        return self.rgb.shape[1], self.rgb.shape[0]


def _high_bit_to_float(img: Image.Image) -> np.ndarray:
    a = np.asarray(img, dtype=np.float32)
    top = 65535.0 if img.mode.startswith("I") else max(float(a.max()), 1.0)
    return np.clip(a * (255.0 / top), 0, 255)


def picture_from_pil(img: Image.Image) -> Picture:
    """Convert an opened (already oriented) Pillow image to a Picture."""
    icc = img.info.get("icc_profile")
    alpha = None
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA") if img.mode != "LA" else img
        alpha = rgba.getchannel("A")
        img = rgba.convert("RGB") if img.mode != "LA" else img.getchannel("L").convert("RGB")
    if img.mode in _HIGH_BIT_MODES:
        gray = _high_bit_to_float(img)
        rgb = np.repeat(gray[..., None], 3, axis=2)
    elif img.mode == "CMYK":
        # an embedded CMYK profile does not describe the RGB result: drop it
        rgb, icc = np.asarray(img.convert("RGB")), None
    elif img.mode == "RGB":
        rgb = np.asarray(img)
    else:
        rgb = np.asarray(img.convert("RGB"))
    return Picture(np.ascontiguousarray(rgb), alpha, icc)


def _is_png48(path: Path) -> bool:
    """A 16-bit-per-channel RGB(A) PNG (IHDR bit depth 16, colour type 2 or 6), which Pillow decodes to 8 bits."""
    with open_regular(path) as f:
        head = f.read(26)
    return head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR" and head[24] == 16 and head[25] in (2, 6)


def _read_rgb48(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """The RGB planes of a 16-bit PNG at full precision (pypng), as float32 0..255, and its 8-bit alpha (or None).

    Decoded row by row into one preallocated array: memory is the result plus one row.
    """
    import png

    with open_regular(path) as f:  # pypng leaves a file it opened itself open when decoding fails
        return _decode_rgb48(png.Reader(file=f))


def _decode_rgb48(reader) -> tuple[np.ndarray, np.ndarray | None]:
    width, height, rows, info = reader.asDirect()
    planes = info["planes"]
    rgb = np.empty((height, width, 3), np.float32)
    alpha = np.empty((height, width), np.uint8) if planes == 4 else None
    scale = np.float32(255.0 / 65535.0)
    y = -1
    for y, row in enumerate(rows):
        if y >= height:
            raise ValueError("more rows than the header says")
        a = np.frombuffer(row, dtype=np.uint16) if isinstance(row, (bytes, bytearray, memoryview)) or \
            getattr(row, "typecode", "") == "H" else np.asarray(row, dtype=np.uint16)
        a = a.reshape(width, planes)
        np.multiply(a[:, :3], scale, out=rgb[y], casting="unsafe")
        if alpha is not None:
            alpha[y] = a[:, 3] >> 8  # Pillow's 8-bit alpha of a 16-bit PNG: the high byte
    if y != height - 1:
        raise ValueError(f"truncated: {y + 1} of {height} rows")
    return rgb, alpha


def _png_orientation(img: Image.Image, path: Path) -> int:
    """The EXIF orientation of a PNG without decoding it (Pillow's getexif decodes when eXIf follows IDAT)."""
    if "exif" in img.info:
        return img.getexif().get(0x0112, 1)
    with open_regular(path) as f:
        f.seek(8)
        while True:
            head = f.read(8)
            if len(head) < 8:
                return 1
            n, kind = int.from_bytes(head[:4], "big"), head[4:]
            if kind == b"eXIf":
                exif = Image.Exif()
                exif.load(f.read(n))
                return exif.get(0x0112, 1)
            if kind == b"IEND":
                return 1
            f.seek(n + 4, os.SEEK_CUR)


def _orient(a: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF orientation to an H,W,C array, as ImageOps.exif_transpose does to an image."""
    ops = {2: lambda t: t[:, ::-1], 3: lambda t: t[::-1, ::-1], 4: lambda t: t[::-1],
           5: lambda t: t.transpose(1, 0, 2), 6: lambda t: np.rot90(t, -1),
           7: lambda t: t[::-1, ::-1].transpose(1, 0, 2), 8: lambda t: np.rot90(t, 1)}
    return np.ascontiguousarray(ops[orientation](a)) if orientation in ops else a


def read_image(path: str | os.PathLike, *, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Picture:
    """Decode an image file fully; raise ImageError('PATH: cause') for anything unusable.

    Whatever the decoder raises on a damaged or hostile file (OSError, TypeError, MemoryError, a missing
    optional package, ...) becomes one ImageError naming the file; only KeyboardInterrupt/SystemExit pass.
    """
    path = Path(path)
    old_limit = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None  # our own limit below gives the clearer message
    try:
        with open_regular(path) as f, Image.open(f) as img:
            w, h = img.size
            if max_pixels is not None and w * h > max_pixels:
                raise ImageError(f"{path}: {w}x{h} = {w * h} pixels is over the limit of {max_pixels} "
                                 f"(a decompression bomb?); raise it with --max-pixels")
            frames = _frame_count(img)
            if img.format == "PNG" and _is_png48(path):
                # Pillow would decode it to 8 bits only to be thrown away: decode once, at 16 bits
                rgb, alpha = _read_rgb48(path)
                if rgb.shape[:2] != (h, w):
                    raise ValueError(f"pypng read {rgb.shape[1]}x{rgb.shape[0]}, the header says {w}x{h}")
                orientation = _png_orientation(img, path)
                oriented_alpha = None if alpha is None else _orient(alpha[..., None], orientation)[..., 0]
                return Picture(_orient(rgb, orientation),
                               None if alpha is None else Image.fromarray(oriented_alpha),
                               img.info.get("icc_profile"), frames)
            img.load()
            oriented = ImageOps.exif_transpose(img)
            pic = picture_from_pil(oriented)
            pic.frames = frames
            return pic
    except ImageError:
        raise
    except InputFileError as e:  # a FIFO, a device node, ...: never opened, let alone read
        raise ImageError(str(e)) from None
    except FileNotFoundError:
        raise ImageError(f"{path}: no such file") from None
    except UnidentifiedImageError:
        size = path.stat().st_size if path.exists() else 0
        cause = "empty file" if size == 0 else "not an image file Pillow can read"
        raise ImageError(f"{path}: {cause}") from None
    except ModuleNotFoundError as e:
        raise ImageError(f"{path}: reading it needs {e.name}, which is not installed: "
                         f"{install_command(e.name or '')}") from None
    except MemoryError:
        raise ImageError(f"{path}: not enough memory to decode it") from None
    except Exception as e:  # a hostile file can make a decoder raise anything: it is still one bad file
        raise ImageError(f"{path}: cannot decode ({_describe(e)})") from None
    finally:
        Image.MAX_IMAGE_PIXELS = old_limit


def _frame_count(img: Image.Image) -> int:
    try:
        return max(1, int(getattr(img, "n_frames", 1)))
    except Exception:  # a damaged multi-frame file may fail to count its frames; the first may still decode
        return 1


def _describe(e: BaseException) -> str:
    """One line: the message's first line, with the type name where the message alone says little."""
    text = str(e).strip()
    first = text.splitlines()[0][:200] if text else ""
    if isinstance(e, (OSError, SyntaxError, ValueError)) and first:
        return first
    return f"{type(e).__name__}: {first}" if first else type(e).__name__


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """(width, height) as displayed (EXIF orientation applied), from the header alone."""
    old_limit = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        with open_regular(path) as f, Image.open(f) as img:
            w, h = img.size
            # Pillow's PNG getexif() decodes the whole image when no eXIf precedes IDAT: never here
            orientation = _png_orientation(img, Path(path)) if img.format == "PNG" else img.getexif().get(0x0112, 1)
            return (h, w) if orientation in (5, 6, 7, 8) else (w, h)
    except InputFileError as e:
        raise ImageError(str(e)) from None
    except FileNotFoundError:
        raise ImageError(f"{path}: no such file") from None
    except UnidentifiedImageError:
        size = Path(path).stat().st_size if Path(path).exists() else 0
        raise ImageError(f"{path}: {'empty file' if size == 0 else 'not an image file Pillow can read'}") from None
    except Exception as e:  # see read_image: anything a decoder raises is this file's error
        raise ImageError(f"{path}: cannot read header ({_describe(e)})") from None
    finally:
        Image.MAX_IMAGE_PIXELS = old_limit


def picture_to_pil(pic: Picture) -> Image.Image:
    rgb = pic.rgb
    if rgb.dtype != np.uint8:
        rgb = np.clip(np.rint(rgb), 0, 255).astype(np.uint8)
    img = Image.fromarray(rgb, "RGB")
    if pic.alpha is not None:
        alpha = pic.alpha if pic.alpha.size == img.size else pic.alpha.resize(img.size, Image.Resampling.LANCZOS)
        img.putalpha(alpha)
    if pic.icc_profile:
        img.info["icc_profile"] = pic.icc_profile
    return img


def format_for(path: str | os.PathLike) -> str:
    ext = Path(path).suffix.lower()
    if ext not in _FORMATS:
        raise ImageError(f"{path}: unknown output format {ext or '(no extension)'!r} "
                         f"(use one of {', '.join(sorted(_FORMATS))})")
    return _FORMATS[ext]


def write_image(path: str | os.PathLike, pic: Picture, *, quality: int = 95) -> Path:
    """Encode `pic` in the format named by the extension, atomically (no partial file on failure)."""
    path = Path(path)
    fmt = format_for(path)
    img = picture_to_pil(pic)
    if fmt in ("JPEG", "BMP", "PPM") and img.mode == "RGBA":
        img = img.convert("RGB")  # formats without alpha
    kwargs: dict = {}
    if fmt in ("JPEG", "WEBP"):
        kwargs["quality"] = quality
    if pic.icc_profile and fmt in ("JPEG", "PNG", "WEBP", "TIFF"):
        kwargs["icc_profile"] = pic.icc_profile
    try:
        with atomic_path(path) as tmp:
            img.save(tmp, format=fmt, **kwargs)
    except OSError as e:
        raise ImageError(f"{path}: cannot write ({e})") from None
    except Exception as e:  # an encoder refusing what the input carried (a malformed ICC profile, ...)
        raise ImageError(f"{path}: cannot write ({_describe(e)})") from None
    return path


def resize_picture(pic: Picture, size: tuple[int, int]) -> Picture:
    """Resample to (width, height) with Lanczos, keeping float precision for high-bit input."""
    if pic.size == size:
        return pic
    if pic.rgb.dtype == np.uint8:
        rgb = np.asarray(Image.fromarray(pic.rgb).resize(size, Image.Resampling.LANCZOS))
    else:
        rgb = np.stack([np.asarray(Image.fromarray(pic.rgb[..., c], "F").resize(size, Image.Resampling.LANCZOS))
                        for c in range(3)], axis=2).clip(0, 255)
    return Picture(rgb, pic.alpha, pic.icc_profile)


def to_tensor(pictures: list[Picture]):
    """Equal-size Pictures -> float32 tensor N,3,H,W in 0..255."""
    import torch

    return torch.from_numpy(np.stack([p.rgb for p in pictures]).astype(np.float32, copy=False)).permute(0, 3, 1, 2)


def rgb_from_tensor(t) -> np.ndarray:
    """One C,H,W float tensor in 0..255 -> H,W,3 uint8 (rounded, clamped)."""
    import torch

    return t.detach().float().clamp(0, 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
