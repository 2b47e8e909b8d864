"""A worker whose embedder is down: entries are retried, then dead-lettered with the reason, and the
job ends FAILED with per-item failures (real Redis, a real worker loop, no services)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
from grpc import aio

from gateway.keys import Keys
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
        worker.stop()
        await asyncio.wait_for(running, timeout=10)
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
