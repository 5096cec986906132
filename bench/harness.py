"""The benchmark matrix: backend x precision x size x batch, timed through the public Stylizer.

What one row measures: `Stylizer.__call__` on a float32 N,3,H,W tensor already on the device, i.e. the
padding, the generator, the crop and the clamp: what a caller of `instyle.load(...)(x)` gets.
- Building the Stylizer (export, conversion, engine build, or loading them from the cache) is `setup_s`;
  the first call at each new shape is `first_call_s` (where torch.compile, autotuning, CUDA-graph capture
  and OpenVINO's per-shape kernel compilation happen); all `warmup` calls at that shape, the first
  included, are `warmup_s`. None of them is in the steady-state figures.
- Steady state: `iters` calls, each timed on its own: CUDA events around the call on GPU (the stream is
  synchronized after the last), time.perf_counter on CPU. Median, p10 and p90 of those (instyle/timing.py).
- Memory: on CUDA, torch.cuda.max_memory_allocated over warm-up and timed calls (the PyTorch allocator
  only: memory that onnxruntime/TensorRT allocate themselves is not in it, so those rows say null). On
  CPU there is no per-row peak for torch that is right, so the row carries the process's peak resident
  set so far (ru_maxrss): a high-water mark of the whole run up to that row, labelled so in `mem_kind`.
"""
from __future__ import annotations

import copy
import resource
from dataclasses import dataclass, field

import torch

from instyle import timing
from instyle.engine import BackendUnavailable, Stylizer
from instyle.engine.backends import TABLE
from instyle.engine.padding import padded_size
from instyle.metrics import psnr_db
from instyle.precision import DTYPES

from . import flops as _flops
from .devices import peak_tflops_for

ROW_KEYS = ("backend", "precision", "batch", "height", "width", "median_ms", "p10_ms", "p90_ms",
            "images_per_s", "mpx_per_s", "peak_mem_mb", "tflops", "pct_peak", "bound_ms", "skipped",
            "setup_s", "first_call_s", "warmup_s", "iters", "gflop", "mem_kind", "psnr_vs_eager_db", "tiled")


@dataclass
class Matrix:
    backends: list[str]
    precisions: list[str]
    sizes: list[tuple[int, int]]  # (height, width)
    batches: list[int]
    iters: int = 20
    warmup: int = 3
    tile: str | int = "off"  # the Stylizer's tile option: "off" times whole images; rows record what ran
    per_backend: dict[str, list[str]] = field(default_factory=dict)  # backend -> its precisions, overriding
    image: torch.Tensor | None = None  # 3,H,W float 0..255: inputs are this photo resized (else uniform noise)
    options: dict[str, dict] = field(default_factory=dict)  # backend -> its own options (Stylizer(options=))

    def precisions_for(self, backend: str) -> list[str]:
        return self.per_backend.get(backend, self.precisions)

    def cells(self):
        for backend in self.backends:
            for precision in self.precisions_for(backend):
                for height, width in self.sizes:
                    for batch in self.batches:
                        yield backend, precision, batch, height, width

    def __len__(self) -> int:
        return sum(1 for _ in self.cells())


@dataclass
class Result:
    rows: list[dict] = field(default_factory=list)
    interrupted: bool = False


def empty_row(backend: str, precision: str, batch: int, height: int, width: int, skipped: str | None) -> dict:
    row = dict.fromkeys(ROW_KEYS)
    row.update(backend=backend, precision=precision, batch=batch, height=height, width=width, skipped=skipped)
    return row


def _maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def make_input(batch: int, height: int, width: int, image: torch.Tensor | None = None) -> torch.Tensor:
    """N,3,H,W float 0..255 on the CPU: `image` resized to H,W (antialiased bilinear), else seeded noise."""
    if image is None:
        gen = torch.Generator().manual_seed(0)
        return torch.rand(batch, 3, height, width, generator=gen) * 255
    x = torch.nn.functional.interpolate(image[None].float(), size=(height, width), mode="bilinear",
                                        antialias=True, align_corners=False)
    return x.clamp_(0, 255).expand(batch, -1, -1, -1).contiguous()


