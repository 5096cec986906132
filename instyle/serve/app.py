"""The FastAPI app: the page, the styles, POST /v1/stylize, health and metrics (README: Serve).

Every refusal is a JSON body {"error": "one line"}: 400 bad input (not an image, damaged, unknown style, bad
control), 413 too large (bytes, or pixels from the header), 503 queue full (with Retry-After), 504 not stylized
within the request timeout, 500 the stylizer failed. None of them stops the server. Decoding and encoding run in
Starlette's thread pool, stylizing in the batcher's one worker thread: the event loop only moves bytes.
"""
from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool

from instyle.serve import options, thumbnails, uploads
from instyle.serve.batcher import Batcher, Key, QueueFull
from instyle.serve.metrics import CONTENT_TYPE, Metrics

STATIC = Path(__file__).parent / "static"
_EXTENSIONS = {media: ext for ext, media in reversed(uploads.MEDIA_TYPES.items())}


@dataclass(frozen=True)
class Limits:
    max_batch: int = 8
    max_wait_ms: float = 10.0
    max_pixels: int = 1 << 24
    max_upload_mb: float = 25.0
    queue: int = 64
    timeout_s: float = 60.0
    retry_after_s: int = 1

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)


def _error(status: int, message: str, **headers) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers or None)


def create_app(stylizer, limits: Limits = Limits(), *, description: str = "") -> FastAPI:
    """The app over an already loaded Stylizer (instyle.load); it is warmed and its thumbnails drawn at start-up."""
    state: dict = {"thumbnails": {}}

    def run_batch(key: Key, xs, weights):
        import torch

        w = torch.stack(weights) if weights[0] is not None else None
        y = stylizer(torch.cat(xs), strength=key.strength, preserve_color=key.preserve_color,
                     style_scale=key.style_scale, style_weights=w)
        return list(y.cpu())

    batcher = Batcher(run_batch, max_batch=limits.max_batch, max_wait_s=limits.max_wait_ms / 1000,
                      queue_size=limits.queue, on_batch=lambda size: metrics.on_batch(size))
    metrics = Metrics(lambda: batcher.depth)

    def warm_up():
        import torch

        state["thumbnails"] = thumbnails.render(stylizer)
        stylizer(torch.full((1, 3, 64, 64), 128.0))  # the backend's first call (compilation) before any client

    @contextlib.asynccontextmanager
    async def lifespan(app):
        await batcher.start()
        await batcher.call(warm_up)
        yield
        await batcher.stop()

    app = FastAPI(title="instyle", version=_version(), lifespan=lifespan,
                  description=description or "Fast neural style transfer: the page at /, the API under /v1.")
    app.state.metrics, app.state.batcher, app.state.limits = metrics, batcher, limits
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.middleware("http")
    async def count(request: Request, call_next):
        response = await call_next(request)
        route = request.scope.get("route")
        metrics.requests.labels(getattr(route, "path", "other"), str(response.status_code)).inc()
        return response

    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(STATIC / "index.html")

    @app.get("/healthz")
    async def healthz():
        """200 once the model is loaded and warm."""
        return {"status": "ok", "backend": stylizer.backend, "precision": stylizer.precision,
                "device": str(stylizer.device), "queue_depth": batcher.depth}

    @app.get("/metrics")
    async def prometheus():
        """Prometheus text: requests, errors, queue depth, batch sizes, latency."""
        return Response(metrics.text(), media_type=CONTENT_TYPE)

    @app.get("/v1/styles")
    async def styles():
        """The model's styles (the first is the default) with a thumbnail each, the controls and the limits."""
        names = options.style_names(stylizer)
        default = next(iter(stylizer.mix), names[0]) if len(stylizer.mix) == 1 else names[0]
        return {"styles": [{"name": n, "index": i, "default": n == default,
                            "thumbnail": f"/v1/styles/{n}/thumbnail.png"} for i, n in enumerate(names)],
                "multi_style": stylizer.source is not None, "controls": list(options.FIELDS),
                "limits": {"max_upload_bytes": limits.max_upload_bytes, "max_pixels": limits.max_pixels,
                           "max_batch": limits.max_batch, "timeout_s": limits.timeout_s}}

    @app.get("/v1/styles/{name}/thumbnail.png")
    async def thumbnail(name: str):
        png = state["thumbnails"].get(name)
        if png is None:
            return _error(404, f"unknown style {name!r} (known: {', '.join(state['thumbnails'])})")
        return Response(png, media_type="image/png", headers={"Cache-Control": "max-age=3600"})

    @app.post("/v1/stylize", responses={200: {"content": {"image/*": {}}}})
    async def stylize(request: Request):
        """The image as the body (raw bytes) or as the one file field of a multipart form; the controls as query
        parameters or form fields: style | mix (a=2,b=1), strength (0..1), preserve_color, style_scale
        (0.1..10), max_side, format (jpg, png, webp, ...; default: the upload's), quality."""
        started = time.perf_counter()
        try:
            return await _stylize(request, started)
        except uploads.BadUpload as e:
            metrics.errors.labels("too_large" if e.status == 413 else "bad_input").inc()
            return _error(e.status, str(e))

    async def _stylize(request: Request, started: float) -> Response:
        body = await uploads.read_body(request, limits.max_upload_bytes)
        fields = dict(request.query_params)
        media = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media == "multipart/form-data":
            data, name, form = await uploads.split_multipart(request, body)
            fields.update(form)
        else:
            data, name = body, "upload" + ("." + _EXTENSIONS[media] if media in _EXTENSIONS else "")
        controls = options.parse(fields, stylizer)
        decoded = await run_in_threadpool(uploads.decode, data, name, max_pixels=limits.max_pixels,
                                          max_side=controls.max_side)
        y = await _queued(decoded, controls)
        if isinstance(y, Response):
            return y
        fmt = controls.format or (Path(name).suffix.lower().lstrip(".") or "png")
        fmt = fmt if fmt in uploads.MEDIA_TYPES else "png"
        try:
            encoded = await run_in_threadpool(uploads.encode, decoded.picture, y, fmt, quality=controls.quality)
        except ValueError as e:
            raise uploads.BadUpload(400, f"{name}: {str(e).split(': ', 1)[-1]}") from None  # not the temp path
        metrics.latency.observe(time.perf_counter() - started)
        headers = {"X-Instyle-Warnings": " | ".join(decoded.warnings)} if decoded.warnings else {}
        return Response(encoded, media_type=uploads.MEDIA_TYPES[fmt], headers=headers)

    async def _queued(decoded, controls):
        """The stylized tensor, or the 503/504/500 answer."""
        from instyle import io

        x = io.to_tensor([decoded.picture])
        h, w = x.shape[-2:]
        key = Key(int(h), int(w), controls.strength, controls.preserve_color, controls.style_scale)
        try:
            return await asyncio.wait_for(batcher.submit(x, key, controls.weights), limits.timeout_s)
        except QueueFull:
            metrics.errors.labels("queue_full").inc()
            return _error(503, f"busy: {limits.queue} requests already queued (--queue); retry shortly",
                          **{"Retry-After": str(limits.retry_after_s)})
        except asyncio.TimeoutError:
            metrics.errors.labels("timeout").inc()
            return _error(504, f"{decoded.name}: not stylized within the request timeout of {limits.timeout_s:g} s")
        except Exception as e:  # the stylizer's own failure (out of memory, a backend error): this request's
            metrics.errors.labels("stylizer").inc()
            return _error(500, f"{decoded.name}: stylizing failed ({type(e).__name__}: {_first_line(e)})")

    return app


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:200] if text else ""


def _version() -> str:
    from instyle import __version__

    return __version__
