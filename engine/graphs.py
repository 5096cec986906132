"""CUDA graphs per input shape, in a bounded LRU cache (the backends table's rows with `graphs`).

A graph replays a whole generator forward with one launch, which removes the per-kernel launch
overhead that dominates small images. Graphs are shape-specific, so the cache is keyed by the input's
shape (N, C, H, W), dtype and layout. Policy:
  * warm-up first: the first `warmup_calls` calls of a shape run the function directly (this compiles
    the Triton kernels / inductor code and skips capturing one-off sizes, e.g. a folder of photos of
    all different sizes); the next call captures;
  * capture on a side stream after one more warm-up run there, into static input/output buffers;
    replay copies the input into the static buffer and returns a clone of the static output (the next
    replay overwrites it);
  * at most `capacity` graphs: capturing one more evicts the least recently used (its private memory
    pool is released with it).
`capture` is injectable so the LRU logic is testable without a GPU.
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

import torch

Fn = Callable[[torch.Tensor], torch.Tensor]
GRAPH_CACHE_SIZE = 4  # shapes kept captured per runner by default (backend option cache_size)


def capture_cuda_graph(fn: Fn, x: torch.Tensor) -> Fn:
    static_in = torch.empty_like(x)  # keeps x's memory format (channels_last on CUDA)
    static_in.copy_(x)
    stream = torch.cuda.Stream(device=x.device)
    stream.wait_stream(torch.cuda.current_stream(x.device))
    with torch.cuda.stream(stream):
        fn(static_in)  # allocations and lazy initialization must happen before capture
    torch.cuda.current_stream(x.device).wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = fn(static_in)

    def replay(inp: torch.Tensor) -> torch.Tensor:
        static_in.copy_(inp)
        graph.replay()
        return static_out.clone()

    return replay


def shape_key(x: torch.Tensor) -> tuple:
    return (tuple(x.shape), x.dtype, x.device, x.is_contiguous(memory_format=torch.channels_last))


class GraphCache:
    """fn, with one captured graph per input shape for the `capacity` most recently used shapes."""

    def __init__(self, fn: Fn, capacity: int = GRAPH_CACHE_SIZE, *, warmup_calls: int = 1,
                 capture: Callable[[Fn, torch.Tensor], Fn] = capture_cuda_graph):
        if capacity < 1:
            raise ValueError(f"graph cache capacity must be >= 1, got {capacity}")
        self.fn, self.capacity, self.warmup_calls, self.capture = fn, capacity, warmup_calls, capture
        self._graphs: OrderedDict[tuple, Fn] = OrderedDict()
        self._seen: OrderedDict[tuple, int] = OrderedDict()  # warm-up counts, bounded too
        self.captures = self.evictions = self.replays = 0

    def keys(self) -> list[tuple]:
        """Cached shapes, least recently used first."""
        return list(self._graphs)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        key = shape_key(x)
        replay = self._graphs.get(key)
        if replay is None:
            calls = self._seen.pop(key, 0) + 1
            if calls <= self.warmup_calls:
                self._seen[key] = calls
                while len(self._seen) > 16 * self.capacity:
                    self._seen.popitem(last=False)
                return self.fn(x)
            while len(self._graphs) >= self.capacity:
                self._graphs.popitem(last=False)
                self.evictions += 1
            replay = self._graphs[key] = self.capture(self.fn, x)
            self.captures += 1
        self._graphs.move_to_end(key)
        self.replays += 1
        return replay(x)
