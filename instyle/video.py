"""Video files in and out (PyAV), streamed: decode -> batches of frames -> Stylizer -> encode.

Memory is bounded by the batch (plus the codecs' own look-ahead), never by the clip's length. Kept from
the input: the container (output name = input name), frame count, every frame's timestamp (so frame rate,
time base, duration and variable frame rates survive), frame size, pixel format where the encoder takes
it, colour tags and the display rotation (pixels are stylized as stored and the same display matrix is
written). Audio streams are copied packet by packet, never re-encoded. The output is written to a temp
file beside the destination and renamed when complete; an exception or Ctrl-C removes the temp file.

Odd frame sizes: H.264/H.265/VP9 cannot encode chroma-subsampled 4:2:0/4:2:2 frames of odd width or
height, so such sizes are encoded as 4:4:4 (yuv444p), which keeps every pixel (some hardware players
do not play 4:4:4).

Library code: errors are raised as VideoError("PATH: cause"); notes the caller should show (an audio
stream dropped, say) are returned in VideoResult.notes.
"""
from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np

from instyle.atomic import atomic_path

VIDEO_EXTENSIONS = frozenset({".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi"})  # and .gif with > 1 frame
# encoder preference per output container; the first one this PyAV build has wins
_CODECS_BY_CONTAINER = {".webm": ("libvpx-vp9", "libvpx"), ".gif": ("gif",)}
_DEFAULT_CODECS = ("libx264", "libopenh264", "mpeg4")
# visually lossless constant-quality defaults for the encoders that take a CRF
DEFAULT_CRF = {"libx264": 18, "libx265": 20, "libvpx-vp9": 20, "libvpx": 10, "libaom-av1": 20, "libsvtav1": 20}
_SUBSAMPLED = ("420", "422", "411", "410", "nv12", "nv21", "nv16", "nv20", "nv24", "nv42")


class VideoError(ValueError):
    """A video that cannot be read or written; the message is `PATH: cause`."""


@dataclass
class VideoResult:
    frames: int = 0                       # frames written
    codec: str = ""                       # video encoder used
    pix_fmt: str = ""                     # pixel format written
    audio_copied: int = 0                 # audio streams copied
    notes: list[str] = field(default_factory=list)  # one-line warnings for the user


def have_av() -> bool:
    try:
        import av  # noqa: F401
    except ImportError:
        return False
    return True


def is_video(path: str | os.PathLike) -> bool:
    """A video container by extension, or a GIF with more than one frame (a one-frame GIF is an image)."""
    path = Path(path)
    ext = path.suffix.lower()
    if ext in VIDEO_EXTENSIONS:
        return True
    if ext != ".gif":
        return False
    from PIL import Image

    try:
        with Image.open(path) as img:
            return getattr(img, "n_frames", 1) > 1
    except (OSError, ValueError):
        return False  # the image path reports the error


def parse_frames(spec: str) -> tuple[int, int | None]:
    """'A:B' (frames A..B-1), 'A:' or ':B' -> (start, stop); ValueError on anything else."""
    a, sep, b = spec.partition(":")
    try:
        if not sep:
            raise ValueError
        start = int(a) if a.strip() else 0
        stop = int(b) if b.strip() else None
    except ValueError:
        raise ValueError(f"frames must be A:B, A: or :B with frame numbers, got {spec!r}") from None
    if start < 0 or (stop is not None and stop <= start):
        raise ValueError(f"frames {spec!r}: need 0 <= A < B")
    return start, stop


def frame_count(path: str | os.PathLike) -> int | None:
    """The container's frame count for the first video stream, or None when it does not say."""
    import av

    try:
        with av.open(str(path)) as c:
            return c.streams.video[0].frames or None if c.streams.video else None
    except (av.FFmpegError, OSError):
        return None


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


def _encoder_options(codec: str, crf: int | None, width: int, height: int, rate: Fraction) -> tuple[dict, int | None]:
    """(codec options, bit rate) for visually lossless output: CRF where the encoder has one, else a high rate."""
    if codec in DEFAULT_CRF:
        opts = {"crf": str(DEFAULT_CRF[codec] if crf is None else crf)}
        if codec.startswith("libvpx"):
            opts["b"] = "0"  # constant quality, no bit-rate cap
        return opts, None
    if crf is not None:
        raise ValueError(f"--crf needs an encoder with a CRF mode ({', '.join(DEFAULT_CRF)}), not {codec}")
    return {}, int(max(width * height * float(rate or 25) * 0.5, 2e5))  # ~0.5 bit/pixel, like crf 18


def _time(ts: int | None, tb) -> float:
    return float(ts * tb) if ts is not None and tb is not None else float("-inf")


