"""Backends: how a Stylizer runs its generator.

A backend factory takes (model, device, dtype) and returns a runner: a callable from a padded float
N,3,H,W tensor (0..255, on `device`) to the generator's raw output. Backends that live in other
subpackages (export/) are named by import path and loaded on first use, so engine/ never imports them.
"""
from __future__ import annotations

import importlib
from collections.abc import Callable

import torch
from torch import nn

Runner = Callable[[torch.Tensor], torch.Tensor]
Factory = Callable[[nn.Module, torch.device, torch.dtype], Runner]

BACKENDS = ("eager", "triton", "fused", "compile", "onnxruntime", "tensorrt")


class BackendUnavailable(RuntimeError):
    """The backend cannot run here; the message says why."""


def _eager(model: nn.Module, device: torch.device, dtype: torch.dtype) -> Runner:
    def run(x: torch.Tensor) -> torch.Tensor:
        return model(x.to(dtype))

    return run


# name -> factory, or "module:function" resolved lazily
_REGISTRY: dict[str, Factory | str] = {
    "eager": _eager,
    "triton": "instyle.engine.fused:make_runner",
    "fused": "instyle.engine.fused_chain:make_runner",
    "compile": "instyle.engine.compiled:make_runner",
    "onnxruntime": "instyle.export.ort_runner:make_runner",
    "tensorrt": "instyle.export.trt_runner:make_runner",
}


def register(name: str, factory: Factory | str) -> None:
    _REGISTRY[name] = factory


def factory(name: str) -> Factory:
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r} (choose from {', '.join(('auto',) + BACKENDS)})")
    entry = _REGISTRY.get(name)
    if entry is None:
        raise BackendUnavailable(f"backend {name!r} is not available in this build of instyle")
    if isinstance(entry, str):
        module_name, _, attr = entry.partition(":")
        try:
            entry = getattr(importlib.import_module(module_name), attr)
        except ImportError as e:
            if e.name and module_name.startswith(e.name):
                raise BackendUnavailable(f"backend {name!r} is not available in this build of instyle") from None
            extra = {"onnxruntime": " (pip install 'instyle[onnx]')", "tensorrt": " (pip install 'instyle[tensorrt]')"}
            raise BackendUnavailable(f"backend {name!r} needs the package {e.name or e}{extra.get(name, '')}") from None
        _REGISTRY[name] = entry
    return entry
