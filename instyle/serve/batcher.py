"""Micro-batching: requests that arrive within `max_wait_s` of each other and share a size and the scalar controls
are stylized as one batch of up to `max_batch`, each with its own style mix (`style_weights` rows).

One asyncio task collects; one worker thread runs the stylizer, so the event loop never waits on it and the
Stylizer (not thread-safe) is only ever called from that thread. The queue is bounded: `submit` raises QueueFull
at once when it is full, so overload is answered (503) instead of piling up. While a batch runs, new requests
wait in the queue and form the next batch: under load batches fill without waiting for `max_wait_s`.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
from collections import defaultdict
from dataclasses import dataclass, field


class QueueFull(Exception):
    """The batcher's queue is full: the caller should retry later."""


@dataclass(frozen=True)
class Key:
    """What a batch's samples must share: the input size and the controls the Stylizer takes as scalars."""

    height: int
    width: int
    strength: float
    preserve_color: bool
    style_scale: float


@dataclass
class _Item:
    x: object  # 1,3,H,W float tensor
    key: Key
    weights: object  # length-S tensor (a multi-style model), else None
    future: asyncio.Future = field(repr=False)


class Batcher:
    """`run_batch(key, xs, weights) -> list of outputs` is called in the worker thread, one group at a time."""

    def __init__(self, run_batch, *, max_batch: int, max_wait_s: float, queue_size: int, on_batch=None):
        self._run_batch = run_batch
        self.max_batch, self.max_wait_s, self.queue_size = max_batch, max_wait_s, queue_size
        self._on_batch = on_batch or (lambda size: None)
        self._queue: asyncio.Queue | None = None
        self._task: asyncio.Task | None = None
        self._worker = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="instyle-stylizer")
        self.collecting = 0  # taken off the queue, not yet stylized

    @property
    def depth(self) -> int:
        """Requests waiting: in the queue or in the batch being collected or run."""
        return (self._queue.qsize() if self._queue else 0) + self.collecting

    async def start(self) -> None:
        self._queue = asyncio.Queue(self.queue_size)
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self._worker.shutdown(wait=True)

    async def call(self, fn, *args):
        """Run fn(*args) in the worker thread (between batches): warm-up, thumbnails."""
        return await asyncio.get_running_loop().run_in_executor(self._worker, fn, *args)

    async def submit(self, x, key: Key, weights=None):
        """The stylized 3,H,W tensor for x; QueueFull when the queue is full. Cancelling the wait (a timeout)
        drops the request if its batch has not started yet."""
        future = asyncio.get_running_loop().create_future()
        try:
            self._queue.put_nowait(_Item(x, key, weights, future))
        except asyncio.QueueFull:
            raise QueueFull() from None
        return await future

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            self.collecting = 1
            deadline = loop.time() + self.max_wait_s
            while len(batch) < self.max_batch:
                if self._queue.empty():
                    remaining = deadline - loop.time()
                    if remaining <= 0:
                        break
                    try:
                        batch.append(await asyncio.wait_for(self._queue.get(), remaining))
                    except asyncio.TimeoutError:
                        break
                else:
                    batch.append(self._queue.get_nowait())
                self.collecting = len(batch)
            groups: dict[Key, list[_Item]] = defaultdict(list)
            for item in batch:
                if not item.future.done():  # a request that timed out while waiting is not stylized
                    groups[item.key].append(item)
            for key, items in groups.items():
                await self._run_group(loop, key, items)
            self.collecting = 0

    async def _run_group(self, loop, key: Key, items: list[_Item]) -> None:
        self._on_batch(len(items))
        try:
            outputs = await loop.run_in_executor(self._worker, self._run_batch, key, [i.x for i in items],
                                                 [i.weights for i in items])
        except Exception as e:  # the stylizer failed: every request of the batch gets the error
            for item in items:
                if not item.future.done():
                    item.future.set_exception(e)
            return
        for item, y in zip(items, outputs):
            if not item.future.done():
                item.future.set_result(y)
