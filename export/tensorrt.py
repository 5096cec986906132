"""TensorRT engines from the exported ONNX graph (TensorRT 10 and 11 Python API).

Optimization profiles. TensorRT tunes kernels for a range of input shapes per profile; one profile per
resolution bucket keeps each range tight. A profile string is `MIN:OPT:MAX`, each shape either a tensor
shape `NxCxHxW` (C must be 3) or an image size `WxH`, width first like every size on instyle's command line
(batch 1; MAX's batch becomes --max-batch). Examples:
    1x3x256x256:1x3x1080x1920:4x3x1080x1920      256x256:1920x1080:1920x1080
Default buckets (long side up to 1024, up to 1080p, up to 4K, both orientations): see `default_profiles`.
At run time the first profile whose MIN..MAX contains the input shape is used (`pick_profile`).

Precision lives in the graph: engines are built as strongly typed networks (TensorRT 11 removed the
precision builder flags; 10.x accepts the creation flag), so an fp16 engine is built from the fp16 ONNX
export, whose convolutions are fp16 and whose InstanceNormalization nodes (parsed natively,
NATIVE_INSTANCENORM) run in fp32 between Casts, keeping their statistics accurate.
The engine's JSON sidecar (`<engine>.json`) records the TensorRT version, GPU, profiles, precision and the
sha256 of the source ONNX file: an engine only runs on the GPU model and TensorRT version that built it.
"""
from __future__ import annotations

import datetime
import json
import os
import re
from pathlib import Path

from instyle.atomic import atomic_path

from .cache import sha256_file
from .onnx import INPUT_NAME, STYLE_INPUT

Shape = tuple[int, int, int, int]
Profile = tuple[Shape, Shape, Shape]  # min, opt, max

# (name, opt H x W, max H x W): max is square so portrait and landscape both fit
BUCKETS = (("1024", (1024, 1024), (1024, 1024)),
           ("1080p", (1080, 1920), (1920, 1920)),
           ("4k", (2160, 3840), (3840, 3840)))
PRECISIONS = ("fp32", "fp16")  # the ONNX export's precisions: a strongly typed engine takes the graph's
_SHAPE = re.compile(r"^\d+(x\d+){1,3}$")


def parse_shape(text: str, batch: int = 1) -> Shape:
    text = text.strip().lower()
    if not _SHAPE.match(text):
        raise ValueError(f"bad shape {text!r}: expected WxH or NxCxHxW with positive integers")
    dims = [int(v) for v in text.split("x")]
    if len(dims) == 2:  # an image size, width first
        dims = [batch, 3, dims[1], dims[0]]
    if len(dims) != 4:
        raise ValueError(f"bad shape {text!r}: expected WxH or NxCxHxW, got {len(dims)} numbers")
    if dims[1] != 3:
        raise ValueError(f"bad shape {text!r}: the image has 3 channels, got C={dims[1]}")
    if min(dims) < 1:
        raise ValueError(f"bad shape {text!r}: dimensions must be >= 1")
    return tuple(dims)  # type: ignore[return-value]


def parse_profile(text: str, *, max_batch: int = 1, min_size: int = 1) -> Profile:
    """`MIN:OPT:MAX` -> three N,3,H,W shapes; raises ValueError with a one-line reason."""
    parts = text.split(":")
    if len(parts) != 3:
        raise ValueError(f"bad profile {text!r}: expected MIN:OPT:MAX, e.g. 256x256:1920x1080:1920x1080 "
                         "or 1x3x256x256:1x3x1080x1920:4x3x1080x1920")
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


def strongly_typed_network(trt, builder):
    """An explicit-batch, strongly typed network: the only kind in TensorRT 11, opt-in (flag) in 10.x."""
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    return builder.create_network(0 if flag is None else 1 << int(flag))


def graph_precision(onnx_path: str | os.PathLike) -> str:
    """The precision the ONNX export recorded in its metadata (fp32 when absent)."""
    from .onnx import read_metadata

    return read_metadata(onnx_path).get("precision", "fp32")


def build_engine(onnx_path: str | os.PathLike, engine_path: str | os.PathLike, *,
                 profiles: list[Profile], precision: str | None = None, timing_cache: str | os.PathLike | None = None,
                 workspace_gb: float = 4.0) -> dict:
    """Build a serialized engine from an ONNX file; writes the engine and its JSON sidecar atomically.

    precision: None takes the graph's; a value must match it (strong typing runs the graph's types)."""
    graph = graph_precision(onnx_path)
    if precision is not None and precision != graph:
        raise ValueError(f"{onnx_path} is an {graph} graph; a strongly typed engine runs the graph's precision: "
                         f"export it with `instyle export onnx --precision {precision}` (or pass the model)")
    precision = graph
    if not profiles:
        raise ValueError("at least one optimization profile is needed")
    trt = import_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = strongly_typed_network(trt, builder)
    parser = trt.OnnxParser(network, logger)
    parser.set_flag(trt.OnnxParserFlag.NATIVE_INSTANCENORM)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"{onnx_path}: TensorRT cannot parse the ONNX graph: {errors}")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
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

    from instyle.version import __version__

    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    cc = ".".join(map(str, torch.cuda.get_device_capability())) if torch.cuda.is_available() else None
    return {
        "tensorrt": trt_version, "gpu": gpu, "compute_capability": cc, "precision": precision,
        "profiles": [format_profile(p) for p in profiles], "input": INPUT_NAME,
        "onnx_sha256": sha256_file(onnx_path), "instyle": __version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
