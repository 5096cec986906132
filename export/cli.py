"""`instyle export onnx|tensorrt|triton-repo`: the generator as an ONNX file, a TensorRT engine, or a
Triton-server model repository (docs/architecture.md, Image and export contracts). Heavy imports happen inside run()."""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

_SIZE = re.compile(r"^(\d+)x(\d+)$")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="target", metavar="TARGET")
    sub.required = True

    p = sub.add_parser("onnx", help="ONNX graph: image (N,3,H,W RGB 0..255 float32) -> stylized")
    p.add_argument("--model", help="shipped style name or .safetensors/.pth path (default: first shipped style)")
    p.add_argument("-o", "--output", required=True, type=Path, help="the .onnx file to write")
    p.add_argument("--opset", type=int, default=18, help="ONNX opset, 17 or newer (default 18)")
    p.add_argument("--precision", choices=("fp32", "fp16"), default="fp32",
                   help="fp16: convolutions in fp16, instance norms in fp32; input/output stay float32")
    p.add_argument("--static", metavar="HxW", help="fix H and W (batch stays dynamic)")
    p.add_argument("--spatial", action="store_true", help="a multi-style model's graph takes a per-pixel "
                   "style_map (N x S x H x W, regions: docs/regions.md) instead of style_weights (N x S)")
    p.add_argument("--check", action="store_true",
                   help="compare ONNX Runtime with the PyTorch fp32 reference on photos at odd sizes")

    p = sub.add_parser("tensorrt", help="TensorRT engine (needs an NVIDIA GPU and tensorrt>=10)")
    p.add_argument("--model", help="style name, .safetensors/.pth path, or an exported .onnx file")
    p.add_argument("-o", "--output", required=True, type=Path, help="the .engine file to write")
    p.add_argument("--profile", action="append", metavar="MIN:OPT:MAX",
                   help="optimization profile, repeatable; image sizes WxH or tensor shapes NxCxHxW, e.g. "
                        "256x256:1920x1080:1920x1080 (default: buckets <=1024^2, <=1080p, <=4K)")
    _engine_options(p)

    p = sub.add_parser("triton-repo", help="Triton Inference Server model repository")
    p.add_argument("--model", help="style name, .safetensors/.pth path, or an exported .onnx file")
    p.add_argument("-o", "--output", required=True, type=Path, help="repository folder (created or added to)")
    p.add_argument("--format", choices=("onnx", "plan"), default="onnx",
                   help="onnx (ONNX Runtime backend) or plan (TensorRT engine; needs a GPU)")
    p.add_argument("--name", help="model name in the repository (default: the style or file name)")
    _engine_options(p, max_batch_default=8)


def _engine_options(p: argparse.ArgumentParser, max_batch_default: int = 1) -> None:
    p.add_argument("--max-batch", type=int, default=max_batch_default,
                   help=f"largest batch (default {max_batch_default})")
    p.add_argument("--fp16", action="store_const", dest="engine_precision", const="fp16",
                   help="an fp16 engine, built from the fp16 ONNX graph (instance norms stay fp32)")
    p.set_defaults(engine_precision="fp32")
    p.add_argument("--timing-cache", type=Path, help="TensorRT timing cache file (read and updated)")
    p.add_argument("--workspace-gb", type=float, default=4.0, help="TensorRT builder workspace (default 4)")


def _usage(message: str):
    from instyle.errors import UsageError

    return UsageError(message)


def _parse_size(text: str) -> tuple[int, int]:
    m = _SIZE.match(text.strip().lower())
    if not m or min(int(m[1]), int(m[2])) < 1:
        raise _usage(f"--static {text!r}: expected HxW with positive integers, e.g. 720x1280")
    return int(m[1]), int(m[2])


def _load_model(spec: str | None):
    from instyle import checkpoint

    return checkpoint.load(checkpoint.resolve(spec))


def _is_onnx(spec: str | None) -> bool:
    return spec is not None and spec.lower().endswith(".onnx")


def run(args: argparse.Namespace) -> int:
    workspace = getattr(args, "workspace_gb", None)
    if workspace is not None and not 0 < workspace < 1e6:
        raise _usage(f"--workspace-gb {workspace}: must be a positive number of GB")
    if args.target == "onnx":
        return _run_onnx(args)
    if args.target == "tensorrt":
        return _run_tensorrt(args)
    return _run_triton_repo(args)


