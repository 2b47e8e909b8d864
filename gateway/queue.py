"""Redis Streams work queues: bounded enqueue, consumer-group reads, take-over of a dead worker's
entries (XAUTOCLAIM), acknowledgement, and a dead-letter stream after too many deliveries."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from gateway.keys import GROUP, Keys
from tagalong.runtime.errors import ResourceExhausted

Fields = dict[bytes, bytes]


@dataclass(frozen=True)
class Entry:
    """One stream entry handed to a worker."""

    id: str
    fields: Fields

    def text(self, name: str, default: str = "") -> str:
        value = self.fields.get(name.encode())
        return value.decode() if value is not None else default


@dataclass(frozen=True)
class DeadLetter:
    """An entry moved to the dead-letter stream."""

    id: str
    fields: Fields
    deliveries: int
    reason: str


class WorkQueue:
    """One stream (ingest or round) with its consumer group."""

    def __init__(self, redis: Redis, keys: Keys, kind: str, max_length: int, max_deliveries: int) -> None:
        self._r = redis
        self._keys = keys
        self.kind = kind
        self.stream = keys.stream(kind)
        self.max_length = max_length
        self.max_deliveries = max_deliveries

    async def ensure_group(self) -> None:
        try:
            await self._r.xgroup_create(self.stream, GROUP, id="0", mkstream=True)
        except ResponseError as err:
            if "BUSYGROUP" not in str(err):
                raise

    async def length(self) -> int:
        """Entries not yet acknowledged (acknowledged entries are deleted, so this is the backlog)."""
        return int(await self._r.xlen(self.stream))

    async def add(self, entries: Sequence[Mapping[str, str | bytes | int]], wait_seconds: float = 0.0) -> list[str]:
        """Append entries; RESOURCE_EXHAUSTED when the stream stays full for `wait_seconds`."""
        if not entries:
            return []
        if len(entries) > self.max_length:
            raise ResourceExhausted(f"{len(entries)} entries exceed the {self.kind} queue bound {self.max_length}")
        deadline = time.monotonic() + wait_seconds
        while True:
            backlog = await self.length()
            if backlog + len(entries) <= self.max_length:
                break
            if time.monotonic() >= deadline:
                raise ResourceExhausted(
                    f"the {self.kind} queue is full ({backlog} of {self.max_length} entries waiting); retry later"
                )
            await asyncio.sleep(0.05)
        async with self._r.pipeline(transaction=False) as pipe:
            for fields in entries:
                pipe.xadd(self.stream, dict(fields))
            ids = await pipe.execute()
        return [i.decode() if isinstance(i, bytes) else str(i) for i in ids]

    async def read(self, consumer: str, count: int, block_ms: int) -> list[Entry]:
        """New entries for this consumer (they stay pending until acked)."""
        reply = await self._r.xreadgroup(GROUP, consumer, {self.stream: ">"}, count=count, block=block_ms)
        return _entries(reply[0][1] if reply else [])

    async def ack(self, ids: Sequence[str]) -> None:
        """Done with these entries: acknowledge and delete them (the stream length stays the backlog)."""
        if not ids:
            return
        async with self._r.pipeline(transaction=True) as pipe:
            pipe.xack(self.stream, GROUP, *ids)
            pipe.xdel(self.stream, *ids)
            pipe.hdel(self._keys.last_error(self.kind), *ids)
            await pipe.execute()

    async def note_failure(self, ids: Sequence[str], reason: str) -> None:
        """Remember why these entries failed; they stay pending and will be delivered again."""
        if ids:
            await self._r.hset(self._keys.last_error(self.kind), mapping=dict.fromkeys(ids, reason[:2000]))

    async def claim_stale(self, consumer: str, min_idle_ms: int, count: int) -> tuple[list[Entry], list[DeadLetter]]:
        """Take over entries idle longer than `min_idle_ms` (their worker died or is stuck).

        Entries already delivered `max_deliveries` times go to the dead-letter stream instead, with the
        reason of their last failure, and are acknowledged here.
        """
        pending = await self._r.xpending_range(self.stream, GROUP, min="-", max="+", count=count, idle=min_idle_ms)
        dead_ids = [p["message_id"] for p in pending if int(p["times_delivered"]) >= self.max_deliveries]
        deliveries = {_s(p["message_id"]): int(p["times_delivered"]) for p in pending}
        dead: list[DeadLetter] = []
        if dead_ids:
            reasons = await self._r.hmget(self._keys.last_error(self.kind), dead_ids)
            for raw_id, reason_raw in zip(dead_ids, reasons, strict=True):
                eid = _s(raw_id)
                entries = _entries(await self._r.xrange(self.stream, min=eid, max=eid))
                # XACK answers 1 to one caller only: consumers racing over the same entry dead-letter it once.
                if not await self._r.xack(self.stream, GROUP, eid):
                    continue
                reason = reason_raw.decode() if reason_raw else "the worker died or timed out on every delivery"
                fields = entries[0].fields if entries else {}
                dead.append(DeadLetter(eid, fields, deliveries[eid], reason))
                record = {k: v for k, v in fields.items() if k != b"content"}
                record.update({b"stream": self.stream.encode(), b"entry_id": eid.encode(),
                               b"deliveries": str(deliveries[eid]).encode(), b"reason": reason.encode()})
                await self._r.xadd(self._keys.dead_letter, record, maxlen=10_000, approximate=True)
                await self.ack([eid])
        claimed: list[Entry] = []
        if len(pending) > len(dead_ids):
            reply = await self._r.xautoclaim(self.stream, GROUP, consumer, min_idle_time=min_idle_ms, count=count)
            claimed = _entries(reply[1])
        return claimed, dead

    async def dead_letters(self, count: int = 100) -> list[Fields]:
        rows = await self._r.xrange(self._keys.dead_letter, count=count)
        return [fields for _id, fields in rows]


def _s(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _entries(rows: Sequence[tuple[bytes | str, Fields] | None]) -> list[Entry]:
    out = []
    for row in rows:
        # XAUTOCLAIM can return entries deleted meanwhile as None / empty fields: skip them.
        if not row or not row[1]:
            continue
        out.append(Entry(_s(row[0]), dict(row[1])))
    return out
