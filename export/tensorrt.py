"""TensorRT engines from the exported ONNX graph (TensorRT >= 10 Python API).

Optimization profiles. TensorRT tunes kernels for a range of input shapes per profile; one profile per
resolution bucket keeps each range tight. A profile string is `MIN:OPT:MAX`, each shape either
`NxCxHxW` (C must be 3) or `HxW` (batch 1; MAX's batch becomes --max-batch). Examples:
    1x3x256x256:1x3x1024x1024:4x3x1024x1024      256x256:1024x1024:1024x1024
Default buckets (long side up to 1024, up to 1080p, up to 4K, both orientations): see `default_profiles`.
At run time the first profile whose MIN..MAX contains the input shape is used (`pick_profile`).

Precision: --fp16/--bf16 let TensorRT pick lower-precision kernels, while the InstanceNormalization layers
(parsed natively, NATIVE_INSTANCENORM) are constrained to fp32 so their statistics stay accurate.
The engine's JSON sidecar (`<engine>.json`) records the TensorRT version, GPU, profiles, precision and the
sha256 of the source ONNX file: an engine only runs on the GPU model and TensorRT version that built it.
"""
from __future__ import annotations

import datetime
import json
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

from instyle.atomic import atomic_path

from .cache import sha256_file
from .onnx import INPUT_NAME, STYLE_INPUT

if TYPE_CHECKING:
    import tensorrt as trt

Shape = tuple[int, int, int, int]
Profile = tuple[Shape, Shape, Shape]  # min, opt, max

# (name, opt H x W, max H x W): max is square so portrait and landscape both fit
BUCKETS = (("1024", (1024, 1024), (1024, 1024)),
           ("1080p", (1080, 1920), (1920, 1920)),
           ("4k", (2160, 3840), (3840, 3840)))
PRECISIONS = ("fp32", "fp16", "bf16")
_SHAPE = re.compile(r"^\d+(x\d+){1,3}$")


def parse_shape(text: str, batch: int = 1) -> Shape:
    text = text.strip().lower()
    if not _SHAPE.match(text):
        raise ValueError(f"bad shape {text!r}: expected HxW or NxCxHxW with positive integers")
    dims = [int(v) for v in text.split("x")]
    if len(dims) == 2:
        dims = [batch, 3, *dims]
    if len(dims) != 4:
        raise ValueError(f"bad shape {text!r}: expected HxW or NxCxHxW, got {len(dims)} numbers")
    if dims[1] != 3:
        raise ValueError(f"bad shape {text!r}: the image has 3 channels, got C={dims[1]}")
    if min(dims) < 1:
        raise ValueError(f"bad shape {text!r}: dimensions must be >= 1")
    return tuple(dims)  # type: ignore[return-value]


def parse_profile(text: str, *, max_batch: int = 1, min_size: int = 1) -> Profile:
    """`MIN:OPT:MAX` -> three N,3,H,W shapes; raises ValueError with a one-line reason."""
    parts = text.split(":")
    if len(parts) != 3:
        raise ValueError(f"bad profile {text!r}: expected MIN:OPT:MAX, e.g. 256x256:1024x1024:1024x1024 "
                         "or 1x3x256x256:1x3x1024x1024:4x3x1024x1024")
    lo, opt, hi = parse_shape(parts[0]), parse_shape(parts[1]), parse_shape(parts[2], batch=max_batch)
    if not all(a <= b <= c for a, b, c in zip(lo, opt, hi)):
        raise ValueError(f"bad profile {text!r}: needs MIN <= OPT <= MAX in every dimension")
    if min(lo[2:]) < min_size:
        raise ValueError(f"bad profile {text!r}: the generator needs H and W >= {min_size}")
    return lo, opt, hi


def format_profile(profile: Profile) -> str:
    return ":".join("x".join(str(d) for d in shape) for shape in profile)


def default_profiles(*, min_size: int = 8, max_batch: int = 1) -> list[Profile]:
    """One profile per bucket of BUCKETS, smallest first."""
    lo = (1, 3, min_size, min_size)
    return [(lo, (1, 3, *opt), (max_batch, 3, *hi)) for _, opt, hi in BUCKETS]


