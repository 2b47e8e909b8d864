"""A worker whose embedder is down: entries are retried, then dead-lettered with the reason, and the
job ends FAILED with per-item failures; a batch's heartbeat ends with the batch (real Redis, a real worker
loop, no services)."""

from __future__ import annotations

import asyncio
import contextlib
import io
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
from grpc import aio

from gateway.keys import GROUP, Keys
from gateway.registry import DatasetMeta, Registry
from gateway.settings import GatewaySettings
from gateway.worker import Worker
from tagalong.v1 import gateway_pb2, gateway_pb2_grpc
from tests.fixtures.gateway import clean_redis, gateway_settings, running_gateway

NOWHERE = "127.0.0.1:9"


@pytest.fixture()
async def settings(redis_url: str, redis_prefix: str) -> AsyncIterator[GatewaySettings]:
    s = gateway_settings(redis_url, redis_prefix, embedder_addr=NOWHERE, labelstore_addr=NOWHERE,
                         clusterer_addr=NOWHERE, claim_idle_seconds=0.3, max_deliveries=2,
                         call_deadline_seconds=1.0, worker_block_ms=100)
    client = aioredis.Redis.from_url(redis_url)
    await Registry(client, Keys(redis_prefix)).put_dataset(DatasetMeta("d", "m", 4))
    await client.aclose()
    yield s
    clean_redis(redis_url, redis_prefix)


async def _stopped(worker: Worker, running: asyncio.Task[None], settings: GatewaySettings) -> None:
    """Stops the worker; when it does not stop, fails with where its tasks wait and what is pending."""
    worker.stop()
    done, _ = await asyncio.wait({running}, timeout=10)
    if done:
        running.result()
        return
    stacks = io.StringIO()
    for task in asyncio.all_tasks():
        task.print_stack(file=stacks)
    running.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await running
    client = aioredis.Redis.from_url(settings.redis_url)
    keys = Keys(settings.redis_prefix)
    pending = await client.xpending_range(keys.stream("ingest"), GROUP, min="-", max="+", count=100)
    await client.aclose()
    pytest.fail(f"the worker did not stop within 10 s\npending: {pending}\ntasks:\n{stacks.getvalue()}")


async def test_unreachable_embedder_ends_in_dead_letters(settings: GatewaySettings) -> None:
    worker = Worker(settings, name="w-test")
    running = asyncio.create_task(worker.run())
    try:
        async with running_gateway(settings) as gw, aio.insecure_channel(gw.address) as channel:
            stub = gateway_pb2_grpc.GatewayStub(channel)
            requests = [gateway_pb2.IngestRequest(header=gateway_pb2.IngestHeader(dataset="d"))] + [
                gateway_pb2.IngestRequest(item=gateway_pb2.IngestItem(content=bytes([i]) * 8, name=f"img{i}.jpg"))
                for i in range(3)
            ]
            reply = await stub.Ingest(iter(requests), timeout=10)
            updates = [u.job async for u in stub.WatchJob(
                gateway_pb2.WatchJobRequest(job_id=reply.job_id, interval_seconds=0.1), timeout=60)]
    finally:
        await _stopped(worker, running, settings)
    job = updates[-1]
    assert job.state == gateway_pb2.JOB_STATE_FAILED
    assert (job.done, job.failed, job.total) == (0, 3, 3)
    assert sorted(f.item for f in job.failures) == ["img0.jpg", "img1.jpg", "img2.jpg"]
    assert all("gave up after 2 deliveries" in f.reason and "embedder" in f.reason for f in job.failures)
    client = aioredis.Redis.from_url(settings.redis_url)
    keys = Keys(settings.redis_prefix)
    letters = await client.xrange(keys.dead_letter)
    assert await client.xlen(keys.stream("ingest")) == 0
    await client.aclose()
    assert len(letters) == 3 and all(b"embedder" in fields[b"reason"] for _, fields in letters)


async def test_heartbeat_ends_with_its_batch_even_when_a_cancellation_would_be_swallowed(
    settings: GatewaySettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """redis-py can swallow a cancellation that lands inside a command; the heartbeat must still stop
    re-claiming its entries once the batch is over, or they are never redelivered (a CI hang)."""
    worker = Worker(settings, name="w-beat")
    queue = worker.ingest
    await queue.ensure_group()
    await queue.add([{"job": "j", "item": 0}])
    entries = await queue.read("w-beat-ingest-0", 10, 100)
    real_xclaim = worker.redis.xclaim
    in_claim = asyncio.Event()

    async def swallowing_xclaim(*args: object, **kwargs: object) -> object:
        in_claim.set()
        with contextlib.suppress(asyncio.CancelledError):  # what redis-py sometimes does with a cancellation
            await asyncio.sleep(0.2)
        return await real_xclaim(*args, **kwargs)

    monkeypatch.setattr(worker.redis, "xclaim", swallowing_xclaim)

    async def handler(_queue: object, _entries: object) -> None:
        await in_claim.wait()  # end the batch while the beat is inside a command

    batch = asyncio.create_task(worker._with_heartbeat(queue, "w-beat-ingest-0", entries, handler))
    try:
        done, _ = await asyncio.wait({batch}, timeout=5)  # not wait_for: its cancellation would end the beat
        assert done, "the batch did not end: its heartbeat lives on"
        batch.result()
        await asyncio.sleep(1.0)  # ten heartbeat periods: a beat still alive would have reset the idle time
        pending = await worker.redis.xpending_range(queue.stream, GROUP, min="-", max="+", count=10)
        assert [p["times_delivered"] for p in pending] == [1]
        assert pending[0]["time_since_delivered"] >= 800
    finally:
        batch.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await batch
        await worker.redis.aclose()
