"""`instyle serve`: the local page and HTTP API (instyle/serve/, the `serve` extra), loopback by default."""
from __future__ import annotations

import argparse
import sys


def add_arguments(p: argparse.ArgumentParser) -> None:
    from instyle.specs import BACKEND_NAMES as BACKENDS  # no torch for --help

    p.add_argument("--model", help="shipped style name or model file (default: the shipped styles)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--backend", default="auto", choices=("auto",) + BACKENDS)
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "fp16", "bf16"))
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    p.add_argument("--tile", default="auto", help="auto | off | tile side in pixels (exact tiled inference)")
    p.add_argument("--max-batch", type=int, default=8, metavar="N", help="images stylized together (default 8)")
    p.add_argument("--max-wait-ms", type=float, default=10.0, metavar="M",
                   help="how long a request waits for others of its size to share a batch (default 10)")
    p.add_argument("--max-pixels", type=int, default=1 << 24, metavar="P",
                   help="refuse larger images, from the header, before decoding (default 16777216: 4096x4096)")
    p.add_argument("--max-upload-mb", type=float, default=25.0, metavar="U", help="refuse larger bodies (default 25)")
    p.add_argument("--max-inflight-mb", type=float, default=256.0, metavar="M",
                   help="bytes of uploads held at once, across requests; past it a request is answered 503 with "
                        "Retry-After (default 256)")
    p.add_argument("--queue", type=int, default=64, metavar="Q",
                   help="requests waiting at most; more are answered 503 with Retry-After (default 64)")
    p.add_argument("--timeout-s", type=float, default=60.0, metavar="S",
                   help="a request not stylized within S seconds is answered 504 (default 60)")
    p.add_argument("--body-timeout-s", type=float, default=30.0, metavar="S",
                   help="an upload whose body has not arrived S seconds after its headers is answered 408 "
                        "(default 30)")
    p.add_argument("--shutdown-timeout-s", type=float, default=10.0, metavar="S",
                   help="on SIGTERM or Ctrl-C, requests in progress get S seconds to finish (default 10)")
    p.add_argument("--keep-alive-s", type=float, default=5.0, metavar="S",
                   help="an idle connection is closed after S seconds (default 5)")
    p.add_argument("--api-docs", action="store_true",
                   help="serve /docs and /redoc (Swagger UI and ReDoc load their scripts from a CDN; default off: "
                        "the schema is at /openapi.json)")


def _limits(args):
    from instyle.errors import UsageError
    from instyle.serve.app import Limits

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
    return Limits(max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, max_pixels=args.max_pixels,
                  max_upload_mb=args.max_upload_mb, max_inflight_mb=args.max_inflight_mb, queue=args.queue,
                  timeout_s=args.timeout_s, body_timeout_s=args.body_timeout_s,
                  shutdown_timeout_s=args.shutdown_timeout_s, keep_alive_s=args.keep_alive_s)


def run(args) -> int:
    from instyle.errors import require

    for package in ("fastapi", "uvicorn", "python_multipart", "prometheus_client"):
        require(package, "instyle serve")
    limits = _limits(args)
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
    app = create_app(stylizer, limits, api_docs=args.api_docs)
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
