"""`/v1/live`: webcam frames stylized over one WebSocket per viewer, through the batcher that serves /v1/stylize.

Protocol (docs/live.md), every message of the client data, never markup or a header:

- client -> server, text: the settings, one JSON object, the /v1/stylize controls with the same names and rules
  (serve/options.py parses them): style | mix ("candy=2,wave=1"), strength, preserve_color, style_scale,
  max_side (the side to stylize at: larger frames are scaled down), quality (of the JPEG answers), plus the
  live-only `temporal` (0 = off, the default; 0 < w < 1: blend with the previous answer warped by optical flow,
  instyle/temporal.py). Values are strings, numbers or booleans. Each settings message replaces the previous one
  whole (a field left out is its default) and holds for the frames received after it; the server acknowledges
  it with {"settings": "ok"}. Until the first one, the defaults hold.
- client -> server, binary: one frame, a JPEG or WebP image. Frames are numbered 1, 2, ... as they arrive.
- server -> client, for each frame stylized: a text {"seq", "latency_ms" (frame received to answer sent, on the
  server), "width", "height"}, then the binary JPEG. For a frame or settings that cannot be used: a text
  {"error": "one line"} (with "seq" for a frame); the connection stays open.

Per viewer one frame at a time is stylized; of the frames that arrive meanwhile only the newest waits: a newer one
replaces it, so a frame is never answered after a newer one and the latency stays bounded for a client that sends
faster than it is served (send the next frame when the answer comes). Frames of all viewers join the one batcher,
those of one size and scalar controls stylized together, each with its own style mix.

Limits (`instyle serve --live-*` flags): viewers at once (one more is sent an error and closed with 1013, "try
again later"), a frame's side (from its header, before decoding) and bytes, frames per second per viewer (frames
past it in a one-second window are dropped, each answered with an error). A frame or settings message over
the bytes limit is hostile: an error, then close 1009. A page of another origin is closed with 1008 before any
frame. A viewer that goes frees its state at once: its waiting frame is dropped and its frame in the batcher's
queue leaves it. Decoding, blending and encoding run in the thread pool, stylizing in the batcher's worker.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from dataclasses import dataclass

from instyle.serve.text import log_text

log = logging.getLogger("instyle.serve")
PATH = "/v1/live"
_SETTINGS_BYTES = 4096
CLOSE_POLICY, CLOSE_TOO_BIG, CLOSE_TRY_AGAIN = 1008, 1009, 1013
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


@dataclass(frozen=True)
class LiveLimits:
    max_viewers: int = 4
    max_frame_side: int = 1280
    max_frame_mb: float = 2.0
    max_fps: float = 30.0

    @property
    def max_frame_bytes(self) -> int:
        return int(self.max_frame_mb * 1024 * 1024)


# flag, field of LiveLimits (its default is the flag's), type, metavar, what it limits
FLAGS = (
    ("--live-max-viewers", "max_viewers", int, "N", "live viewers (WebSockets on /v1/live) at once"),
    ("--live-max-frame-side", "max_frame_side", int, "PX", "refuse live frames with a longer side"),
    ("--live-max-frame-mb", "max_frame_mb", float, "M", "a larger live frame closes its connection"),
    ("--live-max-fps", "max_fps", float, "F", "live frames per second per viewer; more are dropped"),
)


def add_arguments(p) -> None:
    for flag, name, kind, metavar, text in FLAGS:
        default = getattr(LiveLimits(), name)
        p.add_argument(flag, type=kind, default=default, metavar=metavar,
                       help=f"{text} (default {default:g})" if kind is float else f"{text} (default {default})")


def limits_from_args(args) -> LiveLimits:
    """LiveLimits from the parsed flags; UsageError for a value that is not positive."""
    from instyle.errors import UsageError

    values = {name: getattr(args, flag[2:].replace("-", "_")) for flag, name, *_ in FLAGS}
    for flag, name, *_ in FLAGS:
        if not values[name] > 0:
            raise UsageError(f"{flag} must be > 0, got {values[name]}")
    return LiveLimits(**values)


@dataclass(frozen=True)
class Settings:
    controls: object  # options.Controls
    temporal: float  # 0: off


@dataclass(eq=False)
class _Frame:
    seq: int
    data: bytes
    received: float  # time.perf_counter()
    settings: Settings


class Viewer:
    """One WebSocket's state: its settings, frame numbers, rate window, the frame waiting and the temporal filter."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.seq = 0
        self.waiting: _Frame | None = None
        self.wake = asyncio.Event()
        self.window, self.in_window = 0.0, 0
        self.blend = None  # instyle.temporal.FlowBlend while `temporal` is on
        self.blend_settings: Settings | None = None

    def admit(self, now: float, max_fps: float) -> bool:
        """Count a frame in the current one-second window; False once the window holds `max_fps` frames."""
        if now - self.window >= 1.0:
            self.window, self.in_window = now, 0
        self.in_window += 1
        return self.in_window <= max_fps


