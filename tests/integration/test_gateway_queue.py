"""The gateway's Redis layer on a real Redis: exact job counters under redelivery, bounded streams,
take-over of a dead consumer's entries, and the dead-letter stream."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from gateway.jobs import JobStore, Outcome
from gateway.keys import INGEST, Keys
from gateway.queue import WorkQueue
from tagalong.runtime.errors import NotFound, ResourceExhausted
from tagalong.v1 import gateway_pb2


@pytest.fixture()
async def redis(redis_url: str, redis_prefix: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url)
    yield client
    async for key in client.scan_iter(match=f"{redis_prefix}:*"):
        await client.delete(key)
    await client.aclose()


async def test_counters_are_exact_when_items_are_delivered_twice(redis: aioredis.Redis, redis_prefix: str) -> None:
    jobs = JobStore(redis, Keys(redis_prefix), ttl_seconds=600)
    job_id = await jobs.create("ingest", "ds")
    await jobs.add_total(job_id, 3)
    first = [Outcome("0", True, "a.jpg"), Outcome("1", False, "b.jpg", "INVALID_ARGUMENT: not an image")]
    assert await jobs.record(job_id, first) == 2
    assert await jobs.record(job_id, first) == 0  # the redelivery counts nothing
    job = await jobs.get(job_id)
    assert (job.done, job.failed, job.total, job.state) == (1, 1, 3, gateway_pb2.JOB_STATE_RUNNING)
    await jobs.record(job_id, [Outcome("2", True, "c.jpg")])
    # Not sealed yet: more items may still arrive, so the job has not ended.
    assert (await jobs.get(job_id)).state == gateway_pb2.JOB_STATE_RUNNING
    assert await jobs.seal(job_id) == "PARTIAL"
    job = await jobs.get(job_id)
    assert (job.done, job.failed, job.state) == (2, 1, gateway_pb2.JOB_STATE_PARTIAL)
    assert [(f.item, f.reason) for f in job.failures] == [("b.jpg", "INVALID_ARGUMENT: not an image")]
    assert job.rate > 0 and job.eta_seconds == 0


@pytest.mark.parametrize(
    ("oks", "expected"),
    [
        pytest.param([True, True], gateway_pb2.JOB_STATE_SUCCEEDED, id="all-ok"),
        pytest.param([True, False], gateway_pb2.JOB_STATE_PARTIAL, id="some-failed"),
        pytest.param([False, False], gateway_pb2.JOB_STATE_FAILED, id="all-failed"),
        pytest.param([], gateway_pb2.JOB_STATE_SUCCEEDED, id="empty"),
    ],
)
async def test_end_state(redis: aioredis.Redis, redis_prefix: str, oks: list[bool], expected: int) -> None:
    jobs = JobStore(redis, Keys(redis_prefix), ttl_seconds=600)
    job_id = await jobs.create("ingest", "ds")
    await jobs.add_total(job_id, len(oks))
    await jobs.seal(job_id)
    await jobs.record(job_id, [Outcome(str(i), ok, f"x{i}", "" if ok else "bad") for i, ok in enumerate(oks)])
    assert (await jobs.get(job_id)).state == expected


async def test_unknown_job_is_not_found(redis: aioredis.Redis, redis_prefix: str) -> None:
    with pytest.raises(NotFound):
        await JobStore(redis, Keys(redis_prefix), ttl_seconds=600).get("nope")


async def test_full_stream_is_resource_exhausted(redis: aioredis.Redis, redis_prefix: str) -> None:
    queue = WorkQueue(redis, Keys(redis_prefix), INGEST, max_length=3, max_deliveries=3)
    await queue.ensure_group()
    await queue.add([{"n": i} for i in range(3)])
    with pytest.raises(ResourceExhausted, match="full"):
        await queue.add([{"n": 3}])
    entries = await queue.read("c1", count=1, block_ms=100)
    await queue.ack([entries[0].id])
    assert await queue.length() == 2
    await queue.add([{"n": 3}])  # room again once an entry is done
    assert await queue.length() == 3


async def test_waiting_enqueue_succeeds_when_room_appears(redis: aioredis.Redis, redis_prefix: str) -> None:
    queue = WorkQueue(redis, Keys(redis_prefix), INGEST, max_length=1, max_deliveries=3)
    await queue.ensure_group()
    await queue.add([{"n": 0}])

    async def drain() -> None:
        await asyncio.sleep(0.2)
        [entry] = await queue.read("c1", count=1, block_ms=100)
        await queue.ack([entry.id])

    drainer = asyncio.create_task(drain())
    await queue.add([{"n": 1}], wait_seconds=5)
    await drainer
    assert await queue.length() == 1


async def test_entries_of_a_dead_consumer_are_taken_over(redis: aioredis.Redis, redis_prefix: str) -> None:
    queue = WorkQueue(redis, Keys(redis_prefix), INGEST, max_length=100, max_deliveries=5)
    await queue.ensure_group()
    await queue.add([{"n": i} for i in range(4)])
    taken = await queue.read("dead", count=4, block_ms=100)
    assert len(taken) == 4
    claimed, dead = await queue.claim_stale("alive", min_idle_ms=10_000, count=10)
    assert claimed == [] and dead == []  # not idle long enough yet
    await asyncio.sleep(0.15)
    claimed, dead = await queue.claim_stale("alive", min_idle_ms=100, count=10)
    assert sorted(e.text("n") for e in claimed) == ["0", "1", "2", "3"] and dead == []
    await queue.ack([e.id for e in claimed])
    assert await queue.length() == 0


async def test_dead_letter_after_max_deliveries_keeps_the_reason(redis: aioredis.Redis, redis_prefix: str) -> None:
    queue = WorkQueue(redis, Keys(redis_prefix), INGEST, max_length=100, max_deliveries=2)
    await queue.ensure_group()
    await queue.add([{"job": "j1", "item": "0", "content": b"\x00" * 10}])
    [entry] = await queue.read("w1", count=1, block_ms=100)  # delivery 1
    await queue.note_failure([entry.id], "embedder: deadline exceeded")
    await asyncio.sleep(0.06)
    claimed, dead = await queue.claim_stale("w2", min_idle_ms=50, count=10)  # delivery 2
    assert [e.id for e in claimed] == [entry.id] and dead == []
    await asyncio.sleep(0.06)
    claimed, dead = await queue.claim_stale("w3", min_idle_ms=50, count=10)
    assert claimed == []
    assert [(d.id, d.deliveries, d.reason) for d in dead] == [(entry.id, 2, "embedder: deadline exceeded")]
    [letter] = await queue.dead_letters()
    assert letter[b"reason"] == b"embedder: deadline exceeded" and letter[b"job"] == b"j1"
    assert b"content" not in letter  # image bytes are not copied into the dead-letter stream
    assert await queue.length() == 0
