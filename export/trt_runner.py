"""The `tensorrt` backend: a TensorRT engine built from the generator's ONNX export (cached on disk), run on
torch CUDA tensors with `execute_async_v3` and tensor addresses (no pycuda; torch owns memory and streams).

The engine has one optimization profile per resolution bucket (export/tensorrt.py); each call picks the
profile by input shape and splits batches larger than the profile's max batch. A multi-style model's engine takes
`style_weights` (N x S) as an input (built from the ONNX graph that has it): one engine for every style and mix.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from instyle.errors import BackendUnavailable
from instyle.precision import name_of

from . import tensorrt as trt_export
from .cache import cache_dir, model_key
from .onnx import INPUT_NAME, OUTPUT_NAME, STYLE_INPUT, cached_onnx

_RUNS = ("fp32", "fp16")  # strongly typed: the ONNX export's precisions


def cached_engine(model: nn.Module, precision: str, *, max_batch: int = 1) -> Path:
    """The engine for `model` on the current GPU in the cache, built on first use."""
    trt = trt_export.import_tensorrt()
    gpu = torch.cuda.get_device_name().replace(" ", "_")
    key = model_key(model, precision=precision, tensorrt=trt.__version__, gpu=gpu, max_batch=max_batch)
    path = cache_dir("tensorrt") / f"{model.arch}-{precision}-{key}.engine"
    if not path.is_file():
        profiles = trt_export.default_profiles(min_size=int(model.min_size), max_batch=max_batch)
        trt_export.build_engine(cached_onnx(model, precision=precision), path, profiles=profiles,
                                precision=precision, timing_cache=cache_dir("tensorrt") / "timing.cache")
    return path


class EngineRunner:
    """Runs a serialized engine on torch CUDA tensors: image N,3,H,W float32 -> stylized."""

    def __init__(self, engine_path: str | os.PathLike, device: torch.device):
        trt = trt_export.import_tensorrt()
        self.device = device
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        self.engine = self.runtime.deserialize_cuda_engine(Path(engine_path).read_bytes())
        if self.engine is None:
            raise RuntimeError(f"{engine_path}: TensorRT cannot deserialize this engine (built by another "
                               "TensorRT version or for another GPU?)")
        self.context = self.engine.create_execution_context()
        self.profiles = [tuple(tuple(int(d) for d in s) for s in self.engine.get_tensor_profile_shape(INPUT_NAME, i))
                         for i in range(self.engine.num_optimization_profiles)]
        self.active = -1

    def _run_chunk(self, x: torch.Tensor, w: torch.Tensor | None, stream: torch.cuda.Stream) -> torch.Tensor:
        index = trt_export.pick_profile(self.profiles, x.shape)
        if index != self.active:
            self.context.set_optimization_profile_async(index, stream.cuda_stream)
            self.active = index
        self.context.set_input_shape(INPUT_NAME, tuple(x.shape))
        if w is not None:
            self.context.set_input_shape(STYLE_INPUT, tuple(w.shape))
            self.context.set_tensor_address(STYLE_INPUT, w.data_ptr())
        y = torch.empty(tuple(self.context.get_tensor_shape(OUTPUT_NAME)), device=self.device,
                        dtype=torch.float32)
        self.context.set_tensor_address(INPUT_NAME, x.data_ptr())
        self.context.set_tensor_address(OUTPUT_NAME, y.data_ptr())
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError(f"TensorRT execution failed for input {tuple(x.shape)}")
        return y

    def __call__(self, x: torch.Tensor, style_weights: torch.Tensor | None = None) -> torch.Tensor:
        x = x.detach().to(self.device, torch.float32).contiguous()
        # the largest batch any profile takes at this H, W; bigger batches go through in chunks
        fits = [hi[0] for lo, _, hi in self.profiles
                if all(a <= d <= b for a, d, b in zip(lo[1:], x.shape[1:], hi[1:]))]
        step = max(fits) if fits else x.shape[0]  # none fits: pick_profile raises the clear error
        stream = torch.cuda.current_stream(self.device)
        ws = [None] * len(x.split(step)) if style_weights is None else \
            [c.contiguous() for c in style_weights.detach().to(self.device, torch.float32).split(step)]
        return torch.cat([self._run_chunk(c.contiguous(), w, stream) for c, w in zip(x.split(step), ws)])


def make_runner(model: nn.Module, device: torch.device, dtype: torch.dtype):
    """Backend factory (engine/backends/)."""
    device = torch.device(device)
    if device.type != "cuda":
        raise BackendUnavailable("the tensorrt backend needs a CUDA device")
    try:
        trt_export.import_tensorrt()
    except RuntimeError as e:
        raise BackendUnavailable(str(e)) from None
    if name_of(dtype) not in _RUNS:
        raise BackendUnavailable(f"the tensorrt backend runs fp32 or fp16 (the ONNX graph's precision), not {dtype}")
    with torch.cuda.device(device):
        return EngineRunner(cached_engine(model, name_of(dtype)), device)