class Live:
    """The /v1/live route's state: the viewers connected, their counters in the app's metrics."""

    def __init__(self, stylizer, batcher, metrics, limits, live: LiveLimits):
        from prometheus_client import Counter, Gauge, Histogram

        self.stylizer, self.batcher, self.limits, self.live = stylizer, batcher, limits, live
        self.viewers = 0
        r = metrics.registry
        Gauge("instyle_live_viewers", "WebSockets connected to /v1/live", registry=r).set_function(
            lambda: self.viewers)
        self.frames = Counter("instyle_live_frames", "live frames received, by outcome (answered, dropped: "
                              "replaced by a newer one or over the rate, refused, closed: its viewer went)",
                              ("outcome",), registry=r)
        self.latency = Histogram("instyle_live_latency_seconds", "a live frame, received to answered",
                                 buckets=LATENCY_BUCKETS, registry=r)

    def settings(self, fields: dict) -> Settings:
        """Settings from a settings message's fields; BadUpload(400) with one line for a bad one."""
        from instyle.serve import options
        from instyle.serve.uploads import BadUpload

        fields = dict(fields)
        temporal = fields.pop("temporal", 0)
        if isinstance(temporal, bool):
            temporal = 0.5 if temporal else 0.0
        if not isinstance(temporal, (int, float)) or not 0 <= temporal < 1:
            raise BadUpload(400, f"temporal: expected a number in [0, 1), got {json.dumps(temporal)[:40]}")
        if temporal:
            try:
                from instyle.temporal import FlowBlend

                FlowBlend(float(temporal))
            except ImportError as e:
                raise BadUpload(400, f"temporal: {e}") from None
        if fields.get("format") not in (None, "", "jpg", "jpeg"):
            raise BadUpload(400, "format: live answers are JPEG")
        fields.pop("format", None)
        text = {}
        for name, value in fields.items():
            if isinstance(value, bool):
                text[name] = "true" if value else "false"
            elif isinstance(value, (str, int, float)):
                text[name] = str(value)
            elif value is not None:
                raise BadUpload(400, f"{str(name)[:40]}: expected a string, number or boolean")
        return Settings(options.parse(text, self.stylizer), float(temporal))

    async def serve(self, ws) -> None:
        """One viewer, from the handshake to its disconnect."""
        from starlette.websockets import WebSocketDisconnect

        if not _same_origin(ws.headers):
            await ws.close(CLOSE_POLICY, "cross-origin page")
            return
        await ws.accept()
        if self.viewers >= self.live.max_viewers:
            await _send_json(ws, {"error": f"busy: {self.live.max_viewers} live viewers already "
                                           "(--live-max-viewers); try again later"})
            await ws.close(CLOSE_TRY_AGAIN)
            return
        self.viewers += 1
        viewer = Viewer(self.settings({}))
        sending = asyncio.Lock()  # a frame's header and JPEG go out together
        worker = asyncio.ensure_future(self._stylize_frames(ws, viewer, sending))
        try:
            await self._receive(ws, viewer, sending)
        except (WebSocketDisconnect, RuntimeError, OSError):  # gone while it was answered: nothing to tell it
            pass
        finally:
            self.viewers -= 1
            worker.cancel()  # its frame in the batcher's queue leaves it
            if viewer.waiting is not None:
                self.frames.labels("closed").inc()
                viewer.waiting = None
            with contextlib.suppress(asyncio.CancelledError):
                await worker

    async def _receive(self, ws, viewer: Viewer, sending: asyncio.Lock) -> None:
        from instyle.serve.refusals import Refused

        while True:
            message = await ws.receive()
            if message["type"] == "websocket.disconnect":
                return
            data, text = message.get("bytes"), message.get("text")
            if data is not None:
                viewer.seq += 1
                if len(data) > self.live.max_frame_bytes:
                    self.frames.labels("refused").inc()
                    await self._close(ws, sending, f"frame {viewer.seq}: {len(data)} bytes is over the limit of "
                                      f"{self.live.max_frame_bytes} bytes (--live-max-frame-mb)")
                    return
                if not viewer.admit(time.monotonic(), self.live.max_fps):
                    self.frames.labels("dropped").inc()
                    await _send(ws, sending, {"error": f"frame {viewer.seq}: over {self.live.max_fps:g} frames per "
                                              "second (--live-max-fps): dropped", "seq": viewer.seq})
                    continue
                if viewer.waiting is not None:
                    self.frames.labels("dropped").inc()  # stale: the newer frame takes its place
                viewer.waiting = _Frame(viewer.seq, data, time.perf_counter(), viewer.settings)
                viewer.wake.set()
            elif text is not None:
                if len(text.encode()) > _SETTINGS_BYTES:
                    await self._close(ws, sending, f"settings message over {_SETTINGS_BYTES} bytes")
                    return
                try:
                    fields = json.loads(text)
                    if not isinstance(fields, dict):
                        raise ValueError("not an object")
                    viewer.settings = self.settings(fields)
                except ValueError as e:
                    await _send(ws, sending, {"error": f"settings: expected a JSON object ({e})"})
                except Refused as e:
                    await _send(ws, sending, {"error": str(e)})
                else:
                    await _send(ws, sending, {"settings": "ok"})

    async def _close(self, ws, sending: asyncio.Lock, error: str) -> None:
        await _send(ws, sending, {"error": error})
        await ws.close(CLOSE_TOO_BIG)

    async def _stylize_frames(self, ws, viewer: Viewer, sending: asyncio.Lock) -> None:
        """The viewer's frames in order, newest first of those waiting: decode, stylize (batched), encode, send."""
        from starlette.websockets import WebSocketDisconnect

        from instyle.serve.refusals import Refused

        while True:
            await viewer.wake.wait()
            viewer.wake.clear()
            frame, viewer.waiting = viewer.waiting, None
            if frame is None:
                continue
            try:
                header, jpeg = await self._answer(viewer, frame)
            except Refused as e:
                self.frames.labels("refused").inc()
                answer = [{"error": str(e), "seq": frame.seq}]
            except Exception as e:  # a fault of the server: this frame's answer, logged; the viewer goes on
                log.exception("live frame %d failed", frame.seq)
                self.frames.labels("refused").inc()
                answer = [{"error": f"frame {frame.seq}: internal error ({type(e).__name__})", "seq": frame.seq}]
            else:
                self.frames.labels("answered").inc()
                self.latency.observe(time.perf_counter() - frame.received)
                answer = [header | {"latency_ms": round(1000 * (time.perf_counter() - frame.received), 1)}, jpeg]
            try:
                await _send(ws, sending, *answer)
            except (WebSocketDisconnect, RuntimeError, OSError):  # the viewer went while its frame was stylized
                return

    async def _answer(self, viewer: Viewer, frame: _Frame) -> tuple[dict, bytes]:
        from starlette.concurrency import run_in_threadpool

        from instyle import io
        from instyle.serve.batcher import Key, QueueFull
        from instyle.serve.refusals import Refused

        controls = frame.settings.controls
        picture = await run_in_threadpool(self._decode, frame, controls.max_side)
        x = io.to_tensor([picture])
        h, w = (int(n) for n in x.shape[-2:])
        key = Key(h, w, controls.strength, controls.preserve_color, controls.style_scale)
        try:
            y = await asyncio.wait_for(self.batcher.submit(x, key, controls.weights), self.limits.timeout_s)
        except QueueFull:
            raise Refused(503, f"frame {frame.seq}: busy, {self.limits.queue} images already queued (--queue)",
                          cause="queue_full") from None
        except asyncio.TimeoutError:
            raise Refused(504, f"frame {frame.seq}: not stylized within {self.limits.timeout_s:g} s") from None
        except Exception as e:  # noqa: BLE001 -- the stylizer's own failure: this frame's answer
            raise Refused(500, f"frame {frame.seq}: stylizing failed ({type(e).__name__})") from None
        jpeg = await run_in_threadpool(self._encode, viewer, frame, picture, y)
        return {"seq": frame.seq, "width": w, "height": h}, jpeg

    def _decode(self, frame: _Frame, max_side: int | None):
        """The frame as an io.Picture (the CLI's reader, scaled to max_side); BadUpload for anything else than a
        JPEG or WebP within the side limit."""
        from PIL import Image, UnidentifiedImageError

        from instyle.serve import uploads

        kind = "jpg" if frame.data[:3] == b"\xff\xd8\xff" else \
            "webp" if frame.data[:4] == b"RIFF" and frame.data[8:12] == b"WEBP" else None
        name = f"frame {frame.seq}"
        if kind is None:
            raise uploads.BadUpload(400, f"{name}: not a JPEG or WebP image")
        try:
            import io as stdio

            with Image.open(stdio.BytesIO(frame.data)) as img:
                w, h = img.size
        except (UnidentifiedImageError, OSError, ValueError) as e:
            raise uploads.BadUpload(400, f"{name}: damaged image ({log_text(str(e), 120)})") from None
        if max(w, h) > self.live.max_frame_side:
            raise uploads.BadUpload(413, f"{name}: {w}x{h} is over the live frame side limit of "
                                    f"{self.live.max_frame_side} px (--live-max-frame-side)")
        decoded = uploads.decode(frame.data, f"{name}.{kind}", max_pixels=self.limits.max_pixels, max_side=max_side)
        return decoded.picture

    def _encode(self, viewer: Viewer, frame: _Frame, picture, y) -> bytes:
        """The answer's JPEG (the CLI's writer), blended with the previous answer when `temporal` is on."""
        from instyle import io
        from instyle.serve import uploads

        settings = frame.settings
        if settings.temporal:
            import torch

            from instyle.temporal import FlowBlend

            if viewer.blend is None or viewer.blend_settings is not settings:  # new settings: start afresh
                viewer.blend, viewer.blend_settings = FlowBlend(settings.temporal), settings
            rgb = picture.rgb if picture.rgb.dtype == "uint8" else picture.rgb.clip(0, 255).astype("uint8")
            y = torch.from_numpy(viewer.blend(rgb, io.rgb_from_tensor(y))).permute(2, 0, 1)
        else:
            viewer.blend = None
        return uploads.encode(picture, y, "jpg", quality=settings.controls.quality)


def install(app, stylizer, batcher, metrics, limits, live: LiveLimits) -> Live:
    """Register the /v1/live WebSocket route on `app` (Starlette's plain route: the endpoint takes the socket);
    the returned Live counts its viewers."""
    from starlette.routing import WebSocketRoute

    state = Live(stylizer, batcher, metrics, limits, live)
    app.router.routes.append(WebSocketRoute(PATH, state.serve, name="live"))
    return state


def _same_origin(headers) -> bool:
    """True unless a browser page of another origin opened the socket (no Origin header: not a browser page)."""
    from urllib.parse import urlsplit

    origin = headers.get("origin")
    if origin is None:
        return True
    return urlsplit(origin).netloc.lower() == headers.get("host", "").lower()


async def _send_json(ws, message: dict) -> None:
    await ws.send_text(json.dumps(message))


async def _send(ws, sending: asyncio.Lock, *messages) -> None:
    async with sending:
        for m in messages:
            await (ws.send_bytes(m) if isinstance(m, bytes) else _send_json(ws, m))