class _AudioWindow:
    """Which audio packets to copy, shifted to start where the first kept video frame starts.

    No frame range: every packet, unchanged. With one: packets from the first kept frame's time to the
    end time, buffered (bounded by the container's interleaving) only until the first kept frame is seen.
    """

    def __init__(self, ranged: bool):
        self.ranged = ranged
        self.t0: float | None = None if ranged else 0.0
        self.t1 = float("inf")
        self.pending: deque = deque()

    def start(self, t0: float, t1: float) -> list:
        self.t0, self.t1 = t0, t1
        ready = [p for p in self.pending if _time(p.pts, p.time_base) >= t0]
        self.pending.clear()
        return [p for p in ready if self._shift(p)]

    def drop_before(self, t: float) -> None:
        while self.pending and _time(self.pending[0].pts, self.pending[0].time_base) < t:
            self.pending.popleft()

    def take(self, packet) -> list:
        if not self.ranged:
            return [packet]
        if self.t0 is None:
            self.pending.append(packet)
            return []
        t = _time(packet.pts, packet.time_base)
        return [packet] if self.t0 <= t < self.t1 and self._shift(packet) else []

    def _shift(self, p) -> bool:
        if _time(p.pts, p.time_base) >= self.t1:
            return False
        off = round(self.t0 / p.time_base)
        p.pts -= off
        if p.dts is not None:
            p.dts -= off
        return True


def stylize_video(stylizer, src: str | os.PathLike, dst: str | os.PathLike, *, batch: int = 1,
                  codec: str | None = None, crf: int | None = None, frames: tuple[int, int | None] | None = None,
                  size: Callable[[int, int], tuple[int, int]] | None = None, temporal=None,
                  progress: Callable[[int], None] | None = None) -> VideoResult:
    """Stylize every frame of `src` (or frames[0]..frames[1]-1) into `dst`, streaming.

    stylizer: N,3,H,W uint8 -> float 0..255 (an engine.Stylizer). size(w, h) -> (w', h') resizes frames
    before stylizing. temporal: an object with `__call__(src_rgb, stylized_rgb) -> rgb` applied frame by
    frame in order (e.g. instyle.temporal.FlowBlend), or None. progress(n) is called after each n frames.
    """
    import av

    src, dst = Path(src), Path(dst)
    try:
        inp = av.open(str(src))
    except (av.FFmpegError, OSError) as e:
        raise VideoError(f"{src}: cannot open ({_cause(e)})") from None
    try:
        if not inp.streams.video:
            raise VideoError(f"{src}: no video stream")
        with atomic_path(dst) as tmp:
            return _transcode(inp, src, tmp, dst, stylizer, batch, codec, crf, frames, size, temporal, progress)
    except av.FFmpegError as e:
        raise VideoError(f"{src}: {_cause(e)}") from None
    finally:
        inp.close()


def _cause(e: Exception) -> str:
    import av

    if isinstance(e, av.FFmpegError) and getattr(e, "strerror", None):
        return e.strerror
    return str(e).splitlines()[0] if str(e) else type(e).__name__