def pick_profile(profiles: list[Profile], shape) -> int:
    """Index of the first profile whose MIN..MAX range contains `shape`."""
    shape = tuple(int(d) for d in shape)
    for i, (lo, _, hi) in enumerate(profiles):
        if all(a <= d <= b for a, d, b in zip(lo, shape, hi)):
            return i
    ranges = ", ".join(f"{'x'.join(map(str, lo))}..{'x'.join(map(str, hi))}" for lo, _, hi in profiles)
    raise ValueError(f"input {'x'.join(map(str, shape))} fits no optimization profile of this engine ({ranges})")


def import_tensorrt():
    try:
        import tensorrt
    except ImportError:
        raise RuntimeError("TensorRT is not installed: pip install 'instyle[tensorrt]' "
                           "(needs an NVIDIA GPU and driver)") from None
    if int(tensorrt.__version__.split(".")[0]) < 10:
        raise RuntimeError(f"TensorRT >= 10 is required, found {tensorrt.__version__}")
    return tensorrt


def _constrain_norms_to_fp32(trt, network: trt.INetworkDefinition) -> None:
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        if layer.type == trt.LayerType.NORMALIZATION:
            layer.precision = trt.float32
            layer.set_output_type(0, trt.float32)
            # get_layer returns the ILayer base; view it as INormalizationLayer for its compute precision
            layer.__class__ = trt.INormalizationLayer
            layer.compute_precision = trt.float32


def build_engine(onnx_path: str | os.PathLike, engine_path: str | os.PathLike, *,
                 profiles: list[Profile], precision: str = "fp16", timing_cache: str | os.PathLike | None = None,
                 workspace_gb: float = 4.0) -> dict:
    """Build a serialized engine from an ONNX file; writes the engine and its JSON sidecar atomically."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if not profiles:
        raise ValueError("at least one optimization profile is needed")
    trt = import_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, logger)
    parser.set_flag(trt.OnnxParserFlag.NATIVE_INSTANCENORM)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"{onnx_path}: TensorRT cannot parse the ONNX graph: {errors}")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    if precision != "fp32":
        config.set_flag(trt.BuilderFlag.FP16 if precision == "fp16" else trt.BuilderFlag.BF16)
        config.set_flag(trt.BuilderFlag.PREFER_PRECISION_CONSTRAINTS)
        _constrain_norms_to_fp32(trt, network)
    inputs = {network.get_input(i).name: network.get_input(i) for i in range(network.num_inputs)}
    styles = inputs[STYLE_INPUT].shape[1] if STYLE_INPUT in inputs else 0  # multi-style graphs: N x S mixes
    for lo, opt, hi in profiles:
        profile = builder.create_optimization_profile()
        profile.set_shape(INPUT_NAME, lo, opt, hi)
        if styles:
            profile.set_shape(STYLE_INPUT, (lo[0], styles), (opt[0], styles), (hi[0], styles))
        config.add_optimization_profile(profile)
    cache_path = Path(timing_cache) if timing_cache else None
    blob = cache_path.read_bytes() if cache_path and cache_path.is_file() else b""
    config.set_timing_cache(config.create_timing_cache(blob), False)  # False: refuse a foreign cache

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT failed to build an engine from {onnx_path} (see the log above)")
    engine_path = Path(engine_path)
    with atomic_path(engine_path) as tmp:
        tmp.write_bytes(bytes(serialized))
    if cache_path:
        with atomic_path(cache_path) as tmp:
            tmp.write_bytes(bytes(config.get_timing_cache().serialize()))
    sidecar = engine_sidecar(trt.__version__, profiles, precision, onnx_path)
    with atomic_path(sidecar_path(engine_path)) as tmp:
        tmp.write_text(json.dumps(sidecar, indent=2) + "\n")
    return sidecar


def sidecar_path(engine_path: str | os.PathLike) -> Path:
    return Path(str(engine_path) + ".json")


def engine_sidecar(trt_version: str, profiles: list[Profile], precision: str, onnx_path) -> dict:
    import torch

    from instyle import __version__

    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    cc = ".".join(map(str, torch.cuda.get_device_capability())) if torch.cuda.is_available() else None
    return {
        "tensorrt": trt_version, "gpu": gpu, "compute_capability": cc, "precision": precision,
        "profiles": [format_profile(p) for p in profiles], "input": INPUT_NAME,
        "onnx_sha256": sha256_file(onnx_path), "instyle": __version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
