"""Content batches handed to the training step already on the device, the next one's copy in flight.

The DataLoader's workers decode ahead (prefetch_factor batches each, persistent across epochs) into pinned
memory on CUDA (data.make_loader). `DevicePrefetcher` takes batch k+1 from that queue and issues its
host->device copy, uint8->float conversion and layout change before step k is enqueued, on a side stream on
CUDA, so the copy overlaps the step before it and the host never waits for it: the compute stream waits on
the side stream's work instead (`wait_stream`), and `record_stream` keeps the batch's memory from being
reused while the step still reads it. On the CPU it converts in line: there is no copy to hide.

Determinism is the loader's: the batches are the same, in the same order; one batch is taken ahead of the
step, and resume restarts the loader at the trainer's position, not the prefetcher's.
"""
from __future__ import annotations

from collections.abc import Iterator

import torch


class DevicePrefetcher:
    """Iterates `batches` (uint8 B,3,H,W on the host) as float 0..255 on `device` (channels_last if asked)."""

    def __init__(self, batches: Iterator[torch.Tensor], device: torch.device, channels_last: bool = False):
        self.batches, self.device, self.channels_last = batches, device, channels_last
        self.stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        self.ahead = self._load()

    def _convert(self, host: torch.Tensor) -> torch.Tensor:
        x = host.to(self.device, non_blocking=True).float()
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def _load(self) -> torch.Tensor:
        host = next(self.batches)
        if self.stream is None:
            return self._convert(host)
        with torch.cuda.stream(self.stream):
            return self._convert(host)

    def __iter__(self) -> DevicePrefetcher:
        return self

    def __next__(self) -> torch.Tensor:
        x = self.ahead
        if self.stream is not None:
            compute = torch.cuda.current_stream(self.device)
            compute.wait_stream(self.stream)
            x.record_stream(compute)
        self.ahead = self._load()
        return x