def _run_onnx(args) -> int:
    from instyle.errors import require

    for package in ("onnx", "onnxscript") + (("onnxruntime",) if args.check else ()):
        require(package, "instyle export onnx")  # before loading the model: one line, exit 2
    from instyle.export import onnx as onnx_export

    if _is_onnx(args.model):
        raise _usage("--model is already an ONNX file; give a .safetensors/.pth model or a style name")
    if args.opset < onnx_export.MIN_OPSET:
        raise _usage(f"--opset {args.opset}: must be {onnx_export.MIN_OPSET} or newer")
    static = _parse_size(args.static) if args.static else None
    model, meta = _load_model(args.model)
    try:
        proto = onnx_export.to_onnx_proto(model, precision=args.precision, opset=args.opset, static=static,
                                          metadata=meta, spatial=args.spatial)
    except ValueError as e:
        if not args.spatial:
            raise
        raise _usage(f"--spatial: {e}") from None
    import onnx

    from instyle.atomic import atomic_path

    with atomic_path(args.output) as tmp:
        onnx.save(proto, str(tmp))
        if args.check:
            from instyle.export import parity

            shapes = [(1, *static), (3, *static)] if static else None
            rows = parity.check_onnx(tmp, model, precision=args.precision, shapes=shapes)
            for row in rows:
                print(f"check {parity.format_row(row)}")
            if not all(r["ok"] for r in rows):
                raise RuntimeError(f"parity check failed for {args.output} (nothing written)")
    print(f"wrote {args.output} (opset {args.opset}, {args.precision}, "
          f"{'static ' + args.static if static else 'dynamic N,H,W'})")
    return 0


def _profiles(args, min_size: int):
    from instyle.export import tensorrt as trt_export

    if args.max_batch < 1:
        raise _usage(f"--max-batch {args.max_batch}: must be >= 1")
    if not getattr(args, "profile", None):
        return trt_export.default_profiles(min_size=min_size, max_batch=args.max_batch)
    try:
        return [trt_export.parse_profile(p, max_batch=args.max_batch, min_size=min_size) for p in args.profile]
    except ValueError as e:
        raise _usage(f"--profile: {e}") from None


def _onnx_source(args, tmpdir: Path) -> tuple[Path, int, str]:
    """(an ONNX file for --model at the engine's precision, the generator's min_size, a default name)."""
    from instyle.export import onnx as onnx_export

    # the engine's precision is its graph's (strongly typed): only a TensorRT target asks for one
    precision = args.engine_precision if getattr(args, "format", "plan") == "plan" else None
    if _is_onnx(args.model):
        path = Path(args.model).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such ONNX file")
        meta = onnx_export.read_metadata(path)
        graph = meta.get("precision", "fp32")
        if precision is not None and graph != precision:
            raise _usage(f"--model {path} is an {graph} graph; an engine runs its graph's precision: export it "
                         f"with --precision {precision}, or pass the model file")
        return path, int(meta.get("min_size", 1)), meta.get("style") or path.stem
    model, meta = _load_model(args.model)
    path = onnx_export.export_onnx(model, tmpdir / "model.onnx", metadata=meta, precision=precision or "fp32")
    return path, int(model.min_size), meta.get("style") or "instyle"


def _run_tensorrt(args) -> int:
    import tempfile

    from instyle.export import tensorrt as trt_export

    # validate everything cheap first: a bad profile is a usage error even where TensorRT is missing
    if args.profile:
        _profiles(args, 1)
    trt_export.import_tensorrt()
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path, min_size, _ = _onnx_source(args, Path(tmp))
        profiles = _profiles(args, min_size)
        trt_export.build_engine(onnx_path, args.output, profiles=profiles, precision=args.engine_precision,
                                timing_cache=args.timing_cache, workspace_gb=args.workspace_gb)
    print(f"wrote {args.output} and {trt_export.sidecar_path(args.output)} ({args.engine_precision}, "
          f"profiles {', '.join(trt_export.format_profile(p) for p in profiles)})")
    return 0


def _run_triton_repo(args) -> int:
    import tempfile

    from instyle.export import triton_repo

    if args.max_batch < 0:
        raise _usage(f"--max-batch {args.max_batch}: must be >= 0")
    if args.format == "plan":
        from instyle.export import tensorrt as trt_export

        trt_export.import_tensorrt()
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path, min_size, default_name = _onnx_source(args, Path(tmp))
        name = triton_repo.model_name(args.name or default_name)
        model_file = onnx_path
        if args.format == "plan":
            args.profile = None
            batch_args = argparse.Namespace(**{**vars(args), "max_batch": max(1, args.max_batch)})
            model_file = Path(tmp) / "model.plan"
            trt_export.build_engine(onnx_path, model_file, profiles=_profiles(batch_args, min_size),
                                    precision=args.engine_precision, timing_cache=args.timing_cache,
                                    workspace_gb=args.workspace_gb)
        from instyle.export.onnx import read_metadata

        styles = len(json.loads(read_metadata(onnx_path).get("styles") or "[]")) or 1
        folder = triton_repo.write_repo(args.output, name, model_file, args.format, max_batch=args.max_batch,
                                        styles=styles)
    print(f"wrote {folder} ({args.format}); serve with: tritonserver --model-repository={args.output}",
          file=sys.stdout)
    return 0
