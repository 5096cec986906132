"""The `onnxruntime` backend: the generator exported to ONNX (cached on disk), run by an InferenceSession.

CPU by default; on a CUDA device it asks for the TensorRT and CUDA execution providers when this build of
onnxruntime has them, and binds torch CUDA tensors to the session directly (IO binding, no host copies).
A multi-style model's graph takes `style_weights` (N x S) too: one session serves every style and mix. On the
CPU a per-pixel style map (N x S x H x W, regions) runs the graph's spatial variant (export/onnx.py,
spatial=True), exported and cached like the first on the first call with a map.

The runner never fails on its cache: a cached file ONNX Runtime cannot load (truncated, corrupt) is deleted
and exported again once; an unwritable cache means running the export from memory. Both are reported in
the runner's `notes`. A missing onnx/onnxscript (needed only to export) or a failed export is a
BackendUnavailable that says so.
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path

import torch
from torch import nn

from instyle.atomic import atomic_path
from instyle.errors import BackendUnavailable
from instyle.precision import name_of

from . import onnx as onnx_export
from .cache import why

_RUNS = ("fp32", "fp16")  # the ONNX export's precisions


def physical_cores() -> int:
    """Physical cores available to this process (hyperthreads slow ORT's intra-op pool down)."""
    try:
        allowed = os.sched_getaffinity(0)
    except AttributeError:  # not Linux
        allowed = set(range(os.cpu_count() or 1))
    cores = set()
    for cpu in allowed:
        try:
            siblings = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list").read_text()
        except OSError:
            return len(allowed)
        cores.add(siblings.strip())
    return max(1, len(cores))


# Above this many pixels per call, a CPU run uses a session without ORT's memory arena: the arena is what
# makes ORT faster than eager at photo sizes on CPU, but it never gives back its high-water mark, so at 4K it
# holds gigabytes more resident memory than the same run without it; below the threshold the arena's speed
# is kept.
LEAN_ABOVE_PIXELS = 4_000_000


def session_options(threads: int | None = None, *, arena: bool = True):
    """Tuned CPU options; intra-op threads: `threads`, else $INSTYLE_ORT_THREADS, else physical cores."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL  # incl. NCHWc conv layouts
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL  # one chain of convs: nothing to run in parallel
    so.intra_op_num_threads = threads or int(os.environ.get("INSTYLE_ORT_THREADS") or 0) or physical_cores()
    so.inter_op_num_threads = 1
    so.enable_mem_pattern = False  # a per-shape plan costs memory and gained no speed here
    so.enable_cpu_mem_arena = arena
    so.log_severity_level = 3  # errors only
    return so


def providers_for(device: torch.device) -> list[str]:
    import onnxruntime as ort

    available = ort.get_available_providers()
    if device.type == "cuda":
        wanted = [p for p in ("TensorrtExecutionProvider", "CUDAExecutionProvider") if p in available]
        if not wanted:
            raise BackendUnavailable("onnxruntime on cuda needs onnxruntime-gpu (CUDA execution provider); "
                                     f"this build has {', '.join(available)}")
        return wanted + ["CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def _provider_options(provider: str, device: torch.device) -> dict[str, str]:
    if provider == "CPUExecutionProvider":
        return {}
    options = {"device_id": str(device.index or 0)}
    if provider == "TensorrtExecutionProvider":  # engines take minutes to build: keep them between runs
        from .cache import cache_dir

        options.update(trt_engine_cache_enable="True", trt_timing_cache_enable="True",
                       trt_engine_cache_path=str(cache_dir("ort-tensorrt")))
    return options


def make_session(path: str | os.PathLike | bytes, device: torch.device | str = "cpu", *,
                 threads: int | None = None, arena: bool = True):
    """An InferenceSession for an ONNX file, or for a serialized model (bytes)."""
    import onnxruntime as ort

    device = torch.device(device)
    providers = providers_for(device)
    options = [_provider_options(p, device) for p in providers]
    return ort.InferenceSession(path if isinstance(path, bytes) else str(path),
                                sess_options=session_options(threads, arena=arena),
                                providers=providers, provider_options=options)


def _export(model: nn.Module, precision: str, spatial: bool = False) -> bytes:
    try:
        return onnx_export.to_onnx_proto(model, precision=precision, spatial=spatial).SerializeToString()
    except ImportError as e:
        raise BackendUnavailable(f"backend 'onnxruntime' needs the package {e.name or 'onnx'} to export the "
                                 "model (pip install 'instyle[onnx]')") from None
    except Exception as e:  # noqa: BLE001 -- a failed export: the backend cannot run this model
        raise BackendUnavailable(f"backend 'onnxruntime': ONNX export failed ({why(e)})") from None


def cached_session(model: nn.Module, precision: str, device: torch.device, spatial: bool = False):
    """(session, source, notes): source is the cached file, or the serialized model when the cache is unusable.
    spatial: the graph with a per-pixel style_map input."""
    notes: list[str] = []
    try:
        path = onnx_export.cache_path(model, precision=precision, spatial=spatial)
        present = path.is_file()
    except OSError as e:
        path, present = None, False
        notes.append(f"cache unreadable ({why(e)}): running without a cache")
    if present:
        try:
            return make_session(path, device), path, notes
        except BackendUnavailable:
            raise
        except Exception as e:  # noqa: BLE001 -- truncated/corrupt file: export again, once
            notes.append(f"cached {path.name} was unusable ({why(e)}): rebuilt it")
            with contextlib.suppress(OSError):
                path.unlink()
    data = _export(model, precision, spatial)
    source: Path | bytes = data
    if path is not None:
        try:
            with atomic_path(path) as tmp:
                tmp.write_bytes(data)
            source = path
        except OSError as e:
            notes.append(f"cannot write the cache in {path.parent} ({why(e)}): running without a cache")
    try:
        return make_session(source, device), source, notes
    except BackendUnavailable:
        raise
    except Exception as e:  # noqa: BLE001
        raise BackendUnavailable(f"backend 'onnxruntime': the exported model does not load ({why(e)})") from None


def make_runner(model: nn.Module, device: torch.device, dtype: torch.dtype):
    """Backend factory (engine/backends/): padded N,3,H,W float 0..255 -> stylized float32 0..255."""
    if name_of(dtype) not in _RUNS:
        raise BackendUnavailable(f"the onnxruntime backend runs fp32 or fp16, not {dtype}")
    try:
        onnx_export.check_exportable(model)
    except ValueError as e:
        raise BackendUnavailable(f"onnxruntime backend: {e}") from None
    device = torch.device(device)
    session, source, notes = cached_session(model, name_of(dtype), device)
    if device.type == "cuda":
        run = _cuda_runner(session, device)
        run.notes = notes
        return run
    sessions = {(False, True): session}  # (spatial, arena) -> session; others are made on first use
    sources = {False: source}

    def run(x: torch.Tensor, style_weights: torch.Tensor | None = None) -> torch.Tensor:
        feed = {onnx_export.INPUT_NAME: x.detach().to("cpu", torch.float32).contiguous().numpy()}
        spatial = style_weights is not None and style_weights.dim() == 4
        if style_weights is not None:
            name = onnx_export.STYLE_MAP_INPUT if spatial else onnx_export.STYLE_INPUT
            feed[name] = style_weights.detach().to("cpu", torch.float32).contiguous().numpy()
        arena = x.shape[0] * x.shape[-2] * x.shape[-1] <= LEAN_ABOVE_PIXELS
        if (spatial, arena) not in sessions:
            if spatial not in sources:
                sessions[(True, True)], sources[True], more = cached_session(model, name_of(dtype), device, True)
                notes.extend(more)
            if (spatial, arena) not in sessions:
                sessions[(spatial, arena)] = make_session(sources[spatial], device, arena=arena)
        (out,) = sessions[(spatial, arena)].run([onnx_export.OUTPUT_NAME], feed)
        return torch.from_numpy(out)

    run.notes = notes
    run.style_map = int(getattr(model, "styles", 1)) > 1  # per-pixel maps: the spatial graph, made on first use
    return run


def _cuda_runner(session, device: torch.device):
    """Bind torch CUDA memory to the session: the input and a preallocated output, no host round trip."""
    import numpy as np

    def run(x: torch.Tensor, style_weights: torch.Tensor | None = None) -> torch.Tensor:
        x = x.detach().to(device, torch.float32).contiguous()
        y = torch.empty_like(x)  # the contract: stylized has the image's shape
        binding = session.io_binding()
        binding.bind_input(onnx_export.INPUT_NAME, "cuda", device.index or 0, np.float32, tuple(x.shape),
                           x.data_ptr())
        if style_weights is not None:
            w = style_weights.detach().to(device, torch.float32).contiguous()
            binding.bind_input(onnx_export.STYLE_INPUT, "cuda", device.index or 0, np.float32, tuple(w.shape),
                               w.data_ptr())
        binding.bind_output(onnx_export.OUTPUT_NAME, "cuda", device.index or 0, np.float32, tuple(y.shape),
                            y.data_ptr())
        torch.cuda.current_stream(device).synchronize()  # ORT runs on its own stream
        session.run_with_iobinding(binding)
        return y

    return run
