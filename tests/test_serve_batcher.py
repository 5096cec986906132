"""The serve batcher on its own (no HTTP): a failing batch fails only the request that fails alone, and a request
whose wait is cancelled leaves the queue at once (its slot free again) and is never stylized."""
from __future__ import annotations

import asyncio
import contextlib
import threading

import pytest
import torch

from instyle.serve.batcher import Batcher, Key, QueueFull

KEY = Key(2, 2, 1.0, False, 1.0)
POISON = -1.0


class Recorder:
    """run_batch: doubles each input, fails a whole batch holding the poison value; records what it was given,
    and with `hold` cleared waits (in the worker thread) until it is set."""

    def __init__(self):
        self.calls: list[list[float]] = []
        self.hold = threading.Event()
        self.hold.set()

    def __call__(self, key, xs, weights):
        self.calls.append([float(x.flatten()[0]) for x in xs])
        assert self.hold.wait(30)
        if any(float(x.flatten()[0]) == POISON for x in xs):
            raise RuntimeError("poisoned batch")
        return [2 * x[0] for x in xs]


@contextlib.asynccontextmanager
async def _running(run: Recorder, **kwargs):
    batcher = Batcher(run, **kwargs)
    await batcher.start()
    try:
        yield batcher
    finally:
        run.hold.set()
        await batcher.stop()


def _x(value: float):
    return torch.full((1, 3, 2, 2), value)


def test_a_failing_batch_fails_only_the_request_that_fails_alone():
    run = Recorder()

    async def scenario():
        async with _running(run, max_batch=4, max_wait_s=30, queue_size=8) as batcher:
            values = [1.0, POISON, 3.0, 4.0]
            return values, await asyncio.gather(*(batcher.submit(_x(v), KEY) for v in values),
                                                return_exceptions=True)

    values, answers = asyncio.run(scenario())
    assert run.calls[0] == values  # one batch of four first
    for value, answer in zip(values, answers):
        if value == POISON:
            assert isinstance(answer, RuntimeError)
        else:
            assert torch.equal(answer, 2 * _x(value)[0])  # what the same input gives alone


def test_a_cancelled_request_leaves_the_queue_and_is_never_stylized():
    run = Recorder()

    async def scenario():
        async with _running(run, max_batch=1, max_wait_s=0, queue_size=2) as batcher:
            run.hold.clear()
            first = asyncio.ensure_future(batcher.submit(_x(1.0), KEY))
            while not run.calls:  # the first one is in the worker
                await asyncio.sleep(0.01)
            second = asyncio.ensure_future(batcher.submit(torch.full((1, 3, 4, 6), 2.0), Key(4, 6, 1.0, False, 1.0)))
            gone = asyncio.ensure_future(batcher.submit(_x(5.0), KEY))  # behind one of another size
            await asyncio.sleep(0)
            assert batcher.depth == 3
            with pytest.raises(QueueFull):
                await batcher.submit(_x(9.0), KEY)
            gone.cancel()
            assert (await asyncio.gather(gone, return_exceptions=True))[0].__class__ is asyncio.CancelledError
            assert batcher.depth == 2  # out of the queue at once, not when the worker comes to it
            third = asyncio.ensure_future(batcher.submit(_x(3.0), KEY))  # its slot is free again
            await asyncio.sleep(0)
            run.hold.set()
            return await first, await second, await third

    first, second, third = asyncio.run(scenario())
    assert run.calls == [[1.0], [2.0], [3.0]]
    assert torch.equal(first, 2 * _x(1.0)[0]) and torch.equal(third, 2 * _x(3.0)[0])
    assert torch.equal(second, torch.full((3, 4, 6), 4.0))
