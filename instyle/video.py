"""Video files in and out (PyAV), streamed: decode -> batches of frames -> Stylizer -> encode.

Memory is bounded by the batch (plus the codecs' own look-ahead), never by the clip's length. Encoding
runs on a writer thread (instyle.video_encode), overlapping with decoding and stylizing the next batch.
Kept from the input: the container (output name = input name), frame count, every frame's timestamp (so frame rate,
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
from instyle.files import InputFileError, check_regular, open_regular
from instyle.video_encode import Writer, open_encoder, pick_codec

VIDEO_EXTENSIONS = frozenset({".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi"})  # and .gif with > 1 frame


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
        with open_regular(path) as f, Image.open(f) as img:
            return getattr(img, "n_frames", 1) > 1
    except Exception:  # a damaged GIF may raise anything (IndexError from Pillow's frame count)
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
        check_regular(path)  # FFmpeg would wait on a FIFO for a writer
        with av.open(str(path)) as c:
            return c.streams.video[0].frames or None if c.streams.video else None
    except (av.FFmpegError, OSError, InputFileError):
        return None


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
        check_regular(src)  # FFmpeg would wait on a FIFO for a writer; a device node would never end
        inp = av.open(str(src))
    except InputFileError as e:
        raise VideoError(str(e)) from None
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
    result = VideoResult(codec=pick_codec(dst, codec))
    with av.open(str(tmp), "w", format=_muxer_for(dst)) as out:
        t = _Transcode(inp, vin, out, result, stylizer=stylizer, batch=batch, crf=crf, frames=frames, size=size,
                       temporal=temporal, progress=progress)
        for a in t.audio_in:
            if a.codec_context.name in out.supported_codecs:
                t.audio_map[a.index] = None
            else:
                result.notes.append(f"audio stream {a.index} ({a.codec_context.name}) cannot go into "
                                    f"{dst.suffix} without re-encoding; dropped")
        result.audio_copied = len(t.audio_map)
        try:
            t.run()
            if t.writer is None:
                where = f" in range {t.start}:{'' if t.stop is None else t.stop}" if frames else ""
                raise VideoError(f"{src}: no frames{where}")
            t.writer.finish()
        except BaseException:
            if t.writer is not None:
                t.writer.abort()
            raise
    expected = min(vin.frames, t.stop or vin.frames) - t.start if vin.frames else 0
    missing = expected - result.frames
    if missing > max(2, expected // 100):  # a little slack: decoders may drop broken leading frames
        raise VideoError(f"{src}: truncated or corrupt: decoded {result.frames} of {expected} frames")
    if missing > 0:
        result.notes.append(f"the container lists {expected} frames, {result.frames} decoded")
    return result


class _Transcode:
    """The demux/decode loop: frame range, timestamps, batching, and the audio packets' way to the writer."""

    def __init__(self, inp, vin, out, result: VideoResult, *, stylizer, batch, crf, frames, size, temporal,
                 progress):
        self.inp, self.vin, self.out, self.result = inp, vin, out, result
        self.stylizer, self.batch, self.crf, self.size = stylizer, batch, crf, size
        self.temporal, self.progress = temporal, progress
        self.ranged = frames is not None
        self.start, self.stop = frames or (0, None)
        self.audio_in = list(inp.streams.audio)
        self.audio_map: dict = {}  # input audio stream index -> output stream (added after the video stream)
        self.window = _AudioWindow(ranged=self.ranged)
        self.rate = vin.average_rate or vin.guessed_rate or Fraction(25)
        # AVI stores no presentation timestamps (with B-frames the decoder's guesses come out of order):
        # number its frames at the nominal rate, as for any frame without a timestamp or out of order
        self.renumber = inp.format.name == "avi"
        self.step = max(1, round(1 / (self.rate * vin.time_base)))
        self.writer = None  # made, with the encoder, when the first frame gives the size and rotation
        self.early: list = []  # audio packets before the writer exists (the header is written on the first mux)
        self.buf: list = []  # (pts, time base, rgb uint8) of the batch being filled
        self.index, self.last_pts, self.t_first = -1, None, None

    def run(self) -> None:
        done = False
        for packet in self.inp.demux(self.vin, *[a for a in self.audio_in if a.index in self.audio_map]):
            if packet.stream.type == "audio":
                if packet.dts is not None:
                    self.mux_audio(self.window.take(packet))
                if done and self.window.t0 is not None and _time(packet.pts, packet.time_base) >= self.window.t1:
                    break
                continue
            if done:
                continue
            for frame in packet.decode():
                if not self.frame(frame):
                    done = True
                    break
            if done:
                self.flush()
                if self.window.t0 is None or not self.audio_map:
                    break
        self.flush()

    def frame(self, frame) -> bool:
        """Take one decoded frame; False once past the range."""
        self.index += 1
        if self.renumber or frame.pts is None or (self.last_pts is not None and frame.pts <= self.last_pts):
            frame.pts = 0 if self.last_pts is None else self.last_pts + self.step
        self.last_pts = frame.pts
        if self.index < self.start:
            self.window.drop_before(_time(frame.pts, frame.time_base))
            return True
        if self.stop is not None and self.index >= self.stop:
            return False
        if self.t_first is None:
            self.t_first = frame.pts
            if self.ranged:
                t0 = _time(frame.pts, frame.time_base)
                t1 = t0 + (self.stop - self.start) / self.rate if self.stop is not None else float("inf")
                self.mux_audio(self.window.start(t0, t1))
        rgb = _frame_rgb(frame, self.size)
        if self.writer is None:
            self.open(frame, rgb.shape)
        pts = frame.pts - self.t_first if self.ranged else frame.pts
        self.buf.append((pts, frame.time_base, rgb))
        if len(self.buf) >= self.batch:
            self.flush()
        return True

    def open(self, frame, shape) -> None:
        enc = open_encoder(self.out, self.vin, frame, shape, self.result.codec, self.crf, self.rate)
        self.result.pix_fmt = enc.pix_fmt
        for a in self.audio_in:
            if a.index in self.audio_map:
                self.audio_map[a.index] = self.out.add_stream_from_template(a)
        self.writer = Writer(self.out, enc, self.temporal)
        self.mux_audio(self.early)
        self.early.clear()

    def mux_audio(self, packets) -> None:
        for p in packets:
            if self.writer is None:
                self.early.append(p)
            else:
                p.stream = self.audio_map[p.stream.index]
                self.writer.put(("audio", p))

    def flush(self) -> None:
        if not self.buf:
            return
        styl = _stylize(self.stylizer, [rgb for _, _, rgb in self.buf])
        self.writer.put(("video", [(pts, tb, rgb, y) for (pts, tb, rgb), y in zip(self.buf, styl)]))
        self.result.frames += len(self.buf)
        if self.progress:
            self.progress(len(self.buf))
        self.buf = []


def _muxer_for(dst: Path) -> str | None:
    """The muxer for `dst`'s container: named, since the temporary file's name ends in `.tmp-XXXXXXXX`."""
    ext = dst.suffix.lower()
    return {".m4v": "mp4", ".mkv": "matroska"}.get(ext, ext.lstrip(".") or None)


def _frame_rgb(frame, size) -> np.ndarray:
    if size is not None:
        w, h = size(frame.width, frame.height)
        if (w, h) != (frame.width, frame.height):
            return frame.reformat(width=w, height=h, format="rgb24", interpolation="AREA").to_ndarray()
    return frame.to_ndarray(format="rgb24")


def _stylize(stylizer, rgbs: list) -> np.ndarray:
    """Equal-size H,W,3 uint8 frames -> the stylizer's N,H,W,3 uint8 (rounded, clamped) on the host."""
    import torch

    x = torch.from_numpy(np.stack(rgbs)).permute(0, 3, 1, 2)
    with torch.inference_mode():
        y = stylizer(x)
    return y.clamp(0, 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
