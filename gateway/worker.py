"""`python -m gateway.worker`: drains the ingest and round streams (add processes to go faster).

Delivery is at least once: an entry is acknowledged only after its effects are stored, and every
effect is idempotent (rows keyed by content hash, each job item counted once), so an entry redelivered
after a crash changes nothing twice. Entries a dead worker left pending are taken over after
`claim_idle_seconds`; after `max_deliveries` they go to the dead-letter stream with the reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import redis.asyncio as aioredis

from gateway.clients import DownstreamError, Services, is_transient, translated
from gateway.jobs import JobStore, Outcome
from gateway.keys import GROUP, INGEST, ROUND, Keys
from gateway.paths import check_path
from gateway.queue import DeadLetter, Entry, WorkQueue
from gateway.registry import Registry
from gateway.servicer import ping_redis, redis_client
from gateway.settings import GatewaySettings
from tagalong.runtime.errors import ServiceError
from tagalong.runtime.ids import content_sha256, id_from_sha256
from tagalong.runtime.logs import setup_logging
from tagalong.runtime.settings import SettingError, load_settings
from tagalong.v1 import clusterer_pb2, common_pb2, embedder_pb2, labelstore_pb2

log = logging.getLogger("gateway.worker")

Handler = Callable[[WorkQueue, list[Entry]], Awaitable[None]]


@dataclass
class _Item:
    """One ingest entry on its way through embed -> upsert."""

    entry: Entry
    job: str
    dataset: str
    key: str
    name: str
    label: str
    check_duplicates: bool
    threshold: float
    data: bytes = b""
    error: str = ""
    vector: common_pb2.Vector | None = None
    sha: str = ""


@dataclass
class _Batch:
    """Results of one batch: what to count per job, and whether it may be acknowledged."""

    outcomes: dict[str, list[Outcome]] = field(default_factory=lambda: defaultdict(list))
    duplicates: dict[str, int] = field(default_factory=lambda: defaultdict(int))


class Worker:
    """A worker process: `concurrency` ingest consumers and one round consumer over one Redis."""

    def __init__(self, settings: GatewaySettings, name: str | None = None) -> None:
        self.settings = settings
        self.name = name or f"{socket.gethostname()}-{os.getpid()}"
        self.redis: aioredis.Redis = redis_client(settings)
        self.services = Services(settings)
        keys = Keys(settings.redis_prefix)
        self.jobs = JobStore(self.redis, keys, settings.job_ttl_seconds)
        self.registry = Registry(self.redis, keys)
        self.ingest = WorkQueue(self.redis, keys, INGEST, settings.max_queue_length, settings.max_deliveries)
        self.rounds = WorkQueue(self.redis, keys, ROUND, settings.max_queue_length, settings.max_deliveries)
        self.stopping = asyncio.Event()

    # ---- lifecycle ------------------------------------------------------------------------------

    async def run(self) -> None:
        await ping_redis(self.redis, self.settings)
        await self.ingest.ensure_group()
        await self.rounds.ensure_group()
        loops = [self._loop(self.ingest, f"{self.name}-ingest-{i}", self._process_ingest)
                 for i in range(self.settings.worker_concurrency)]
        loops.append(self._loop(self.rounds, f"{self.name}-round", self._process_rounds, batch=1))
        log.info("worker %s consuming %s and %s", self.name, self.ingest.stream, self.rounds.stream)
        try:
            await asyncio.gather(*loops)
        finally:
            await self.services.close()
            await self.redis.aclose()

    def stop(self) -> None:
        self.stopping.set()

    async def _loop(self, queue: WorkQueue, consumer: str, handler: Handler, batch: int | None = None) -> None:
        count = batch or self.settings.worker_batch_size
        idle_ms = int(self.settings.claim_idle_seconds * 1000)
        while not self.stopping.is_set():
            try:
                claimed, dead = await queue.claim_stale(consumer, idle_ms, count)
                if dead:
                    await self._dead_lettered(queue, dead)
                entries = claimed or await queue.read(consumer, count, self.settings.worker_block_ms)
                if entries:
                    await self._with_heartbeat(queue, consumer, entries, handler)
            except (aioredis.ConnectionError, aioredis.TimeoutError, OSError) as err:
                log.warning("redis unreachable (%s); retrying", err)
                await asyncio.sleep(1.0)
            except Exception:
                log.exception("unexpected error in %s; its entries stay pending and will be retried", consumer)
                await asyncio.sleep(1.0)

    async def _with_heartbeat(self, queue: WorkQueue, consumer: str, entries: list[Entry], handler: Handler) -> None:
        """Runs the handler while re-claiming its entries now and then, so slow work is not taken over."""
        ids = [e.id for e in entries]
        period = max(self.settings.claim_idle_seconds / 3, 0.1)
        done = asyncio.Event()

        async def beat() -> None:
            while True:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(done.wait(), period)
                if done.is_set():
                    return
                # JUSTID resets the idle time without counting a delivery; the minimum idle time keeps
                # us from taking back an entry another worker took over meanwhile (after a long stall).
                await self.redis.xclaim(queue.stream, GROUP, consumer, int(period * 500), ids, justid=True)

        beater = asyncio.create_task(beat())
        try:
            await handler(queue, entries)
        finally:
            # Told to stop, not cancelled: redis-py (8.1, Python 3.11) can swallow a cancellation that lands
            # inside a command, and a beat that lives on re-claims its entries forever, so they are never
            # redelivered or dead-lettered (seen in CI). It ends at its next check instead.
            done.set()
            with contextlib.suppress(Exception):
                await beater

    async def _dead_lettered(self, queue: WorkQueue, dead: Sequence[DeadLetter]) -> None:
        for d in dead:
            job = d.fields.get(b"job", b"").decode()
            reason = f"gave up after {d.deliveries} deliveries: {d.reason}"
            log.error("dead-lettered %s entry %s of job %s: %s", queue.kind, d.id, job, reason)
            if not job:
                continue
            if queue.kind == ROUND:
                await self.jobs.fail(job, reason)
            else:
                name = d.fields.get(b"name", b"").decode()
                await self.jobs.record(job, [Outcome(d.fields.get(b"item", b"").decode(), False, name, reason)])

    # ---- ingest -----------------------------------------------------------------------------------

    async def _process_ingest(self, queue: WorkQueue, entries: list[Entry]) -> None:
        items = [self._parse(e) for e in entries]
        await asyncio.gather(*(self._load(it) for it in items))
        try:
            await self._embed([it for it in items if not it.error])
            batch = await self._upsert([it for it in items if not it.error and it.vector is not None])
        except Exception as err:
            if not is_transient(err):
                raise
            # Leave the entries pending: another delivery (here or on another worker) retries them.
            reason = err.message if isinstance(err, ServiceError) else repr(err)
            await queue.note_failure([e.id for e in entries], reason)
            log.warning("batch of %d left for redelivery: %s", len(entries), reason)
            await asyncio.sleep(1.0)
            return
        for it in items:
            if it.error:
                batch.outcomes[it.job].append(Outcome(it.key, False, it.name, it.error))
        for job, outcomes in batch.outcomes.items():
            await self.jobs.record(job, outcomes)
        for job, n in batch.duplicates.items():
            await self.jobs.add_duplicates(job, n)
        await queue.ack([e.id for e in entries])

    def _parse(self, entry: Entry) -> _Item:
        return _Item(
            entry=entry, job=entry.text("job"), dataset=entry.text("dataset"), key=entry.text("item", entry.id),
            name=entry.text("name"), label=entry.text("label"), check_duplicates=entry.text("dup") == "1",
            threshold=float(entry.text("thr", "0") or 0),
        )

    async def _load(self, item: _Item) -> None:
        content = item.entry.fields.get(b"content")
        if content is not None:
            item.data = content
        else:
            path = item.entry.text("path")
            try:
                # The allowed roots are checked again here: the file may have become a symlink since.
                real = check_path(path, self.settings.allowed_roots)
                item.data = await asyncio.to_thread(Path(real).read_bytes)
            except ServiceError as err:
                item.error = err.message
            except OSError as err:
                item.error = f"cannot read {path}: {err.strerror or err}"
            if not item.error and len(item.data) > self.settings.max_item_bytes:
                item.error = f"{len(item.data)} bytes exceed the limit of {self.settings.max_item_bytes}"
            if not item.error and not item.data:
                item.error = "empty file"
        if item.data:
            item.sha = content_sha256(item.data)

    async def _embed(self, items: list[_Item]) -> None:
        size = self.settings.embed_batch_size
        chunks = [items[i:i + size] for i in range(0, len(items), size)]

        async def one(chunk: list[_Item]) -> None:
            try:
                with translated("embedder"):
                    reply = await self.services.embedder.EmbedImages(
                        embedder_pb2.EmbedImagesRequest(images=[it.data for it in chunk], float16=True)
                    )
            except DownstreamError as err:
                if is_transient(err):
                    raise
                for it in chunk:
                    it.error = err.message
                return
            for it, result in zip(chunk, reply.results, strict=True):
                if result.WhichOneof("outcome") == "vector":
                    it.vector = result.vector
                else:
                    it.error = f"{_code_name(result.error.code)}: {result.error.message}"

        await asyncio.gather(*(one(c) for c in chunks))

    async def _upsert(self, items: list[_Item]) -> _Batch:
        batch = _Batch()
        groups: dict[tuple[str, bool, float], list[_Item]] = defaultdict(list)
        for it in items:
            groups[(it.dataset, it.check_duplicates, it.threshold)].append(it)
        for (dataset, dup, thr), group in groups.items():
            request = labelstore_pb2.UpsertRequest(
                dataset=dataset, check_duplicates=dup, duplicate_threshold=thr,
                items=[labelstore_pb2.UpsertItem(content_sha256=it.sha, vector=it.vector, uri=it.name, label=it.label)
                       for it in group],
            )
            try:
                with translated("labelstore"):
                    reply = await self.services.labelstore.Upsert(request)
            except DownstreamError as err:
                if is_transient(err):
                    raise
                for it in group:
                    it.error = err.message
                continue
            for it in group:
                batch.outcomes[it.job].append(Outcome(it.key, True, it.name))
            for match in reply.duplicates:
                owner = next((it.job for it in group if _row_id(it.sha) == match.id), group[0].job)
                batch.duplicates[owner] += 1
        return batch

    # ---- labelling rounds -------------------------------------------------------------------------

    async def _process_rounds(self, queue: WorkQueue, entries: list[Entry]) -> None:
        for entry in entries:
            job, dataset, round_id = entry.text("job"), entry.text("dataset"), entry.text("round_id")
            config = common_pb2.RoundConfig.FromString(entry.fields.get(b"config", b""))
            try:
                await self._run_round(job, dataset, round_id, config)
            except Exception as err:  # noqa: BLE001 - a bug is retried, then dead-lettered
                if is_transient(err):
                    reason = err.message if isinstance(err, ServiceError) else repr(err)
                    await queue.note_failure([entry.id], reason)
                    await self.jobs.update(job, stage="waiting to retry", error=reason)
                    log.warning("round %s left for redelivery: %s", round_id, reason)
                    continue
                await self.jobs.fail(job, err.message if isinstance(err, ServiceError) else repr(err))
            await queue.ack([entry.id])

    async def _run_round(self, job: str, dataset: str, round_id: str, config: common_pb2.RoundConfig) -> None:
        if await self.jobs.state(job) in ("SUCCEEDED", "PARTIAL", "FAILED"):
            return  # a redelivery of a round that already ended
        await self.jobs.start(job)
        await self.jobs.update(job, stage="starting", error="")
        call = self.services.clusterer.RunRound(
            clusterer_pb2.RunRoundRequest(dataset=dataset, round_id=round_id, config=config),
            timeout=self.settings.round_deadline_seconds,
        )
        result: clusterer_pb2.RoundResult | None = None
        with translated("clusterer"):
            async for event in call:
                if event.WhichOneof("event") == "progress":
                    p = event.progress
                    await self.jobs.update(job, stage=p.stage, done=int(max(0.0, min(p.fraction, 1.0)) * 100))
                else:
                    result = event.result
        if result is None:
            raise DownstreamError("clusterer", grpc.StatusCode.UNAVAILABLE, "the round ended without a result")
        await self.registry.save_review(dataset, round_id, list(result.review_batch))
        await self.jobs.succeed_round(job, result.summary)


_CODES = {code.value[0]: code for code in grpc.StatusCode}


def _code_name(value: int) -> str:
    return _CODES.get(value, grpc.StatusCode.UNKNOWN).name


def _row_id(sha: str) -> int:
    return id_from_sha256(sha) if sha else 0


async def _main(settings: GatewaySettings) -> None:
    worker = Worker(settings)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, worker.stop)
    await worker.run()


def main() -> None:
    settings = load_settings(GatewaySettings, program="tagalong-worker")
    setup_logging("worker", settings.log_level, settings.log_format)
    try:
        asyncio.run(_main(settings))
    except SettingError as err:
        print(f"tagalong-worker: bad setting {err.env_var}: {err.problem}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
