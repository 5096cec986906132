"""The encoding side of instyle.video: codec and pixel-format choice, and a writer thread.

The Writer owns the output container once its streams exist: it encodes stylized frames (after the
optional temporal filter) and muxes them and the copied audio packets in the order they were queued, on
its own thread, so decoding and stylizing the next batch overlap with encoding this one (the generator
on a GPU, libx264 and OpenCV on CPU cores; PyAV, OpenCV and torch release the GIL in their C code). At
most `depth` stylized batches wait for it, which keeps memory bounded.
"""
from __future__ import annotations

import queue
import threading
from fractions import Fraction
from pathlib import Path

import numpy as np

# encoder preference per output container; the first one this PyAV build has wins
_CODECS_BY_CONTAINER = {".webm": ("libvpx-vp9", "libvpx"), ".gif": ("gif",)}
_DEFAULT_CODECS = ("libx264", "libopenh264", "mpeg4")
# visually lossless constant-quality defaults for the encoders that take a CRF
DEFAULT_CRF = {"libx264": 18, "libx265": 20, "libvpx-vp9": 20, "libvpx": 10, "libaom-av1": 20, "libsvtav1": 20}
_SUBSAMPLED = ("420", "422", "411", "410", "nv12", "nv21", "nv16", "nv20", "nv24", "nv42")


def pick_codec(dst: Path, codec: str | None) -> str:
    import av

    if codec:
        try:
            av.Codec(codec, "w")
        except (av.FFmpegError, ValueError):
            raise ValueError(f"codec {codec!r} is not an encoder in this PyAV build") from None
        return codec
    candidates = _CODECS_BY_CONTAINER.get(dst.suffix.lower(), _DEFAULT_CODECS)
    for name in candidates:
        if name in av.codecs_available:
            return name
    raise ValueError(f"this PyAV build has none of the encoders {', '.join(candidates)} for {dst.suffix}")


def pick_pix_fmt(codec: str, src_fmt: str, width: int, height: int) -> str:
    """The input's pixel format when the encoder takes it at this size, else the closest one it does."""
    import av

    formats = [f.name for f in (av.Codec(codec, "w").video_formats or ())]
    if not formats:
        return src_fmt

    def fits(fmt: str) -> bool:
        return fmt in formats and not ((width % 2 or height % 2) and any(s in fmt for s in _SUBSAMPLED))

    for fmt in (src_fmt, "yuv420p", "yuv444p", "gbrp", "rgb24", "pal8", *formats):
        if fits(fmt):
            return fmt
    raise ValueError(f"{codec} cannot encode {width}x{height} frames in any pixel format")


def encoder_options(codec: str, crf: int | None, width: int, height: int, rate: Fraction) -> tuple[dict, int | None]:
    """(codec options, bit rate) for visually lossless output: CRF where the encoder has one, else a high rate."""
    if codec in DEFAULT_CRF:
        opts = {"crf": str(DEFAULT_CRF[codec] if crf is None else crf)}
        if codec.startswith("libvpx"):
            opts["b"] = "0"  # constant quality, no bit-rate cap
        return opts, None
    if crf is not None:
        raise ValueError(f"--crf needs an encoder with a CRF mode ({', '.join(DEFAULT_CRF)}), not {codec}")
    return {}, int(max(width * height * float(rate or 25) * 0.5, 2e5))  # ~0.5 bit/pixel, like crf 18


def open_encoder(out, vin, frame, shape, codec: str, crf: int | None, rate: Fraction):
    """Add the video stream to `out`: the input's time base, colour tags and the first frame's rotation."""
    height, width = shape[:2]
    pix_fmt = pick_pix_fmt(codec, vin.codec_context.pix_fmt or "yuv420p", width, height)
    opts, bit_rate = encoder_options(codec, crf, width, height, rate)
    enc = out.add_stream(codec, rate=rate, options=opts)
    enc.width, enc.height, enc.pix_fmt = width, height, pix_fmt
    enc.time_base = vin.time_base
    enc.codec_context.time_base = vin.time_base  # every input timestamp is representable: VFR survives
    if bit_rate:
        enc.codec_context.bit_rate = bit_rate
    cc_in, cc_out = vin.codec_context, enc.codec_context
    for tag in ("color_range", "colorspace", "color_primaries", "color_trc"):
        value = getattr(cc_in, tag, None)
        if value:
            setattr(cc_out, tag, value)
    rotation = getattr(frame, "rotation", 0)
    if rotation:
        enc.set_display_rotation(rotation)
    return enc


def _palettized(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """RGB uint8 -> (palette indices, 256x4 ARGB palette) for a pal8 frame (Pillow's median-cut, no dither)."""
    from PIL import Image

    q = Image.fromarray(rgb).quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    pal = np.zeros((256, 4), np.uint8)
    colours = np.asarray(q.getpalette()[:768], np.uint8).reshape(-1, 3)
    pal[: len(colours), 0], pal[: len(colours), 1:] = 255, colours
    return np.asarray(q), pal


class Writer:
    """Encode + mux on a thread. put(("audio", packet)) or put(("video", [(pts, time_base, src_rgb, styl)]));
    finish() flushes the encoder and re-raises the thread's error; abort() stops it without flushing.

    At most `depth` video batches wait; audio packets never block the caller (they are small, and the
    demuxer interleaves them with the video, which does wait), so the next batch is stylized while this
    one encodes even when audio packets come between them.
    """

    def __init__(self, out, enc, temporal=None, depth: int = 2):
        self.out, self.enc, self.temporal = out, enc, temporal
        self.queue: queue.SimpleQueue = queue.SimpleQueue()
        self.slots = threading.Semaphore(depth)
        self.error: BaseException | None = None
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="instyle-video-writer", daemon=True)
        self.thread.start()

    def put(self, item) -> None:
        if item is not None and item[0] == "video":
            while not self.slots.acquire(timeout=0.1):
                self._check()
        self._check()
        self.queue.put(item)

    def _check(self) -> None:
        if self.error is not None:
            raise self.error
        if not self.thread.is_alive():
            raise RuntimeError("video writer stopped")

    def finish(self) -> None:
        self.put(None)
        self.thread.join()
        if self.error is not None:
            raise self.error

    def abort(self) -> None:
        self.stop.set()
        self.queue.put(None)  # wakes a writer waiting on an empty queue
        self.thread.join()

    def _run(self) -> None:
        try:
            while not self.stop.is_set():
                item = self.queue.get()
                if item is None:
                    break
                kind, payload = item
                if kind == "audio":
                    self.out.mux(payload)
                    continue
                for frame in payload:
                    self._encode(*frame)
                self.slots.release()
            else:
                return  # aborted: no flush
            if not self.stop.is_set():
                for p in self.enc.encode(None):
                    self.out.mux(p)
        except BaseException as e:  # noqa: BLE001 -- handed to the main thread by put()/finish()
            self.error = e

    def _encode(self, pts, time_base, src_rgb, styl) -> None:
        import av

        if self.temporal is not None:
            styl = self.temporal(src_rgb, styl)
        if self.enc.pix_fmt == "pal8":  # GIF: a 256-colour palette per frame, not swscale's fixed 3-3-2 colours
            vf = av.VideoFrame.from_ndarray(_palettized(styl), format="pal8")
        else:
            vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(styl), format="rgb24")
        vf.pts, vf.time_base = pts, time_base
        for p in self.enc.encode(vf):
            self.out.mux(p)