def measure(stylizer: Stylizer, batch: int, height: int, width: int, *, iters: int, warmup: int,
            device: torch.device, conv_flops_per_px: float, weight_count: int, device_info: dict,
            image: torch.Tensor | None = None, outputs: dict | None = None) -> dict:
    """One row: warm-up, timed calls, derived rates and the lower bound. With `outputs`, the first call's
    output is stored there under "y"."""
    x = make_input(batch, height, width, image).to(device)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    # at least one call: the first call at a new shape is never in the steady state
    y, first_call_s = timing.wall(stylizer, x, device=device)
    if outputs is not None:
        outputs["y"] = y.cpu()
    del y
    warmup_s = first_call_s + timing.wall(stylizer, x, device=device, calls=warmup - 1)[1]
    stats = timing.summary(timing.time_calls(stylizer, x, n=iters, device=device))
    median = stats["median_ms"]

    m = stylizer.stride_multiple
    ph, pw = padded_size(height, m, stylizer.min_size), padded_size(width, m, stylizer.min_size)
    conv_flops = conv_flops_per_px * batch * ph * pw  # the generator runs on the padded tensor
    # the least traffic any implementation needs: read the float32 input, write the float32 output (the
    # Stylizer's contract) and read the weights once at the run's precision; activations never leave chip
    min_bytes = 2 * batch * 3 * height * width * 4 + weight_count * DTYPES[stylizer.precision].itemsize
    peak = peak_tflops_for(device_info.get("peak_tflops"), stylizer.precision)
    tflops = conv_flops / (median / 1e3) / 1e12
    if device.type == "cuda":
        mem = torch.cuda.max_memory_allocated(device) / 2**20 if TABLE[stylizer.backend].torch_memory else None
        mem_kind = "cuda_torch_allocator_peak" if mem is not None else None
    else:
        mem, mem_kind = _maxrss_mb(), "cpu_process_peak_rss_so_far"
    return {
        **stats,
        "images_per_s": batch / (median / 1e3),
        "mpx_per_s": batch * height * width / 1e6 / (median / 1e3),
        "peak_mem_mb": mem,
        "mem_kind": mem_kind,
        "tflops": tflops,
        "pct_peak": 100 * tflops / peak if peak else None,
        "bound_ms": _flops.bound_ms(conv_flops, min_bytes, peak, device_info.get("peak_gbps")),
        "first_call_s": first_call_s,
        "warmup_s": warmup_s,
        "iters": iters,
        "gflop": conv_flops / 1e9,
        "tiled": stylizer.last_tile,
    }


def _reason(e: BaseException) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    if isinstance(e, torch.cuda.OutOfMemoryError):
        return "out of memory"
    return text[:300] if isinstance(e, BackendUnavailable) else f"failed: {type(e).__name__}: {text[:280]}"


def run(model: torch.nn.Module, matrix: Matrix, device: torch.device, device_info: dict, *,
        progress: bool | None = None) -> Result:
    """Measure every cell of `matrix`; unavailable or failing cells become rows with `skipped` set.

    Ctrl-C stops the run: the rows measured so far are kept and the rest are marked "interrupted".
    """
    from tqdm import tqdm

    counted = _flops.count(model)
    weight_count = sum(p.numel() for p in model.parameters())
    result = Result()
    bar = tqdm(total=len(matrix), desc="bench", unit="cfg", disable=True if progress is False else None)
    done: set[tuple] = set()
    refs: dict[tuple, torch.Tensor] = {}  # (batch, height, width) -> eager fp32 output, for psnr_vs_eager_db
    try:
        for backend in matrix.backends:
            for precision in matrix.precisions_for(backend):
                _run_pair(model, backend, precision, matrix, device, device_info, counted["conv"],
                          weight_count, result, done, bar, refs)
    except KeyboardInterrupt:
        result.interrupted = True
        for cell in matrix.cells():
            if cell not in done:
                result.rows.append(empty_row(*cell, skipped="interrupted"))
    finally:
        bar.close()
    order = {cell: i for i, cell in enumerate(matrix.cells())}
    result.rows.sort(key=lambda r: order[(r["backend"], r["precision"], r["batch"], r["height"], r["width"])])
    return result


def _run_pair(model, backend, precision, matrix, device, device_info, conv_per_px, weight_count,
              result, done, bar, refs) -> None:
    cells = [c for c in matrix.cells() if c[:2] == (backend, precision)]

    def finish(cell, row):
        result.rows.append(row)
        done.add(cell)
        bar.set_postfix_str(f"{backend}/{precision} {cell[2]}x{cell[3]}x{cell[4]}")
        bar.update()

    try:
        # a copy per pair: the Stylizer casts its model in place and some backends swap its modules
        stylizer, setup_s = timing.wall(lambda: Stylizer(copy.deepcopy(model), backend=backend,
                                                         precision=precision, device=device, tile=matrix.tile,
                                                         options=matrix.options.get(backend)),
                                        device=device)
    except Exception as e:  # noqa: BLE001 -- any backend failure (Triton's OutOfResources too) is a row
        for cell in cells:
            finish(cell, empty_row(*cell, skipped=_reason(e)))
        return
    if stylizer.precision != precision:  # e.g. openvino bf16 on a CPU without BF16 runs fp32: not this row
        reason = f"runs {stylizer.precision} here" + (f" ({'; '.join(stylizer.notes)})" if stylizer.notes else "")
        for cell in cells:
            finish(cell, empty_row(*cell, skipped=reason))
        return
    for cell in cells:
        row = empty_row(*cell, skipped=None)
        _, _, batch, height, width = cell
        try:
            outputs: dict = {}
            row.update(measure(stylizer, batch, height, width, iters=matrix.iters, warmup=matrix.warmup,
                               device=device, conv_flops_per_px=conv_per_px, weight_count=weight_count,
                               device_info=device_info, image=matrix.image, outputs=outputs))
            key = (batch, height, width)
            if (backend, precision) == ("eager", "fp32"):
                refs[key] = outputs["y"]
            elif key in refs:
                row["psnr_vs_eager_db"] = psnr_db(outputs["y"], refs[key])
            row["setup_s"] = setup_s
        except Exception as e:  # noqa: BLE001 -- a failing cell is a row, the matrix goes on
            row = empty_row(*cell, skipped=_reason(e))
            if device.type == "cuda":
                torch.cuda.empty_cache()
        finish(cell, row)
    del stylizer
