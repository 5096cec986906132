"""`instyle serve`: the local page and HTTP API (instyle/serve/, the `serve` extra), loopback by default."""
from __future__ import annotations

import argparse
import sys

# Limits field, metavar, what it limits: each is the flag --field-name, its type and default Limits' own
# (instyle/serve/limits.py)
LIMIT_FLAGS = (
    ("max_batch", "N", "images stylized together"),
    ("max_wait_ms", "M", "how long a request waits for others of its size to share a batch"),
    ("max_pixels", "P", "refuse images of more pixels, read from the header before decoding"),
    ("max_upload_mb", "U", "refuse larger bodies"),
    ("max_inflight_mb", "M",
     "bytes of uploads held at once, across requests; past it a request is answered 503 with Retry-After"),
    ("queue", "Q", "requests waiting at most; more are answered 503 with Retry-After"),
    ("timeout_s", "S", "a request not stylized within S seconds is answered 504"),
    ("body_timeout_s", "S", "an upload whose body has not arrived S seconds after its headers is answered 408"),
    ("shutdown_timeout_s", "S", "on SIGTERM or Ctrl-C, requests in progress get S seconds to finish"),
    ("keep_alive_s", "S", "an idle connection is closed after S seconds"),
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    from instyle.serve import live
    from instyle.serve.limits import Limits  # no FastAPI, no torch for --help
    from instyle.specs import BACKEND_NAMES as BACKENDS
    from instyle.specs import PRECISION_NAMES

    p.add_argument("--model", help="shipped style name or model file (default: the shipped styles)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--backend", default="auto", choices=("auto",) + BACKENDS)
    p.add_argument("--precision", default="auto", choices=("auto",) + PRECISION_NAMES)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    p.add_argument("--tile", default="auto", help="auto | off | tile side in pixels (exact tiled inference)")
    defaults = Limits()
    for name, metavar, text in LIMIT_FLAGS:
        default = getattr(defaults, name)
        shown = f"{default:g}" if isinstance(default, float) else default
        p.add_argument("--" + name.replace("_", "-"), type=type(default), default=default, metavar=metavar,
                       help=f"{text} (default {shown})")
    live.add_arguments(p)
    p.add_argument("--api-docs", action="store_true",
                   help="serve /docs and /redoc (Swagger UI and ReDoc load their scripts from a CDN; default off: "
                        "the schema is at /openapi.json)")


def _limits(args):
    from instyle.errors import UsageError
    from instyle.serve.limits import Limits

    for name in ("max_batch", "max_pixels", "queue"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    for name in ("max_upload_mb", "max_inflight_mb", "timeout_s", "body_timeout_s", "shutdown_timeout_s",
                 "keep_alive_s"):
        if not getattr(args, name) > 0:
            raise UsageError(f"--{name.replace('_', '-')} must be > 0, got {getattr(args, name)}")
    if args.max_inflight_mb < args.max_upload_mb:
        raise UsageError(f"--max-inflight-mb must be >= --max-upload-mb ({args.max_upload_mb:g}), "
                         f"got {args.max_inflight_mb}")
    if not args.max_wait_ms >= 0:
        raise UsageError(f"--max-wait-ms must be >= 0, got {args.max_wait_ms}")
    if not 0 < args.port < 65536:
        raise UsageError(f"--port must be in 1..65535, got {args.port}")
    return Limits(**{name: getattr(args, name) for name, *_ in LIMIT_FLAGS})


def run(args) -> int:
    from instyle.errors import require

    for package in ("fastapi", "uvicorn", "python_multipart", "prometheus_client", "websockets"):
        require(package, "instyle serve")
    limits = _limits(args)
    from instyle.serve import live

    live_limits = live.limits_from_args(args)
    import uvicorn

    import instyle
    from instyle.engine.stylizer import parse_tile
    from instyle.errors import UsageError
    from instyle.serve.app import create_app, uvicorn_config

    try:
        tile = parse_tile(args.tile)
    except ValueError as e:
        raise UsageError(f"--{e}") from None
    stylizer = instyle.load(args.model, backend=args.backend, precision=args.precision, device=args.device, tile=tile)
    app = create_app(stylizer, limits, api_docs=args.api_docs, live_limits=live_limits)
    _log_refusals()
    docs = "/docs" if args.api_docs else "/openapi.json"
    print(f"instyle serve: http://{args.host}:{args.port}/ (API: {docs}; Ctrl-C stops)", file=sys.stderr, flush=True)
    uvicorn.Server(uvicorn_config(app, host=args.host, port=args.port)).run()
    return 0


def _log_refusals() -> None:
    """One line on stderr per refused request (instyle.serve.refusals), beside uvicorn's own log."""
    import logging

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s:  instyle: %(message)s"))
    log = logging.getLogger("instyle.serve")
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
