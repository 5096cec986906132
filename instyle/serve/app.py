"""The FastAPI app: the page, the styles, POST /v1/stylize, health and metrics (docs/serve.md).

Every refusal is a JSON body {"error": "one line"} (refusals.py, the framework's own included): 400 bad input
(not an image, damaged, unknown style, bad control), 408 body not received in time, 413 too large (bytes, or
pixels from the header), 503 busy (queue full, or the uploads held at once at their bound; with Retry-After),
504 not stylized within the request timeout, 500 the stylizer failed. None of them stops the server. A request
is validated completely before it joins a batch; a client that goes away is dropped from the queue. Decoding
and encoding run in Starlette's thread pool, stylizing in the batcher's one worker thread: the event loop only
moves bytes.
"""
from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool

from instyle.serve import live, options, regions, thumbnails, uploads
from instyle.serve.batcher import Batcher, Key, QueueFull
from instyle.serve.budget import UploadBudget
from instyle.serve.limits import Limits
from instyle.serve.middleware import Answers
from instyle.serve.prometheus import CONTENT_TYPE, Metrics
from instyle.serve.refusals import Refused, install
from instyle.serve.text import header_value

STATIC = Path(__file__).parent / "static"
_EXTENSIONS = {media: ext for ext, media in reversed(uploads.MEDIA_TYPES.items())}


def uvicorn_config(app, **kwargs):
    """uvicorn's Config for `app` with the limits that are the HTTP server's to keep (the CLI and the tests)."""
    import uvicorn

    from instyle.serve.protocol import json_refusals

    limits: Limits = app.state.limits
    kwargs.setdefault("log_level", "warning")
    kwargs.setdefault("ws_max_size", app.state.live.live.max_frame_bytes + (1 << 20))  # past it: close 1009 unread
    kwargs.setdefault("ws_per_message_deflate", False)  # live frames are JPEG: deflating them again buys nothing
    return uvicorn.Config(app, timeout_graceful_shutdown=limits.shutdown_timeout_s,
                          timeout_keep_alive=limits.keep_alive_s, http=json_refusals(app.state.metrics), **kwargs)


