"""Export a generator to ONNX under the image contract (docs/architecture.md, Image and export contracts).

The graph takes `image` (float32 N,3,H,W, RGB 0..255, dynamic N/H/W) and returns `stylized` (same shape,
float32, clamped 0..255). A multi-style generator's graph also takes `style_weights` (float32 N x S, each
row a convex mix of the S styles; a one-hot row is one style), so one exported file serves every style and
mix, sample by sample. Its `spatial=True` variant takes `style_map` instead (float32 N x S x H x W, the image's
size, each pixel's weights summing to 1: regions, models/norm.py), padded in-graph as the image is; every
conditional norm averages it down to its own resolution (AveragePool) and applies per-pixel (gamma, beta).
The stride padding lives in the graph: H and W are reflect-padded bottom/right up to the next multiple of m,
the generator's stride multiple (the amount, (-H) mod m as in engine/padding.py, is computed from the
input's shape at run time), and the output is cropped back, so a Triton-server or TensorRT user can send any
H, W >= the generator's `min_size`. Smaller images are padded by the engine's runner (engine/padding.py),
which also replicates where reflection cannot reach far enough.

Exporter choice: `torch.onnx.export(dynamo=True)` (torch.export + onnxscript). With torch 2.13 it emits
native `InstanceNormalization` nodes (epsilon kept) and plain `Pad(mode=reflect)`, with dynamic N/H/W from
`torch.export.Dim`; the legacy TorchScript exporter also emits InstanceNormalization but warns it exports
"train=True", builds every Pad out of Reshape/Transpose/ConstantOfShape chains, and is deprecated. The cost
is export time (torch.export's tracing is much slower than the legacy exporter's), paid once per model by the
onnxruntime backend's cache. Its native opset is 18: ONNX's version converter has no Pad adapter down to
17, so opset 17 is produced by relabelling an opset-18 graph whose ops all mean the same at 17 (checked op
by op, see `_relabel_opset_17`).

fp16: the convolutions and activations run in fp16, while every InstanceNormalization stays fp32 with Casts
around it (its mean/variance over H*W pixels is where fp16 loses accuracy); input and output stay float32.
"""
from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from instyle.atomic import atomic_path
from instyle.precision import dtype_of

from .cache import cache_dir, model_key

INPUT_NAME, OUTPUT_NAME, STYLE_INPUT, STYLE_MAP_INPUT = "image", "stylized", "style_weights", "style_map"
INPUT_CONTRACT = "RGB 0..255 float32 NCHW"
DEFAULT_OPSET = 18
EXPORT_FORMAT = "1"  # bump when the exported graph changes for the same weights (invalidates caches)
MIN_OPSET = 17
PRECISIONS = ("fp32", "fp16")


class _Fp32Norm(nn.Module):
    """Run a norm layer in fp32 inside an fp16 graph (statistics accumulated in fp32)."""

    def __init__(self, norm: nn.Module):
        super().__init__()
        self.norm = norm.float()
        self.conditional, self.styles = getattr(norm, "conditional", False), getattr(norm, "styles", 1)

    def forward(self, x: torch.Tensor, *style_weights: torch.Tensor) -> torch.Tensor:
        return self.norm(x.float(), *style_weights).to(x.dtype)


class ImageContract(nn.Module):
    """image (N,3,H,W float32 0..255) -> stylized: pad to the stride multiple, run, crop, clamp."""

    def __init__(self, generator: nn.Module, compute_dtype: torch.dtype = torch.float32):
        super().__init__()
        self.generator = generator
        self.multiple = int(generator.stride_multiple)
        self.compute_dtype = compute_dtype

    def forward(self, image: torch.Tensor, style_weights: torch.Tensor | None = None) -> torch.Tensor:
        h, w = image.shape[-2], image.shape[-1]
        m = self.multiple
        # ceil(h / m) * m traces to ONNX Div/Mul on the input's shape: the padding is computed in-graph. (The
        # form matters: torch.export proves ((h + m-1) // m * m) // m == (h + m-1) // m, which the pyramid's
        # pooled scales need, but not the same of h + (-h) % m.)
        hp, wp = (h + m - 1) // m * m, (w + m - 1) // m * m
        x = F.pad(image, (0, wp - w, 0, hp - h), mode="reflect")
        if style_weights is not None and style_weights.dim() == 4:  # a style map is padded as the image is
            style_weights = F.pad(style_weights, (0, wp - w, 0, hp - h), mode="reflect")
        extra = () if style_weights is None else (style_weights,)
        y = self.generator(x.to(self.compute_dtype), *extra)[..., :h, :w]
        return y.float().clamp(0.0, 255.0)


