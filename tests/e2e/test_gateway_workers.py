"""A worker killed with SIGKILL mid-job: its pending entries are taken over and the job still completes,
with every image stored exactly once."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time

import redis.asyncio as aioredis
from grpc import aio

from gateway.keys import GROUP, Keys
from tagalong.sdk import AsyncClient
from tagalong.v1 import gateway_pb2, labelstore_pb2, labelstore_pb2_grpc
from tests.e2e.conftest import Stack


async def _pending_of(client: aioredis.Redis, stream: str, pid: int) -> int:
    consumers = await client.xinfo_consumers(stream, GROUP)
    return sum(int(c["pending"]) for c in consumers if f"-{pid}-" in c["name"].decode())


async def test_job_completes_after_a_worker_is_killed(stack: Stack) -> None:
    victim, survivor = stack.workers.start(2)
    files = sorted(stack.images.rglob("*.jpg"))
    redis = aioredis.Redis.from_url(stack.settings.redis_url)
    stream = Keys(stack.settings.redis_prefix).stream("ingest")
    async with AsyncClient(stack.address) as client:
        await client.create_dataset("killtest")
        reply = await client.ingest("killtest", files)
        assert reply.queued == len(files)
        # Kill the victim while it holds entries it has read but not acknowledged: frozen first (SIGSTOP)
        # so that what it holds cannot change between the look and the kill.
        deadline = time.monotonic() + 60
        left_pending = 0
        while not left_pending:
            assert time.monotonic() < deadline, "the victim never took any work"
            assert victim.poll() is None, stack.workers.logs()
            await asyncio.sleep(0.01)
            os.kill(victim.pid, signal.SIGSTOP)
            left_pending = await _pending_of(redis, stream, victim.pid)
            if not left_pending:
                os.kill(victim.pid, signal.SIGCONT)
        os.kill(victim.pid, signal.SIGKILL)
        victim.wait(timeout=10)
        job = await client.wait(reply.job_id, timeout=180)
        assert survivor.poll() is None, stack.workers.logs()
        assert job.state == gateway_pb2.JOB_STATE_SUCCEEDED, (job, stack.workers.logs())
        assert (job.done, job.failed, job.total) == (len(files), 0, len(files))
        assert left_pending > 0 and await _pending_of(redis, stream, victim.pid) == 0  # taken over
        assert await redis.xlen(stream) == 0  # everything acknowledged
        assert await redis.xlen(Keys(stack.settings.redis_prefix).dead_letter) == 0
        # Every image stored exactly once.
        async with aio.insecure_channel(stack.labelstore_addr) as channel:
            count = await labelstore_pb2_grpc.LabelStoreStub(channel).Count(
                labelstore_pb2.CountRequest(dataset="killtest"), timeout=30)
        assert count.count == len(files)
        rows = [json.loads(r) for r in (await client.export("killtest", "jsonl")).decode().splitlines() if r]
        assert sorted(r["uri"] for r in rows) == sorted(str(f) for f in files)
    await redis.aclose()