def create_app(stylizer, limits: Limits = Limits(), *, description: str = "", api_docs: bool = False,
               live_limits: live.LiveLimits = live.LiveLimits()) -> FastAPI:
    """The app over an already loaded Stylizer (instyle.load); it is warmed and its thumbnails drawn at start-up.
    `api_docs` serves /docs and /redoc (Swagger UI and ReDoc load their scripts from a CDN; off by default);
    `live_limits` bound the live WebSockets (serve/live.py)."""
    state: dict = {"thumbnails": {}}
    with_maps = regions.MapRunner(stylizer)

    def run_batch(key: Key, xs, weights):
        import torch

        w = torch.stack(weights) if weights[0] is not None else None
        scalars = dict(strength=key.strength, preserve_color=key.preserve_color, style_scale=key.style_scale)
        if key.maps is not None:  # a batch of one (its key is its own)
            y = with_maps(torch.cat(xs), key.maps, w, **scalars)
        else:
            y = stylizer(torch.cat(xs), style_weights=w, **scalars)
        return list(y.cpu())

    batcher = Batcher(run_batch, max_batch=limits.max_batch, max_wait_s=limits.max_wait_ms / 1000,
                      queue_size=limits.queue, on_batch=lambda size: metrics.on_batch(size))
    budget = UploadBudget(limits.max_inflight_bytes, limits.retry_after_s)
    metrics = Metrics(lambda: batcher.depth, lambda: budget.held)

    def warm_up():
        import torch

        stylizer.warm()  # every network a request's style may need (int8 for some styles, float for others)
        state["thumbnails"] = thumbnails.render(stylizer)
        stylizer(torch.full((1, 3, 64, 64), 128.0))  # the backend's first call (compilation) before any client

    @contextlib.asynccontextmanager
    async def lifespan(app):
        await batcher.start()
        await batcher.call(warm_up)
        yield
        await batcher.stop()

    app = FastAPI(title="instyle", version=_version(), lifespan=lifespan,
                  docs_url="/docs" if api_docs else None, redoc_url="/redoc" if api_docs else None,
                  description=description or "Fast neural style transfer: the page at /, the API under /v1.")
    app.state.metrics, app.state.batcher, app.state.limits, app.state.budget = metrics, batcher, limits, budget
    app.state.maps = with_maps
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.add_middleware(Answers, metrics=metrics)
    install(app, metrics)

    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(STATIC / "index.html")

    @app.get("/healthz")
    async def healthz():
        """200 once the model is loaded and warm."""
        return {"status": "ok", "backend": stylizer.backend, "precision": stylizer.precision,
                "device": str(stylizer.device), "queue_depth": batcher.depth, "live_viewers": app.state.live.viewers}

    @app.get("/metrics")
    async def prometheus():
        """Prometheus text: requests, errors, queue depth, upload bytes held, batch sizes, latency."""
        return Response(metrics.text(), media_type=CONTENT_TYPE)

    @app.get("/v1/styles")
    async def styles():
        """The model's styles (the first is the default) with a thumbnail each, the controls and the limits."""
        names = options.style_names(stylizer)
        default = next(iter(stylizer.mix), names[0]) if len(stylizer.mix) == 1 else names[0]
        return {"styles": [{"name": n, "index": i, "default": n == default,
                            "thumbnail": f"/v1/styles/{n}/thumbnail.png"} for i, n in enumerate(names)],
                "multi_style": stylizer.source is not None, "controls": list(options.FIELDS + regions.TEXT),
                "files": ["image", *regions.FILES],
                "limits": {"max_upload_bytes": limits.max_upload_bytes, "max_pixels": limits.max_pixels,
                           "max_batch": limits.max_batch, "timeout_s": limits.timeout_s}}

    @app.get("/v1/styles/{name}/thumbnail.png")
    async def thumbnail(name: str):
        png = state["thumbnails"].get(name)
        if png is None:
            raise Refused(404, f"unknown style {name!r} (known: {', '.join(state['thumbnails'])})")
        return Response(png, media_type="image/png", headers={"Cache-Control": "max-age=3600"})

    @app.post("/v1/stylize", responses={200: {"content": {"image/*": {}}}})
    async def stylize(request: Request):
        """The image as the body (raw bytes) or as the one file field of a multipart form; the controls as query
        parameters or form fields: style | mix (a=2,b=1), strength (0..1), preserve_color, style_scale
        (0.1..10), max_side, format (jpg, png, webp, ...; default: the upload's), quality. Regions (a multipart
        form, docs/regions.md): the file fields mask and strength_map, the fields regions and feather."""
        started = time.perf_counter()
        holding = budget.hold()
        try:
            return await _stylize(request, started, holding)
        except asyncio.CancelledError:  # only uvicorn cancels a request: its --shutdown-timeout-s ran out
            raise Refused(503, "the server is shutting down", cause="shutdown") from None
        finally:
            holding.release()

    async def _stylize(request: Request, started: float, holding) -> Response:
        body = await uploads.read_body(request, limits.max_upload_bytes, holding=holding,
                                       timeout_s=limits.body_timeout_s)
        fields, files = dict(request.query_params), {}
        media = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media == "multipart/form-data":
            data, name, form, files = await uploads.split_multipart(
                request, body, max_fields=len(options.FIELDS + regions.TEXT), named_files=regions.FILES)
            fields.update(form)
        else:
            data, name = body, "upload" + ("." + _EXTENSIONS[media] if media in _EXTENSIONS else "")
        controls = options.parse(fields, stylizer, also=regions.FIELDS)
        warnings: list[str] = []  # the engine's, when it resizes a map to the image (in the worker thread)
        maps = None
        if files or not fields.keys().isdisjoint(regions.FIELDS):
            maps = await run_in_threadpool(regions.parse, fields, files, stylizer, max_pixels=limits.max_pixels,
                                           notify=warnings.append)
        decoded = await run_in_threadpool(uploads.decode, data, name, max_pixels=limits.max_pixels,
                                          max_side=controls.max_side)
        y = await _queued(request, decoded, controls, maps)
        fmt = controls.format or (Path(name).suffix.lower().lstrip(".") or "png")
        fmt = fmt if fmt in uploads.MEDIA_TYPES else "png"
        try:
            encoded = await run_in_threadpool(uploads.encode, decoded.picture, y, fmt, quality=controls.quality)
        except ValueError as e:
            raise uploads.BadUpload(400, f"{name}: {str(e).split(': ', 1)[-1]}") from None  # not the temp path
        metrics.latency.observe(time.perf_counter() - started)
        warnings = decoded.warnings + warnings
        headers = {"X-Instyle-Warnings": header_value(" | ".join(warnings))} if warnings else {}
        return Response(encoded, media_type=uploads.MEDIA_TYPES[fmt], headers=headers)

    async def _queued(request: Request, decoded, controls, maps=None):
        """The stylized tensor; Refused 503/504/500, or 499 when the client goes away while it waits."""
        from instyle import io

        x = io.to_tensor([decoded.picture])
        h, w = x.shape[-2:]
        key = Key(int(h), int(w), controls.strength, controls.preserve_color, controls.style_scale, maps)
        job = asyncio.ensure_future(batcher.submit(x, key, controls.weights))
        gone = asyncio.ensure_future(_client_gone(request))
        try:
            done, _ = await asyncio.wait({job, gone}, timeout=limits.timeout_s,
                                         return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
            job.cancel()  # no-op once done; else it leaves the queue, never stylized
        if job.done() and not job.cancelled():  # done, even between the wait and here: its answer counts
            try:
                return job.result()
            except QueueFull:
                raise Refused(503, f"busy: {limits.queue} requests already queued (--queue); retry shortly",
                              cause="queue_full", headers={"Retry-After": str(limits.retry_after_s)}) from None
            except Exception as e:  # the stylizer's own failure (out of memory, a backend error): this request's
                raise Refused(500, f"{decoded.name}: stylizing failed ({type(e).__name__}: {_first_line(e)})",
                              cause="stylizer") from None
        if gone in done:
            raise Refused(499, f"{decoded.name}: the client went away while it waited; dropped from the queue")
        raise Refused(504, f"{decoded.name}: not stylized within the request timeout of {limits.timeout_s:g} s")

    app.state.live = live.install(app, stylizer, batcher, metrics, limits, live_limits)
    return app


async def _client_gone(request: Request) -> None:
    """Return when the client disconnects (the body is read: what the server receives next is the disconnect)."""
    try:
        while (await request.receive())["type"] != "http.disconnect":
            pass
    except Exception:  # noqa: BLE001 -- no news of the client: wait for the answer as if it stayed
        await asyncio.Event().wait()


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:200] if text else ""


def _version() -> str:
    from instyle.version import __version__

    return __version__
