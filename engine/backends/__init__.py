"""Backends: how a Stylizer runs its generator.

A backend factory takes (model, device, dtype) and returns a runner: a callable from a padded float
N,3,H,W tensor (0..255, on `device`) to the generator's raw output. A runner may carry two optional
attributes: `precision` (the precision it really runs, where that differs from the one asked for) and
`notes` (one-line remarks for the user, e.g. "running without a cache").

Rows with `style_input` take a multi-style model as it is and return a runner called as run(x, style_weights),
style_weights N x S (float32, rows summing to 1): the style is data, so one runner serves every style, mix and
per-sample mix (docs/architecture.md, Multi-style inference). The other rows run a single-style network: the
Stylizer bakes the mix into a copy (models/styles.py) and builds one runner per mix.

All backends are one table, `TABLE` (name -> Backend: factory, devices, precisions, options), one file per
backend beside it: eager.py, triton_norms.py ("triton": cuDNN convs, Triton instance-norm tails),
fused_gemm.py ("fused": the whole net as conv-IN GEMM kernels), torch_compile.py ("compile"); the runtimes of
exported graphs live with their exporters (export/ort_runner.py, ov_runner.py, trt_runner.py). The options are
the factory's keyword arguments; `load(..., options={...})` reaches them. Rows with `graphs` take two more,
`graphs` and `cache_size`: the table puts their runner behind a CUDA-graph LRU (engine/graphs.py), on CUDA by
default. Backends that live in other
subpackages (export/) are named by import path and loaded on first use, so engine/ never imports them at module import
time; the packages they need are imported first, so a missing one is a BackendUnavailable with its install hint.
The runner modules this table names take BackendUnavailable from instyle.errors, never from here: importing
this module back would be an import cycle (tests/test_import_graph.py).
`chain(device)` is the order `auto` tries them in.
"""
from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from instyle.errors import BackendUnavailable
from instyle.specs import BACKEND_NAMES

from ..graphs import GRAPH_CACHE_SIZE, GraphCache
from .eager import make_runner as _eager

Runner = Callable[[torch.Tensor], torch.Tensor]
Factory = Callable[[nn.Module, torch.device, torch.dtype], Runner]

__all__ = ["BACKENDS", "TABLE", "Backend", "BackendUnavailable", "Runner", "Factory", "factory", "chain",
           "auto_choice", "auto_precision", "check_device", "check_precision", "check_options", "split_options"]


@dataclass
class Backend:
    factory: Factory | str                       # callable, or "module:function" resolved lazily
    devices: tuple[str, ...] = ("cpu", "cuda")
    precisions: tuple[str, ...] = ("fp32", "fp16", "bf16")
    options: tuple[str, ...] = ()                # the factory's keyword arguments (load(options=...))
    runs_module: bool = False                    # runs the PyTorch module itself (channels_last on CUDA)
    torch_memory: bool = False                   # allocates through torch (peak memory is measurable)
    requires: tuple[str, ...] = ()               # packages imported before the factory is
    hint: str = ""                               # how to install them
    auto_precision: str | None = None            # "module:function(device, model) -> (precision, notes)" for "auto"
    graphs: bool = False                         # behind a CUDA-graph LRU per shape (options graphs, cache_size)
    style_input: bool = False                    # runs a multi-style model with style_weights as an input
    auto_options: tuple[tuple[str, object], ...] = ()  # options the factory gets when precision was "auto"

    def __post_init__(self):
        if self.graphs:
            self.options = ("graphs", "cache_size") + self.options


TABLE: dict[str, Backend] = {
    "eager": Backend(_eager, runs_module=True, torch_memory=True, style_input=True),
    "triton": Backend("instyle.engine.backends.triton_norms:make_runner", graphs=True, runs_module=True,
                      torch_memory=True),
    "fused": Backend("instyle.engine.backends.fused_gemm:make_runner", graphs=True,
                     options=("prenorm", "first_layer", "upsample", "conv3x3"), torch_memory=True),
    "compile": Backend("instyle.engine.backends.torch_compile:make_runner", graphs=True, options=("compiler", "mode"),
                       runs_module=True, torch_memory=True),
    "onnxruntime": Backend("instyle.export.ort_runner:make_runner", precisions=("fp32", "fp16"),
                           requires=("onnxruntime",), hint="pip install 'instyle[onnx]'", style_input=True),
    "openvino": Backend("instyle.export.ov_runner:make_runner", devices=("cpu",), precisions=("fp32", "bf16", "int8"),
                        requires=("openvino",), hint="pip install openvino", options=("int8_styles",),
                        auto_precision="instyle.export.ov_runner:auto_precision", style_input=True,
                        auto_options=(("int8_styles", "passed"),)),  # int8 for the styles it passed for
    "tensorrt": Backend("instyle.export.trt_runner:make_runner", devices=("cuda",), precisions=("fp32", "fp16"),
                        hint="pip install 'instyle[tensorrt]'", style_input=True),
}
BACKENDS = tuple(TABLE)
assert BACKENDS == BACKEND_NAMES, "instyle.specs.BACKEND_NAMES must list the table's backends in order"

