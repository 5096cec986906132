"""How the benchmarks time things: one clock per device and one summary of the samples (a leaf module:
torch and numpy only, so bench/ and train/ may both use it).

- `time_calls`: milliseconds of each of n calls. On a CUDA device, CUDA events around every call, recorded
  back to back and the stream synchronized after the last (what the GPU spends per call, launch gaps it can
  hide not counted); on the CPU, time.perf_counter around every call.
- `wall`: seconds of a stretch of work by time.perf_counter, the device synchronized before and after so
  that no queued work leaks in or out: first calls (compilation, autotuning, graph capture), warm-ups,
  set-up, a throughput window of many steps.
- `summary`: median, p10 and p90 of per-call milliseconds under the keys the result rows use; percentiles
  by numpy's default definition (linear interpolation between the closest ranks).
"""
from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import numpy as np
import torch


def sync(device: torch.device | str | None) -> None:
    """Wait for the work queued on `device` (a no-op off CUDA and for None)."""
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def wall(fn: Callable, *args, device: torch.device | str | None = None, calls: int = 1):
    """`calls` back-to-back calls of fn(*args): (the last call's output, or None for none, and their seconds
    by the wall clock, `device` synchronized before and after)."""
    out = None
    sync(device)
    t0 = time.perf_counter()
    for _ in range(calls):
        out = fn(*args)
    sync(device)
    return out, time.perf_counter() - t0


def time_calls(fn: Callable, *args, n: int, device: torch.device | str) -> list[float]:
    """Milliseconds of each of n calls of fn(*args) (outputs are dropped as they come)."""
    if torch.device(device).type == "cuda":
        pairs = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(n)]
        sync(device)
        for start, end in pairs:
            start.record()
            fn(*args)
            end.record()
        sync(device)
        return [s.elapsed_time(e) for s, e in pairs]
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn(*args)
        times.append((time.perf_counter() - t0) * 1e3)
    return times


def summary(ms: Sequence[float]) -> dict[str, float]:
    """{"median_ms", "p10_ms", "p90_ms"} of per-call milliseconds (at least one)."""
    a = np.asarray(ms, dtype=np.float64)
    return {"median_ms": float(np.median(a)), "p10_ms": float(np.percentile(a, 10)),
            "p90_ms": float(np.percentile(a, 90))}