def check_exportable(model: nn.Module) -> None:
    """Raise ValueError unless `model` takes the 3-channel image contract."""
    if getattr(model, "mode", "style") != "style" or getattr(model, "noise_channels", 0):
        raise ValueError("only style-mode generators without noise channels take the image contract "
                         "(N,3,H,W RGB); texture and noise-input models cannot be exported")
    for attr in ("stride_multiple", "min_size", "arch", "config"):
        if not hasattr(model, attr):
            raise ValueError(f"not an instyle generator (no {attr!r} attribute)")


def contract_module(model: nn.Module, precision: str = "fp32") -> ImageContract:
    """A CPU copy of `model` wrapped in the image contract at `precision` (fp16: norms kept in fp32)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    check_exportable(model)
    gen = copy.deepcopy(model).float().cpu().eval()
    if precision == "fp16":
        gen = gen.half()
        for name, module in list(gen.named_modules()):
            if isinstance(module, (nn.InstanceNorm2d, nn.BatchNorm2d)) or getattr(module, "conditional", False):
                parent_name, _, child = name.rpartition(".")
                setattr(gen.get_submodule(parent_name), child, _Fp32Norm(module))
    return ImageContract(gen, dtype_of(precision)).eval()


def model_metadata(model: nn.Module, metadata: dict | None = None, *, precision: str = "fp32",
                   opset: int = DEFAULT_OPSET, spatial: bool = False) -> dict[str, str]:
    """The strings stored in the ONNX file's metadata_props."""
    from instyle.version import __version__

    meta = metadata or {}
    return {
        "instyle.version": __version__,
        "instyle.input_contract": INPUT_CONTRACT,
        "style": meta.get("style", ""),
        "arch": model.arch,
        "config": json.dumps(model.config),
        "precision": precision,
        "stride_multiple": str(model.stride_multiple),
        "min_size": str(model.min_size),
        "opset": str(opset),
        "training": meta.get("training", "{}"),
        **({"styles": meta.get("styles", "[]")} if getattr(model, "styles", 1) > 1 else {}),
        **({"style_input": STYLE_MAP_INPUT} if spatial else {}),
    }


def _parse_static(static) -> tuple[int, int] | None:
    if static is None:
        return None
    h, w = (int(v) for v in static)
    if h < 1 or w < 1:
        raise ValueError(f"static size must be positive, got {h}x{w}")
    return h, w


# Ops whose opset-18 definition equals their opset-17 one (or, for Pad/Resize, does so when the inputs and
# attributes added in 18 are absent). Anything else blocks the relabelling.
_SAME_AT_17 = {
    "Add", "AveragePool", "BatchNormalization", "Cast", "Clip", "Concat", "Constant", "Conv", "ConvTranspose",
    "Div", "Gather", "Identity", "InstanceNormalization", "MaxPool", "Mod", "Mul", "Relu", "Reshape", "Shape",
    "Slice", "Squeeze", "Sub", "Unsqueeze", "Where", "Expand", "Floor", "Neg", "Max", "Min", "Sqrt",
}


_RESIZE_18_DEFAULTS = {"antialias": 0, "keep_aspect_ratio_policy": b"stretch"}  # Resize-18's additions


def _drop_default_attributes(node, defaults: dict) -> bool:
    """Remove `node`'s attributes that hold their default; False if one of `defaults` is set otherwise."""
    import onnx

    keep = []
    for a in node.attribute:
        if a.name == "axes" or (a.name in defaults and onnx.helper.get_attribute_value(a) != defaults[a.name]):
            return False
        if a.name not in defaults:
            keep.append(a)
    del node.attribute[:]
    node.attribute.extend(keep)
    return True


def _relabel_opset_17(proto) -> None:
    for node in proto.graph.node:
        op = node.op_type
        if op == "Pad" and len(node.input) <= 3:
            continue
        if op == "Resize" and _drop_default_attributes(node, _RESIZE_18_DEFAULTS):
            continue
        if node.domain not in ("", "ai.onnx") or op not in _SAME_AT_17:
            raise ValueError(f"cannot produce opset 17: the graph uses {op} as defined in opset 18; "
                             "use --opset 18 or newer")
    for imp in proto.opset_import:
        if imp.domain in ("", "ai.onnx"):
            imp.version = 17


