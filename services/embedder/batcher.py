"""A dynamic batcher in plain asyncio: items from many callers coalesced into batches.

A batch runs when it holds `max_batch_size` items or when its first item has waited `max_delay`
seconds. The queue is bounded: when it is full, `submit` raises ResourceExhausted at once. Items whose
deadline passed (or whose caller went away) are dropped before the batch runs. No gRPC here.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from tagalong.runtime.errors import DeadlineExceeded, ResourceExhausted, Unavailable

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

# run(payloads) -> one result per payload, in order; an Exception in the list fails only that item.
RunBatch = Callable[[list[T]], Awaitable[Sequence[R | BaseException]]]


@dataclass
class _Item(Generic[T, R]):
    payload: T
    future: asyncio.Future[R]
    enqueued: float
    deadline: float | None  # loop.time() after which the caller no longer wants the result


@dataclass
class BatcherHooks:
    """Optional observers (metrics); each gets plain numbers."""

    queue_depth: Callable[[int], None] = lambda depth: None
    batch: Callable[[int, float], None] = lambda size, seconds: None
    dropped: Callable[[str, int], None] = lambda reason, count: None


@dataclass
class DynamicBatcher(Generic[T, R]):
    """Coalesces submitted items into batches for `run`; one batch runs at a time."""

    run: RunBatch[T, R]
    max_batch_size: int = 32
    max_delay: float = 0.005
    queue_size: int = 1024
    name: str = "batcher"
    hooks: BatcherHooks = field(default_factory=BatcherHooks)
    _items: collections.deque[_Item[T, R]] = field(default_factory=collections.deque, init=False, repr=False)
    _wakeup: asyncio.Event | None = field(default=None, init=False, repr=False)
    _task: asyncio.Task[None] | None = field(default=None, init=False, repr=False)
    batches_run: int = field(default=0, init=False)
    batch_sizes: list[int] = field(default_factory=list, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.max_batch_size < 1 or self.queue_size < 1 or self.max_delay < 0:
            raise ValueError("max_batch_size and queue_size must be >= 1 and max_delay >= 0")

    # -- lifecycle -----------------------------------------------------------------------------------
    def start(self) -> None:
        if self._task is None:
            self._wakeup = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self._loop(), name=f"{self.name}-loop")

    async def stop(self) -> None:
        """Stop the loop; items still queued fail with UNAVAILABLE."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        while self._items:
            item = self._items.popleft()
            if not item.future.done():
                item.future.set_exception(Unavailable(f"{self.name} is shutting down"))
        self.hooks.queue_depth(0)

    @property
    def depth(self) -> int:
        """Items waiting (not yet in a running batch)."""
        return len(self._items)

    @property
    def free(self) -> int:
        return self.queue_size - len(self._items)

    # -- submitting ----------------------------------------------------------------------------------
    def submit_many(self, payloads: Sequence[T], deadline: float | None = None) -> list[asyncio.Future[R]]:
        """Queue all payloads or none: ResourceExhausted when they do not all fit. Returns one future each."""
        if self._task is None or self._wakeup is None:
            raise Unavailable(f"{self.name} is not running")
        if len(payloads) > self.free:
            self.hooks.dropped("queue_full", len(payloads))
            raise ResourceExhausted(
                f"{self.name} queue is full ({len(self._items)}/{self.queue_size} waiting); retry later"
            )
        loop = asyncio.get_running_loop()
        now = loop.time()
        futures: list[asyncio.Future[R]] = []
        for payload in payloads:
            fut: asyncio.Future[R] = loop.create_future()
            self._items.append(_Item(payload, fut, now, deadline))
            futures.append(fut)
        self.hooks.queue_depth(len(self._items))
        self._wakeup.set()
        return futures

    async def submit(self, payload: T, deadline: float | None = None) -> R:
        """Queue one payload and wait for its result (DeadlineExceeded when its deadline passes first)."""
        (fut,) = self.submit_many([payload], deadline)
        return await fut

    # -- the loop ------------------------------------------------------------------------------------
    async def _next_batch(self) -> list[_Item[T, R]]:
        assert self._wakeup is not None
        loop = asyncio.get_running_loop()
        while True:
            while not self._items:
                self._wakeup.clear()
                await self._wakeup.wait()
            flush_at = self._items[0].enqueued + self.max_delay
            while len(self._items) < self.max_batch_size:
                remaining = flush_at - loop.time()
                if remaining <= 0:
                    break
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), remaining)
                except TimeoutError:
                    break
            batch = self._take_live(loop.time())
            if batch:
                return batch

    def _take_live(self, now: float) -> list[_Item[T, R]]:
        """Pop up to max_batch_size items, dropping the cancelled and the expired on the way."""
        batch: list[_Item[T, R]] = []
        expired = cancelled = 0
        while self._items and len(batch) < self.max_batch_size:
            item = self._items.popleft()
            if item.future.done():
                cancelled += 1
            elif item.deadline is not None and item.deadline <= now:
                expired += 1
                item.future.set_exception(DeadlineExceeded("deadline passed while waiting for a batch"))
            else:
                batch.append(item)
        if expired:
            self.hooks.dropped("deadline", expired)
        if cancelled:
            self.hooks.dropped("cancelled", cancelled)
        self.hooks.queue_depth(len(self._items))
        return batch

    async def _loop(self) -> None:
        while True:
            batch = await self._next_batch()
            started = time.perf_counter()
            try:
                results = await self.run([item.payload for item in batch])
                if len(results) != len(batch):
                    raise RuntimeError(f"{self.name}: run returned {len(results)} results for {len(batch)} items")
            except asyncio.CancelledError:
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(Unavailable(f"{self.name} is shutting down"))
                raise
            except BaseException as err:
                log.exception("%s: batch of %d failed", self.name, len(batch))
                results = [err] * len(batch)
            elapsed = time.perf_counter() - started
            self.batches_run += 1
            self.batch_sizes.append(len(batch))
            if len(self.batch_sizes) > 10_000:
                del self.batch_sizes[:5_000]
            self.hooks.batch(len(batch), elapsed)
            for item, result in zip(batch, results, strict=True):
                if item.future.done():
                    continue
                if isinstance(result, BaseException):
                    item.future.set_exception(result)
                else:
                    item.future.set_result(result)
