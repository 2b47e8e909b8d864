"""Job records in Redis: creation, exact counters on at-least-once delivery, stages, and the end state."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from redis.asyncio import Redis

from gateway.keys import Keys
from gateway.progress import job_message
from tagalong.runtime.errors import NotFound
from tagalong.v1 import common_pb2, gateway_pb2

FAILURE_SAMPLE = 100

# Sets the end state once the job is sealed (every item queued) and every item is counted.
_FINISH = """
local job = KEYS[1]
local state = redis.call('HGET', job, 'state')
if state == 'SUCCEEDED' or state == 'PARTIAL' or state == 'FAILED' then return state end
if redis.call('HGET', job, 'sealed') ~= '1' then return state end
local done = tonumber(redis.call('HGET', job, 'done') or '0')
local failed = tonumber(redis.call('HGET', job, 'failed') or '0')
local total = tonumber(redis.call('HGET', job, 'total') or '0')
if done + failed < total then return state end
local final = 'SUCCEEDED'
if failed > 0 and done > 0 then final = 'PARTIAL' end
if failed > 0 and done == 0 then
  final = 'FAILED'
  redis.call('HSET', job, 'error', 'every item failed (see failures)')
end
redis.call('HSET', job, 'state', final, 'finished_at_ms', ARGV[1], 'updated_at_ms', ARGV[1])
return final
"""

# Counts item outcomes once each: an item already in the seen set (a redelivery) changes nothing.
# ARGV: now_ms, then triples (item key, 'done' | 'failed', failure json or '').
_RECORD = """
local job, seen, failures = KEYS[1], KEYS[2], KEYS[3]
if redis.call('EXISTS', job) == 0 then return 0 end
local now = ARGV[1]
local counted = 0
for i = 2, #ARGV - 1, 3 do
  if redis.call('SADD', seen, ARGV[i]) == 1 then
    counted = counted + 1
    redis.call('HINCRBY', job, ARGV[i + 1], 1)
    if ARGV[i + 2] ~= '' then
      redis.call('LPUSH', failures, ARGV[i + 2])
      redis.call('LTRIM', failures, 0, tonumber(ARGV[#ARGV]) - 1)
    end
  end
end
if redis.call('HGET', job, 'state') == 'QUEUED' then redis.call('HSET', job, 'state', 'RUNNING') end
redis.call('HSETNX', job, 'started_at_ms', now)
redis.call('HSET', job, 'updated_at_ms', now)
redis.call('EXPIRE', seen, redis.call('TTL', job))
redis.call('EXPIRE', failures, redis.call('TTL', job))
return counted
"""


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(frozen=True)
class Outcome:
    """What happened to one item of a job."""

    item_key: str
    ok: bool
    item: str = ""
    reason: str = ""


class JobStore:
    """Reads and writes job records; every method is safe to repeat."""

    def __init__(self, redis: Redis, keys: Keys, ttl_seconds: int) -> None:
        self._r = redis
        self._keys = keys
        self._ttl = ttl_seconds
        self._finish = redis.register_script(_FINISH)
        self._record = redis.register_script(_RECORD)

    async def create(self, kind: str, dataset: str, **extra: str | int) -> str:
        job_id = uuid.uuid4().hex
        key = self._keys.job(job_id)
        now = now_ms()
        fields: dict[str, str | int] = {
            "id": job_id, "kind": kind, "dataset": dataset, "state": "QUEUED", "total": 0, "done": 0,
            "failed": 0, "sealed": 0, "created_at_ms": now, "updated_at_ms": now, **extra,
        }
        async with self._r.pipeline(transaction=True) as pipe:
            pipe.hset(key, mapping=fields)
            pipe.expire(key, self._ttl)
            await pipe.execute()
        return job_id

    async def add_total(self, job_id: str, n: int) -> None:
        await self._r.hincrby(self._keys.job(job_id), "total", n)

    async def seal(self, job_id: str) -> str:
        """Every item is queued: from now on the job ends when its counters reach the total."""
        await self._r.hset(self._keys.job(job_id), mapping={"sealed": 1, "updated_at_ms": now_ms()})
        return await self.finish_if_complete(job_id)

    async def finish_if_complete(self, job_id: str) -> str:
        state = await self._finish(keys=[self._keys.job(job_id)], args=[now_ms()])
        return state.decode() if isinstance(state, bytes) else str(state or "")

    async def record(self, job_id: str, outcomes: Sequence[Outcome]) -> int:
        """Count outcomes (each item once, however often it is delivered); returns how many were new."""
        if not outcomes:
            return 0
        args: list[str | int] = [now_ms()]
        for o in outcomes:
            failure = "" if o.ok else json.dumps({"item": o.item, "reason": o.reason})
            args.extend((o.item_key, "done" if o.ok else "failed", failure))
        args.append(FAILURE_SAMPLE)
        keys = [self._keys.job(job_id), self._keys.job_seen(job_id), self._keys.job_failures(job_id)]
        counted = await self._record(keys=keys, args=args)
        await self.finish_if_complete(job_id)
        return int(counted)

    async def add_duplicates(self, job_id: str, n: int) -> None:
        if n:
            await self._r.hincrby(self._keys.job(job_id), "duplicates_found", n)

    async def update(self, job_id: str, **fields: str | int | bytes) -> None:
        key = self._keys.job(job_id)
        if await self._r.exists(key):
            await self._r.hset(key, mapping={**fields, "updated_at_ms": now_ms()})

    async def start(self, job_id: str) -> None:
        key = self._keys.job(job_id)
        now = now_ms()
        await self._r.hsetnx(key, "started_at_ms", now)
        await self._r.hset(key, mapping={"state": "RUNNING", "updated_at_ms": now})

    async def fail(self, job_id: str, error: str) -> None:
        """Ends the job without a result (no-op when it already ended)."""
        key = self._keys.job(job_id)
        state = await self._r.hget(key, "state")
        if state is None or state.decode() in ("SUCCEEDED", "PARTIAL", "FAILED"):
            return
        now = now_ms()
        fields = {"state": "FAILED", "error": error, "finished_at_ms": now, "updated_at_ms": now}
        await self._r.hset(key, mapping=fields)

    async def succeed_round(self, job_id: str, summary: common_pb2.RoundSummary) -> None:
        now = now_ms()
        await self._r.hset(
            self._keys.job(job_id),
            mapping={
                "state": "SUCCEEDED", "stage": "done", "done": 100, "total": 100, "sealed": 1,
                "round_summary": summary.SerializeToString(), "finished_at_ms": now, "updated_at_ms": now,
            },
        )

    async def state(self, job_id: str) -> str:
        value = await self._r.hget(self._keys.job(job_id), "state")
        return value.decode() if value else ""

    async def get(self, job_id: str) -> gateway_pb2.Job:
        if not job_id:
            raise NotFound("job_id is empty")
        async with self._r.pipeline(transaction=False) as pipe:
            pipe.hgetall(self._keys.job(job_id))
            pipe.lrange(self._keys.job_failures(job_id), 0, FAILURE_SAMPLE - 1)
            fields, failures = await pipe.execute()
        if not fields:
            raise NotFound(f"no job {job_id!r} (unknown or expired)")
        return job_message(fields, failures, now_ms())