def _transcode(inp, src: Path, tmp: Path, dst: Path, stylizer, batch, codec, crf, frames, size, temporal,
               progress) -> VideoResult:
    import av

    vin = inp.streams.video[0]
    vin.thread_type = "AUTO"
    start, stop = frames or (0, None)
    result = VideoResult(codec=pick_codec(dst, codec))
    audio_in = list(inp.streams.audio)
    window = _AudioWindow(ranged=frames is not None)
    rate = vin.average_rate or vin.guessed_rate or Fraction(25)
    # AVI has no presentation timestamps (with B-frames the decoder's guesses come out of order): number its
    # frames at the nominal rate, as for any frame without a timestamp or out of order
    renumber = inp.format.name == "avi"
    step = max(1, round(1 / (rate * vin.time_base)))
    with av.open(str(tmp), "w", format=_muxer_for(dst)) as out:
        audio_map = {}  # input audio stream index -> output stream (added after the video stream)
        for a in audio_in:
            if a.codec_context.name in out.supported_codecs:
                audio_map[a.index] = None
            else:
                result.notes.append(f"audio stream {a.index} ({a.codec_context.name}) cannot go into "
                                    f"{dst.suffix} without re-encoding; dropped")
        result.audio_copied = len(audio_map)
        enc = None  # the video encoder stream, made when the first frame gives the size and rotation
        early: list = []  # audio packets that come before it (the header is written on the first mux)
        buf: list = []  # (input frame, rgb uint8) of the batch being filled
        index, last_pts = -1, None
        t_first = None

        def mux_audio(packets):
            for p in packets:
                if enc is None:
                    early.append(p)
                else:
                    p.stream = audio_map[p.stream.index]
                    out.mux(p)

        def flush():
            if not buf:
                return
            _encode_batch(stylizer, buf, enc, out, temporal)
            result.frames += len(buf)
            if progress:
                progress(len(buf))
            buf.clear()

        done = False
        for packet in inp.demux(vin, *[a for a in audio_in if a.index in audio_map]):
            if packet.stream.type == "audio":
                if packet.dts is not None:
                    mux_audio(window.take(packet))
                if done and window.t0 is not None and _time(packet.pts, packet.time_base) >= window.t1:
                    break
                continue
            if done:
                continue
            for frame in packet.decode():
                index += 1
                if renumber or frame.pts is None or (last_pts is not None and frame.pts <= last_pts):
                    frame.pts = 0 if last_pts is None else last_pts + step
                last_pts = frame.pts
                t = _time(frame.pts, frame.time_base)
                if index < start:
                    window.drop_before(t)
                    continue
                if stop is not None and index >= stop:
                    done = True
                    break
                if t_first is None:
                    t_first = frame.pts
                    if frames is not None:
                        t0 = _time(frame.pts, frame.time_base)
                        t1 = t0 + (stop - start) / rate if stop is not None else float("inf")
                        mux_audio(window.start(t0, t1))
                rgb = _frame_rgb(frame, size)
                if enc is None:
                    enc = _open_encoder(out, vin, frame, rgb.shape, result, crf, rate)
                    audio_map.update((a.index, out.add_stream_from_template(a)) for a in audio_in
                                     if a.index in audio_map)
                    mux_audio(early)
                    early.clear()
                if frames is not None:
                    frame.pts -= t_first
                buf.append((frame, rgb))
                if len(buf) >= batch:
                    flush()
            if done:
                flush()
                if window.t0 is None or not audio_map:
                    break
        flush()
        if enc is None:
            raise VideoError(f"{src}: no frames" + (f" in range {start}:{'' if stop is None else stop}"
                                                     if frames else ""))
        for p in enc.encode(None):
            out.mux(p)
        expected = min(vin.frames, stop or vin.frames) - start if vin.frames else 0
        missing = expected - result.frames
        if missing > max(2, expected // 100):  # a little slack: decoders may drop broken leading frames
            raise VideoError(f"{src}: truncated or corrupt: decoded {result.frames} of {expected} frames")
        if missing > 0:
            result.notes.append(f"the container lists {expected} frames, {result.frames} decoded")
    return result


def _muxer_for(dst: Path) -> str | None:
    return {".m4v": "mp4", ".mkv": "matroska"}.get(dst.suffix.lower())  # others: guessed from the name


def _frame_rgb(frame, size) -> np.ndarray:
    if size is not None:
        w, h = size(frame.width, frame.height)
        if (w, h) != (frame.width, frame.height):
            return frame.reformat(width=w, height=h, format="rgb24", interpolation="AREA").to_ndarray()
    return frame.to_ndarray(format="rgb24")


def _open_encoder(out, vin, frame, shape, result: VideoResult, crf, rate):
    height, width = shape[:2]
    result.pix_fmt = pick_pix_fmt(result.codec, vin.codec_context.pix_fmt or "yuv420p", width, height)
    opts, bit_rate = _encoder_options(result.codec, crf, width, height, rate)
    enc = out.add_stream(result.codec, rate=rate, options=opts)
    enc.width, enc.height, enc.pix_fmt = width, height, result.pix_fmt
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


def _encode_batch(stylizer, buf: list, enc, out, temporal) -> None:
    import av
    import torch

    x = torch.from_numpy(np.stack([rgb for _, rgb in buf])).permute(0, 3, 1, 2)
    with torch.inference_mode():
        y = stylizer(x)
    y = y.clamp(0, 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    for (frame, rgb), styl in zip(buf, y):
        if temporal is not None:
            styl = temporal(rgb, styl)
        if enc.pix_fmt == "pal8":  # GIF: a 256-colour palette per frame, not swscale's fixed 3-3-2 colours
            vf = av.VideoFrame.from_ndarray(_palettized(styl), format="pal8")
        else:
            vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(styl), format="rgb24")
        vf.pts, vf.time_base = frame.pts, frame.time_base
        for p in enc.encode(vf):
            out.mux(p)


def _palettized(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """RGB uint8 -> (palette indices, 256x4 ARGB palette) for a pal8 frame (Pillow's median-cut, no dither)."""
    from PIL import Image

    q = Image.fromarray(rgb).quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    pal = np.zeros((256, 4), np.uint8)
    colours = np.asarray(q.getpalette()[:768], np.uint8).reshape(-1, 3)
    pal[: len(colours), 0], pal[: len(colours), 1:] = 255, colours
    return np.asarray(q), pal
