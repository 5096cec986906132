"""Micro-batching: requests that arrive within `max_wait_s` of each other and share a size and the scalar controls
are stylized as one batch of up to `max_batch`, each with its own style mix (`style_weights` rows).

One asyncio task collects; one worker thread runs the stylizer, so the event loop never waits on it and the
Stylizer (not thread-safe) is only ever called from that thread. The queue is bounded: `submit` raises QueueFull
at once when it is full, so overload is answered (503) instead of piling up. While a batch runs, new requests
wait in the queue and form the next batch: under load batches fill without waiting for `max_wait_s`.

A request whose wait is cancelled (its client went away, its timeout passed) leaves the queue at once and is
never stylized. A batch that fails is run again one request at a time, so only a request that fails alone gets
the error: one bad member never fails the others.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
from collections import defaultdict, deque
from dataclasses import dataclass, field


class QueueFull(Exception):
    """The batcher's queue is full: the caller should retry later."""


@dataclass(frozen=True)
class Key:
    """What a batch's samples must share: the input size and the controls the Stylizer takes as scalars. A request
    with per-pixel maps (serve/regions.py) holds them here, equal to no other request's: a batch of its own."""

    height: int
    width: int
    strength: float
    preserve_color: bool
    style_scale: float
    maps: object = None  # serve.regions.Maps, compared by identity


@dataclass(eq=False)  # one request is one item: found and removed by identity, never by its tensors
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
        self._waiting: deque[_Item] = deque()
        self._arrived: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._worker = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="instyle-stylizer")
        self.collecting = 0  # taken off the queue, not yet stylized

    @property
    def depth(self) -> int:
        """Requests waiting: in the queue or in the batch being collected or run."""
        return len(self._waiting) + self.collecting

    async def start(self) -> None:
        self._arrived = asyncio.Event()
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
        """The stylized 3,H,W tensor for x; QueueFull when the queue is full. Cancelling the wait (a timeout, a
        client gone) takes the request out of the queue, or out of the batch being collected: never stylized."""
        if len(self._waiting) >= self.queue_size:
            raise QueueFull()
        item = _Item(x, key, weights, asyncio.get_running_loop().create_future())
        self._waiting.append(item)
        self._arrived.set()
        try:
            return await item.future
        finally:
            if item.future.cancelled():
                with contextlib.suppress(ValueError):  # already taken into a batch, which skips it
                    self._waiting.remove(item)

    async def _arrival(self, timeout: float | None) -> bool:
        """Wait until the queue holds a request; False when `timeout` passes first."""
        while not self._waiting:
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), timeout)
            except asyncio.TimeoutError:
                return False
        return True

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._arrival(None)
            batch = [self._waiting.popleft()]
            self.collecting = 1
            deadline = loop.time() + self.max_wait_s
            while len(batch) < self.max_batch:
                if not self._waiting and not await self._arrival(max(deadline - loop.time(), 0)):
                    break
                batch.append(self._waiting.popleft())
                self.collecting = len(batch)
            groups: dict[Key, list[_Item]] = defaultdict(list)
            for item in batch:
                groups[item.key].append(item)
            for key, items in groups.items():
                await self._run_group(loop, key, items)
            self.collecting = 0

    async def _run_group(self, loop, key: Key, items: list[_Item]) -> None:
        items = [i for i in items if not i.future.done()]  # a request that has gone is not stylized
        if not items:
            return
        try:
            outputs = await loop.run_in_executor(self._worker, self._run_batch, key, [i.x for i in items],
                                                 [i.weights for i in items])
        except Exception as e:  # noqa: BLE001 -- the stylizer failed: whose request was it?
            if len(items) == 1:
                if not items[0].future.done():
                    items[0].future.set_exception(e)
                return
            for item in items:  # one at a time: only a request that fails alone gets an error
                await self._run_group(loop, key, [item])
            return
        self._on_batch(len(items))
        for item, y in zip(items, outputs):
            if not item.future.done():
                item.future.set_result(y)
