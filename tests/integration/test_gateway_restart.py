"""The gateway holds no state: a WatchJob stream cut by a gateway restart is resumed by the SDK on the
new process, and the job read there is the same (all of it lives in Redis)."""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis

from gateway.jobs import JobStore, Outcome
from gateway.keys import Keys
from gateway.servicer import GatewayService
from tagalong.devstack.milvus_server import free_port
from tagalong.runtime.server import start_server, stop_server
from tagalong.sdk import AsyncClient
from tagalong.v1 import gateway_pb2
from tests.fixtures.gateway import clean_redis, gateway_settings


async def test_watch_resumes_across_a_gateway_restart(redis_url: str, redis_prefix: str) -> None:
    settings = gateway_settings(redis_url, redis_prefix, port=free_port(), grace_seconds=0.0)
    client = aioredis.Redis.from_url(redis_url)
    jobs = JobStore(client, Keys(redis_prefix), ttl_seconds=60)
    job_id = await jobs.create("ingest", "d")
    await jobs.add_total(job_id, 2)
    await jobs.seal(job_id)
    first = await start_server(GatewayService(settings), settings)
    seen: list[gateway_pb2.Job] = []
    try:
        async with AsyncClient(f"127.0.0.1:{settings.port}") as sdk:

            async def follow() -> None:
                async for job in sdk.watch(job_id, interval=0.1, timeout=60):
                    seen.append(job)

            watcher = asyncio.create_task(follow())
            await jobs.record(job_id, [Outcome("0", True, "a")])
            while not any(j.done == 1 for j in seen):
                await asyncio.sleep(0.05)
            await stop_server(first, grace=0)  # the stream is cut here
            await jobs.record(job_id, [Outcome("1", True, "b")])
            second = await start_server(GatewayService(settings), settings)
            try:
                await asyncio.wait_for(watcher, timeout=30)
            finally:
                await stop_server(second, grace=0)
    finally:
        await client.aclose()
        clean_redis(redis_url, redis_prefix)
    assert seen[-1].state == gateway_pb2.JOB_STATE_SUCCEEDED and seen[-1].done == 2