# what `auto` tries, in order, per device type
# fused first on CUDA: it writes no padded, upsampled or normalized activation that the next conv can compute
# while loading (it was the fastest in every committed H100 run: bench/results/2026-11-26-h100*/results.md); its
# check_supported refuses the generators it cannot run (pyramid, BN, zero padding, ...), which move down to triton.
_CHAINS = {"cuda": ("fused", "triton", "eager"), "cpu": ("openvino", "onnxruntime", "eager")}


def chain(device: torch.device) -> tuple[str, ...]:
    return _CHAINS.get(torch.device(device).type, ("eager",))


def _resolve(path: str):
    module_name, _, attr = path.partition(":")
    return getattr(importlib.import_module(module_name), attr)


def _require(name: str, spec: Backend) -> None:
    for package in spec.requires:
        try:
            importlib.import_module(package)
        except ImportError:
            hint = f" ({spec.hint})" if spec.hint else ""
            raise BackendUnavailable(f"backend {name!r} needs the package {package}{hint}") from None
        except Exception as e:  # noqa: BLE001 -- a broken install (missing shared library, ...) is unavailable too
            raise BackendUnavailable(f"backend {name!r}: importing {package} failed: "
                                     f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
                                     ) from None


def factory(name: str) -> Factory:
    if name not in TABLE:
        raise ValueError(f"unknown backend {name!r} (choose from {', '.join(('auto',) + BACKENDS)})")
    spec = TABLE[name]
    _require(name, spec)
    if isinstance(spec.factory, str):
        module_name = spec.factory.partition(":")[0]
        try:
            spec.factory = _resolve(spec.factory)
        except ImportError as e:
            if e.name and module_name.startswith(e.name):
                raise BackendUnavailable(f"backend {name!r} is not available in this build of instyle") from None
            hint = f" ({spec.hint})" if spec.hint else ""
            raise BackendUnavailable(f"backend {name!r} needs the package {e.name or e}{hint}") from None
    return _behind_graphs(spec.factory) if spec.graphs else spec.factory


def _behind_graphs(make: Factory) -> Factory:
    """`make`'s runner, with `graphs` (default: on CUDA) behind one CUDA graph per shape for `cache_size` shapes."""
    def build(model: nn.Module, device: torch.device, dtype: torch.dtype, *, graphs: bool | None = None,
              cache_size: int = GRAPH_CACHE_SIZE, **options) -> Runner:
        if cache_size < 1:
            raise ValueError(f"backend option cache_size must be >= 1, got {cache_size}")
        run = make(model, device, dtype, **options)
        if graphs is None:
            graphs = torch.device(device).type == "cuda"
        return GraphCache(run, cache_size) if graphs else run

    return build


def check_device(name: str, device: torch.device) -> None:
    """Raise BackendUnavailable when backend `name` does not run on `device`'s type."""
    spec = TABLE.get(name)
    kind = torch.device(device).type
    if spec is not None and kind not in spec.devices:
        raise BackendUnavailable(f"backend {name!r} runs on {' or '.join(spec.devices)}, not {kind}")


def check_precision(name: str, precision: str) -> None:
    """Raise BackendUnavailable when backend `name` does not run `precision`."""
    spec = TABLE.get(name)
    if spec is not None and precision not in spec.precisions:
        raise BackendUnavailable(f"backend {name!r} runs {' or '.join(spec.precisions)}, not {precision}")


def check_options(name: str, options: dict) -> None:
    """Raise ValueError for options backend `name` does not take."""
    known = TABLE[name].options if name in TABLE else ()
    unknown = sorted(set(options) - set(known))
    if unknown:
        takes = f"its options: {', '.join(known)}" if known else "it takes no options"
        raise ValueError(f"backend {name!r} has no option {', '.join(map(repr, unknown))} ({takes})")


def split_options(names: list[str], options: dict) -> dict[str, dict]:
    """Each backend of `names` -> the options it takes; ValueError for an option none of them takes (backend
    "auto" and `instyle bench` hand one option set to several backends)."""
    taken = {k for name in names for k in TABLE[name].options}
    unknown = sorted(set(options) - taken)
    if unknown:
        raise ValueError(f"no backend of {', '.join(names)} has the option(s) {', '.join(map(repr, unknown))}")
    return {name: {k: v for k, v in options.items() if k in TABLE[name].options} for name in names}


def auto_choice(name: str, device: torch.device, model: nn.Module | None = None) -> tuple[str, list[str]]:
    """(precision, notes): what `precision="auto"` means for backend `name` on `device` (for `model`, where it
    matters: openvino picks int8 only for a network whose quantized form passed its quality gate), and one-line
    remarks on why a faster precision was passed over (e.g. a stale shipped int8 model)."""
    spec = TABLE.get(name)
    if spec is not None and spec.auto_precision:
        precision, notes = _resolve(spec.auto_precision)(torch.device(device), model)
        return precision, list(notes)
    return ("fp16" if torch.device(device).type == "cuda" else "fp32"), []


def auto_precision(name: str, device: torch.device, model: nn.Module | None = None) -> str:
    """The precision of auto_choice."""
    return auto_choice(name, device, model)[0]