@contextlib.contextmanager
def _quiet_exporter():
    """Silence the exporter's warnings and log lines (e.g. "torchvision is not installed") for one export."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "torch.export", "torch._dynamo")]
    levels = [lg.level for lg in loggers]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for lg, level in zip(loggers, levels):
                lg.setLevel(level)


def to_onnx_proto(model: nn.Module, *, precision: str = "fp32", opset: int = DEFAULT_OPSET,
                  static: tuple[int, int] | None = None, metadata: dict | None = None, spatial: bool = False):
    """Export `model` (an instyle generator) under the image contract; returns the onnx.ModelProto.
    spatial: a multi-style model's graph takes a per-pixel `style_map` (N x S x H x W) for `style_weights`."""
    import onnx

    if opset < MIN_OPSET:
        raise ValueError(f"opset must be >= {MIN_OPSET}, got {opset}")
    if spatial and int(getattr(model, "styles", 1)) < 2:
        raise ValueError("a spatial graph (per-pixel style_map input) needs a multi-style model")
    static = _parse_static(static)
    wrapper = contract_module(model, precision)
    m, lo = wrapper.multiple, int(model.min_size)
    if static is not None and min(static) < lo:
        raise ValueError(f"static size {static[0]}x{static[1]} is below the generator's minimum {lo}x{lo}")
    # a sample that is not a stride multiple and not 0/1 in any dynamic dim, so nothing gets specialized
    sample = torch.zeros(2, 3, *(static or (max(lo, 2 * m) + 1, max(lo, 2 * m) + 3)))
    batch = torch.export.Dim("batch")
    dims = {0: batch}
    if static is None:
        dims.update({2: torch.export.Dim("height", min=lo), 3: torch.export.Dim("width", min=lo)})
    styles = int(getattr(model, "styles", 1))
    args, names, shapes = (sample,), [INPUT_NAME], {"image": dims}
    if spatial:  # one mix per pixel: N x S x H x W, every dimension but S shared with the image
        style_map = torch.full((2, styles, *sample.shape[-2:]), 1.0 / styles)
        args, names = (sample, style_map), [INPUT_NAME, STYLE_MAP_INPUT]
        shapes = {"image": dims, "style_weights": {k: d for k, d in dims.items()}}
    elif styles > 1:  # one mix per sample: N x S, batch dimension shared with the image
        args, names = (sample, torch.full((2, styles), 1.0 / styles)), [INPUT_NAME, STYLE_INPUT]
        shapes = {"image": dims, "style_weights": {0: batch}}
    with _quiet_exporter(), torch.no_grad():
        program = torch.onnx.export(
            wrapper, args, dynamo=True, input_names=names, output_names=[OUTPUT_NAME],
            dynamic_shapes=shapes, opset_version=max(opset, DEFAULT_OPSET), verbose=False,
            optimize=True)
    proto = program.model_proto
    if opset == 17:
        _relabel_opset_17(proto)
    onnx.helper.set_model_props(proto, model_metadata(model, metadata, precision=precision, opset=opset,
                                                      spatial=spatial))
    proto.producer_name = "instyle"
    proto.doc_string = f"instyle generator: image ({INPUT_CONTRACT}) -> stylized (clamped 0..255)"
    onnx.checker.check_model(proto)
    return proto


def export_onnx(model: nn.Module, path: str | os.PathLike, **kwargs) -> Path:
    """Write `model` as an ONNX file at `path`, atomically; kwargs as for `to_onnx_proto`."""
    import onnx

    proto = to_onnx_proto(model, **kwargs)
    path = Path(path)
    with atomic_path(path) as tmp:
        onnx.save(proto, str(tmp))
    return path


def cache_path(model: nn.Module, *, precision: str = "fp32", opset: int = DEFAULT_OPSET,
               spatial: bool = False) -> Path:
    """Where the cache keeps the ONNX export of `model` (whether or not it is there yet)."""
    from instyle.version import __version__

    extra = {"spatial": True} if spatial else {}  # the plain graphs keep their keys
    key = model_key(model, precision=precision, opset=opset, export_format=EXPORT_FORMAT, instyle=__version__,
                    **extra)
    return cache_dir("onnx") / f"{model.arch}-{precision}-op{opset}{'-spatial' if spatial else ''}-{key}.onnx"


def cached_onnx(model: nn.Module, *, precision: str = "fp32", opset: int = DEFAULT_OPSET,
                metadata: dict | None = None) -> Path:
    """The ONNX export of `model` in the cache, written on first use."""
    path = cache_path(model, precision=precision, opset=opset)
    if not path.is_file():
        export_onnx(model, path, precision=precision, opset=opset, metadata=metadata)
    return path


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """metadata_props of an ONNX file."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in proto.metadata_props}
