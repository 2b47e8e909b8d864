"""The dynamic batcher on its own: coalescing, max delay, backpressure, deadlines, per-item errors."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

import pytest

from services.embedder.batcher import BatcherHooks, DynamicBatcher
from tagalong.runtime.errors import DeadlineExceeded, InvalidArgument, ResourceExhausted, Unavailable


class Recorder:
    """A batch runner that records each batch and can be held back (to fill the queue)."""

    def __init__(self, delay: float = 0.0) -> None:
        self.batches: list[list[int]] = []
        self.delay = delay
        self.gate: asyncio.Event | None = None

    async def __call__(self, items: list[int]) -> Sequence[int | BaseException]:
        self.batches.append(list(items))
        if self.gate is not None:
            await self.gate.wait()
        if self.delay:
            await asyncio.sleep(self.delay)
        return [InvalidArgument(f"bad item {i}") if i < 0 else i * 10 for i in items]


async def _started(run: Recorder, **kw: object) -> DynamicBatcher[int, int]:
    batcher: DynamicBatcher[int, int] = DynamicBatcher(run, **kw)  # type: ignore[arg-type]
    batcher.start()
    return batcher


async def test_concurrent_callers_are_coalesced_into_full_batches() -> None:
    run = Recorder()
    batcher = await _started(run, max_batch_size=8, max_delay=0.2, queue_size=100)
    results = await asyncio.gather(*(batcher.submit(i) for i in range(32)))
    await batcher.stop()
    assert results == [i * 10 for i in range(32)]
    assert [len(b) for b in run.batches] == [8, 8, 8, 8]
    # Order is kept: first come, first batched.
    assert [i for b in run.batches for i in b] == list(range(32))


async def test_partial_batch_runs_after_max_delay() -> None:
    run = Recorder()
    batcher = await _started(run, max_batch_size=64, max_delay=0.15, queue_size=100)
    started = time.monotonic()
    results = await asyncio.gather(*(batcher.submit(i) for i in range(3)))
    waited = time.monotonic() - started
    await batcher.stop()
    assert results == [0, 10, 20]
    assert run.batches == [[0, 1, 2]]
    # Waited for more callers (about max_delay), but not for a full batch of 64.
    assert 0.1 <= waited < 2.0


async def test_zero_delay_runs_at_once() -> None:
    run = Recorder()
    batcher = await _started(run, max_batch_size=64, max_delay=0.0, queue_size=100)
    started = time.monotonic()
    assert await batcher.submit(7) == 70
    assert time.monotonic() - started < 0.5
    await batcher.stop()


async def test_items_arriving_during_a_batch_form_the_next_one() -> None:
    run = Recorder(delay=0.1)
    batcher = await _started(run, max_batch_size=16, max_delay=0.0, queue_size=100)
    first = asyncio.create_task(batcher.submit(0))
    await asyncio.sleep(0.02)  # batch [0] is running now
    rest = [asyncio.create_task(batcher.submit(i)) for i in range(1, 11)]
    await asyncio.gather(first, *rest)
    await batcher.stop()
    assert run.batches == [[0], list(range(1, 11))]


async def test_full_queue_refuses_at_once_with_resource_exhausted() -> None:
    run = Recorder()
    run.gate = asyncio.Event()
    dropped: list[tuple[str, int]] = []
    hooks = BatcherHooks(dropped=lambda reason, n: dropped.append((reason, n)))
    batcher = await _started(run, max_batch_size=2, max_delay=0.0, queue_size=4, hooks=hooks)
    running = [asyncio.create_task(batcher.submit(i)) for i in range(2)]
    await asyncio.sleep(0.02)  # first batch of 2 is held inside run(); the queue is empty again
    queued = batcher.submit_many([2, 3, 4, 5])
    assert batcher.depth == 4
    started = time.monotonic()
    with pytest.raises(ResourceExhausted):
        await batcher.submit(6)
    with pytest.raises(ResourceExhausted):
        batcher.submit_many([7])
    assert time.monotonic() - started < 0.1
    assert dropped == [("queue_full", 1), ("queue_full", 1)]
    run.gate.set()
    assert await asyncio.gather(*running, *queued) == [0, 10, 20, 30, 40, 50]
    # Room again once the queue drained.
    assert await batcher.submit(8) == 80
    await batcher.stop()


async def test_submit_many_is_all_or_nothing() -> None:
    run = Recorder()
    run.gate = asyncio.Event()
    batcher = await _started(run, max_batch_size=1, max_delay=0.0, queue_size=3)
    first = asyncio.create_task(batcher.submit(0))
    await asyncio.sleep(0.02)
    with pytest.raises(ResourceExhausted):
        batcher.submit_many([1, 2, 3, 4])
    assert batcher.depth == 0
    run.gate.set()
    assert await first == 0
    await batcher.stop()


async def test_expired_items_are_dropped_before_inference() -> None:
    run = Recorder()
    run.gate = asyncio.Event()
    batcher = await _started(run, max_batch_size=4, max_delay=0.0, queue_size=100)
    loop = asyncio.get_running_loop()
    blocker = asyncio.create_task(batcher.submit(0))
    await asyncio.sleep(0.02)  # the batcher is busy with [0]
    short = asyncio.create_task(batcher.submit(1, deadline=loop.time() + 0.05))
    long = asyncio.create_task(batcher.submit(2, deadline=loop.time() + 30))
    await asyncio.sleep(0.1)  # item 1's deadline passes while it waits
    run.gate.set()
    assert await blocker == 0
    with pytest.raises(DeadlineExceeded):
        await short
    assert await long == 20
    await batcher.stop()
    # Item 1 never reached the model.
    assert run.batches == [[0], [2]]


async def test_cancelled_callers_are_not_run() -> None:
    run = Recorder()
    run.gate = asyncio.Event()
    batcher = await _started(run, max_batch_size=4, max_delay=0.0, queue_size=100)
    blocker = asyncio.create_task(batcher.submit(0))
    await asyncio.sleep(0.02)
    gone = asyncio.create_task(batcher.submit(1))
    stays = asyncio.create_task(batcher.submit(2))
    await asyncio.sleep(0.01)
    gone.cancel()
    run.gate.set()
    await asyncio.gather(blocker, stays)
    await batcher.stop()
    assert run.batches == [[0], [2]]


async def test_one_bad_item_fails_only_itself() -> None:
    run = Recorder()
    batcher = await _started(run, max_batch_size=64, max_delay=0.05, queue_size=100)
    items = list(range(64))
    items[17] = -1
    results = await asyncio.gather(*(batcher.submit(i) for i in items), return_exceptions=True)
    await batcher.stop()
    assert isinstance(results[17], InvalidArgument)
    assert [r for i, r in enumerate(results) if i != 17] == [i * 10 for i in items if i != -1]
    assert len(run.batches) == 1


async def test_a_failing_batch_fails_its_callers_and_the_batcher_goes_on() -> None:
    calls = 0

    async def flaky(items: list[int]) -> list[int]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("model crashed")
        return items

    batcher: DynamicBatcher[int, int] = DynamicBatcher(flaky, max_batch_size=4, max_delay=0.0, queue_size=10)
    batcher.start()
    with pytest.raises(RuntimeError):
        await batcher.submit(1)
    assert await batcher.submit(2) == 2
    await batcher.stop()


async def test_stop_fails_waiting_items_with_unavailable() -> None:
    run = Recorder()
    run.gate = asyncio.Event()
    batcher = await _started(run, max_batch_size=1, max_delay=0.0, queue_size=10)
    running = asyncio.create_task(batcher.submit(0))
    await asyncio.sleep(0.02)
    waiting = asyncio.create_task(batcher.submit(1))
    await asyncio.sleep(0.01)
    await batcher.stop()
    for task in (running, waiting):
        with pytest.raises(Unavailable):
            await task
    with pytest.raises(Unavailable):
        await batcher.submit(2)


async def test_hooks_see_batch_sizes_and_queue_depth() -> None:
    sizes: list[int] = []
    depths: list[int] = []
    hooks = BatcherHooks(queue_depth=depths.append, batch=lambda n, s: sizes.append(n))
    batcher = await _started(Recorder(), max_batch_size=5, max_delay=0.05, queue_size=100, hooks=hooks)
    await asyncio.gather(*(batcher.submit(i) for i in range(12)))
    await batcher.stop()
    assert sizes == [5, 5, 2]
    assert max(depths) >= 5 and depths[-1] == 0


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param({"max_batch_size": 0}, id="batch-size-0"),
        pytest.param({"queue_size": 0}, id="queue-size-0"),
        pytest.param({"max_delay": -1.0}, id="negative-delay"),
    ],
)
def test_bad_parameters_are_refused(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        DynamicBatcher(Recorder(), **kwargs)  # type: ignore[arg-type]
