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
    p.add_argument("--queue", type=int, default=64, metavar="Q",
                   help="requests waiting at most; more are answered 503 with Retry-After (default 64)")
    p.add_argument("--timeout-s", type=float, default=60.0, metavar="S",
                   help="a request not stylized within S seconds is answered 504 (default 60)")


def _limits(args):
    from instyle.errors import UsageError
    from instyle.serve.app import Limits

    for name in ("max_batch", "max_pixels", "queue"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    for name in ("max_upload_mb", "timeout_s"):
        if not getattr(args, name) > 0:
            raise UsageError(f"--{name.replace('_', '-')} must be > 0, got {getattr(args, name)}")
    if not args.max_wait_ms >= 0:
        raise UsageError(f"--max-wait-ms must be >= 0, got {args.max_wait_ms}")
    if not 0 < args.port < 65536:
        raise UsageError(f"--port must be in 1..65535, got {args.port}")
    return Limits(max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, max_pixels=args.max_pixels,
                  max_upload_mb=args.max_upload_mb, queue=args.queue, timeout_s=args.timeout_s)


def run(args) -> int:
    from instyle.errors import require

    for package in ("fastapi", "uvicorn", "python_multipart", "prometheus_client"):
        require(package, "instyle serve")
    limits = _limits(args)
    import uvicorn

    import instyle
    from instyle.engine.stylizer import parse_tile
    from instyle.errors import UsageError
    from instyle.serve.app import create_app

    try:
        tile = parse_tile(args.tile)
    except ValueError as e:
        raise UsageError(f"--{e}") from None
    stylizer = instyle.load(args.model, backend=args.backend, precision=args.precision, device=args.device, tile=tile)
    app = create_app(stylizer, limits)
    print(f"instyle serve: http://{args.host}:{args.port}/ (API docs: /docs; Ctrl-C stops)", file=sys.stderr,
          flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0
