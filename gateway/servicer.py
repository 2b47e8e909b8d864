"""The public Gateway API: validates requests, queues jobs on Redis Streams, and calls the services."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import redis.asyncio as aioredis
from grpc import aio

from gateway.clients import Services, stream_translated, translated
from gateway.jobs import JobStore
from gateway.keys import INGEST, ROUND, Keys
from gateway.paths import walk_images
from gateway.progress import TERMINAL
from gateway.prompts import SEARCH_TEMPLATES, ZERO_SHOT_TEMPLATES, check_class_names, fill
from gateway.queue import WorkQueue
from gateway.registry import DatasetMeta, Registry, check_classes, check_dataset_name
from gateway.settings import GatewaySettings
from tagalong.runtime.errors import FailedPrecondition, InvalidArgument, NotFound, ServiceError
from tagalong.runtime.ids import id_from_sha256
from tagalong.runtime.rounds import check_round_config
from tagalong.runtime.settings import SettingError
from tagalong.runtime.vectors import from_proto, l2_normalize, to_proto
from tagalong.v1 import (
    clusterer_pb2,
    common_pb2,
    embedder_pb2,
    gateway_pb2,
    gateway_pb2_grpc,
    labelstore_pb2,
)

log = logging.getLogger(__name__)

ENQUEUE_CHUNK = 256


def _threshold(value: float, name: str) -> float:
    if not 0.0 <= value <= 1.0:
        raise InvalidArgument(f"{name} must be in [0, 1], got {value}")
    return value


def _list_images(path: str, roots: tuple[Path, ...]) -> list[Path]:
    return list(walk_images(path, roots))


def new_round_id() -> str:
    return time.strftime("r%Y%m%d-%H%M%S", time.gmtime()) + "-" + uuid.uuid4().hex[:6]


class GatewayServicer(gateway_pb2_grpc.GatewayServicer):
    """Handlers of tagalong.v1.Gateway (holds no state beyond connections: replicas are interchangeable)."""

    def __init__(self, settings: GatewaySettings, redis: aioredis.Redis, services: Services) -> None:
        self.settings = settings
        self.redis = redis
        self.services = services
        keys = Keys(settings.redis_prefix)
        self.jobs = JobStore(redis, keys, settings.job_ttl_seconds)
        self.registry = Registry(redis, keys)
        self.ingest_queue = WorkQueue(redis, keys, INGEST, settings.max_queue_length, settings.max_deliveries)
        self.round_queue = WorkQueue(redis, keys, ROUND, settings.max_queue_length, settings.max_deliveries)

    # ---- datasets -------------------------------------------------------------------------------

    async def _counts(self) -> dict[str, int]:
        with translated("labelstore"):
            reply = await self.services.labelstore.ListDatasets(labelstore_pb2.ListDatasetsRequest())
        return {d.name: d.count for d in reply.datasets}

    async def CreateDataset(self, request: gateway_pb2.CreateDatasetRequest, context: Any) -> Any:
        name = check_dataset_name(request.name)
        classes = check_classes(list(request.classes))
        existing = await self.registry.find_dataset(name)
        if existing is not None and classes and classes != existing.classes:
            raise FailedPrecondition(
                f"dataset {name!r} exists with other classes ({', '.join(existing.classes) or 'none'})"
            )
        if existing is None:
            with translated("embedder"):
                info = await self.services.embedder.ModelInfo(embedder_pb2.ModelInfoRequest())
            meta = DatasetMeta(name=name, model_id=info.model_id, dim=info.dim, classes=classes)
        else:
            meta = existing
        with translated("labelstore"):
            ensured = await self.services.labelstore.EnsureDataset(
                labelstore_pb2.EnsureDatasetRequest(name=name, dim=meta.dim, model_id=meta.model_id)
            )
        created = await self.registry.put_dataset(meta) if existing is None else False
        if existing is None and not created:  # another replica won the race: report its record
            meta = await self.registry.dataset(name)
        return gateway_pb2.CreateDatasetResponse(dataset=meta.message(ensured.dataset.count), created=created)

    async def ListDatasets(self, request: Any, context: Any) -> Any:
        counts = await self._counts()
        metas = await self.registry.datasets()
        return gateway_pb2.GatewayListDatasetsResponse(datasets=[m.message(counts.get(m.name, 0)) for m in metas])

    # ---- ingest and jobs ------------------------------------------------------------------------

    async def Ingest(self, request_iterator: AsyncIterator[gateway_pb2.IngestRequest], context: Any) -> Any:
        meta: DatasetMeta | None = None
        header: gateway_pb2.IngestHeader | None = None
        job_id = ""
        pending: list[dict[str, Any]] = []
        queued = 0
        # Small chunks against a small bound, so that a full queue is met entry by entry.
        chunk = min(ENQUEUE_CHUNK, max(1, self.settings.max_queue_length // 4))

        async def flush() -> None:
            nonlocal queued, pending
            if pending:
                await self.ingest_queue.add(pending, wait_seconds=self.settings.queue_wait_seconds)
                await self.jobs.add_total(job_id, len(pending))
                queued += len(pending)
                pending = []

        try:
            async for msg in request_iterator:
                kind = msg.WhichOneof("message")
                if header is None:
                    if kind != "header":
                        raise InvalidArgument("the first message of an ingest stream must be the header")
                    header = msg.header
                    meta = await self.registry.dataset(header.dataset)
                    _threshold(header.duplicate_threshold, "duplicate_threshold")
                    job_id = await self.jobs.create("ingest", meta.name)
                    continue
                if kind != "item":
                    raise InvalidArgument("the header must be sent once, first")
                assert meta is not None
                item = msg.item
                n = queued + len(pending)
                common = {
                    "job": job_id, "dataset": meta.name, "label": item.label,
                    "dup": int(header.check_duplicates), "thr": repr(header.duplicate_threshold or 0.0),
                }
                if item.label:
                    meta.check_label(item.label, f"item {n}")
                source = item.WhichOneof("source")
                if source == "content":
                    size = len(item.content)
                    if size == 0:
                        raise InvalidArgument(f"item {n}: empty content")
                    if size > self.settings.max_item_bytes:
                        raise InvalidArgument(
                            f"item {n}: {size} bytes exceed the limit of {self.settings.max_item_bytes}"
                        )
                    pending.append({**common, "item": n, "name": item.name or f"item-{n}", "content": item.content})
                elif source == "path":
                    paths = await asyncio.to_thread(_list_images, item.path, self.settings.allowed_roots)
                    for path in paths:
                        n = queued + len(pending)
                        pending.append({**common, "item": n, "name": str(path), "path": str(path)})
                        if len(pending) >= chunk:
                            await flush()
                else:
                    raise InvalidArgument(f"item {n}: set content or path")
                if len(pending) >= chunk:
                    await flush()
            if header is None:
                raise InvalidArgument("empty ingest stream: send a header, then items")
            await flush()
            await self.jobs.seal(job_id)
        except ServiceError as err:
            if job_id:
                await self.jobs.fail(job_id, f"ingest refused after {queued} queued items: {err.message}")
            raise
        return gateway_pb2.IngestResponse(job_id=job_id, queued=queued)

    async def GetJob(self, request: gateway_pb2.GetJobRequest, context: Any) -> Any:
        return gateway_pb2.GetJobResponse(job=await self.jobs.get(request.job_id))

    async def WatchJob(self, request: gateway_pb2.WatchJobRequest, context: Any) -> AsyncIterator[Any]:
        interval = request.interval_seconds or 0.5
        if not 0.05 <= interval <= 60:
            raise InvalidArgument("interval_seconds must be in [0.05, 60]")
        last_key: tuple[Any, ...] | None = None
        last_sent = 0.0
        while True:
            job = await self.jobs.get(request.job_id)
            key = (job.state, job.done, job.failed, job.total, job.stage, job.error)
            # Send changes, and a heartbeat every few seconds so the rate and ETA stay fresh.
            if key != last_key or time.monotonic() - last_sent > 5:
                yield gateway_pb2.WatchJobResponse(job=job)
                last_key, last_sent = key, time.monotonic()
            if gateway_pb2.JobState.Name(job.state).removeprefix("JOB_STATE_") in TERMINAL:
                return
            await asyncio.sleep(interval)

    # ---- embedding pass-through ----------------------------------------------------------------

    async def EmbedImages(self, request: gateway_pb2.GatewayEmbedImagesRequest, context: Any) -> Any:
        with translated("embedder"):
            reply = await self.services.embedder.EmbedImages(
                embedder_pb2.EmbedImagesRequest(images=request.images, float16=request.float16)
            )
        # Same field numbers and types: the wire bytes are the same message.
        return gateway_pb2.GatewayEmbedImagesResponse.FromString(reply.SerializeToString())

    async def EmbedTexts(self, request: gateway_pb2.GatewayEmbedTextsRequest, context: Any) -> Any:
        with translated("embedder"):
            reply = await self.services.embedder.EmbedTexts(
                embedder_pb2.EmbedTextsRequest(texts=request.texts, float16=request.float16)
            )
        return gateway_pb2.GatewayEmbedTextsResponse.FromString(reply.SerializeToString())

    async def _text_vectors(self, meta: DatasetMeta, groups: list[list[str]]) -> list[np.ndarray]:
        """One unit vector per group of prompts (their embeddings averaged), checked against the dataset's model."""
        texts = [t for g in groups for t in g]
        try:
            with translated("embedder"):
                reply = await self.services.embedder.EmbedTexts(embedder_pb2.EmbedTextsRequest(texts=texts))
        except ServiceError as err:
            if err.code == grpc.StatusCode.FAILED_PRECONDITION:
                raise FailedPrecondition(
                    f"text queries need a model with a text tower (CLIP); the embedder says: {err.message}"
                ) from None
            raise
        if reply.model_id != meta.model_id:
            raise FailedPrecondition(
                f"dataset {meta.name!r} holds {meta.model_id!r} vectors but the embedder serves {reply.model_id!r}"
            )
        rows = []
        for i, r in enumerate(reply.results):
            if r.WhichOneof("outcome") != "vector":
                raise InvalidArgument(f"text {texts[i]!r}: {r.error.message}")
            rows.append(from_proto(r.vector))
        matrix = l2_normalize(np.stack(rows))
        out, start = [], 0
        for g in groups:
            out.append(l2_normalize(matrix[start:start + len(g)].mean(axis=0, keepdims=True))[0])
            start += len(g)
        return out

    async def _search(self, dataset: str, vector: np.ndarray, top_k: int, flt: common_pb2.Filter) -> Any:
        with translated("labelstore"):
            reply = await self.services.labelstore.Search(
                labelstore_pb2.SearchRequest(dataset=dataset, queries=[to_proto(vector)], top_k=top_k or 10, filter=flt)
            )
        return list(reply.results[0].hits) if reply.results else []

    async def SearchByText(self, request: gateway_pb2.SearchByTextRequest, context: Any) -> Any:
        meta = await self.registry.dataset(request.dataset)
        if not request.text.strip():
            raise InvalidArgument("text is empty")
        [vector] = await self._text_vectors(meta, [fill(SEARCH_TEMPLATES, request.text.strip())])
        hits = await self._search(meta.name, vector, request.top_k, request.filter)
        return gateway_pb2.SearchByTextResponse(hits=hits)

    async def SearchByImage(self, request: gateway_pb2.SearchByImageRequest, context: Any) -> Any:
        meta = await self.registry.dataset(request.dataset)
        query = request.WhichOneof("query")
        if query == "image":
            with translated("embedder"):
                reply = await self.services.embedder.EmbedImages(
                    embedder_pb2.EmbedImagesRequest(images=[request.image])
                )
            result = reply.results[0]
            if result.WhichOneof("outcome") != "vector":
                raise InvalidArgument(f"image: {result.error.message}")
            if reply.model_id != meta.model_id:
                raise FailedPrecondition(
                    f"dataset {meta.name!r} holds {meta.model_id!r} vectors but the embedder serves {reply.model_id!r}"
                )
            vector = from_proto(result.vector)
        elif query == "id":
            with translated("labelstore"):
                got = await self.services.labelstore.Get(
                    labelstore_pb2.GetRequest(dataset=meta.name, ids=[request.id], include_vectors=True)
                )
            if not got.records:
                raise NotFound(f"no image with id {request.id} in dataset {meta.name!r}")
            vector = from_proto(got.records[0].vector)
        else:
            raise InvalidArgument("set image or id")
        hits = await self._search(meta.name, vector, request.top_k, request.filter)
        return gateway_pb2.SearchByImageResponse(hits=hits)

    async def ZeroShot(self, request: gateway_pb2.GatewayZeroShotRequest, context: Any) -> Any:
        meta = await self.registry.dataset(request.dataset)
        names = check_class_names(list(request.class_names))
        if request.write_labels:
            for name in names:
                meta.check_label(name, "class_names")
        templates = list(request.templates) or list(ZERO_SHOT_TEMPLATES)
        vectors = await self._text_vectors(meta, [fill(templates, n) for n in names])
        classes = [
            common_pb2.ClassPrompts(label=n, prompt_embeddings=[to_proto(v)])
            for n, v in zip(names, vectors, strict=True)
        ]
        with translated("clusterer"):
            reply = await self.services.clusterer.ZeroShot(
                clusterer_pb2.ZeroShotRequest(
                    dataset=meta.name, classes=classes, ids=request.ids, write_labels=request.write_labels,
                    min_confidence=request.min_confidence, limit=request.limit,
                )
            )
        return gateway_pb2.GatewayZeroShotResponse(predictions=reply.predictions, labels_written=reply.labels_written)

    # ---- labelling rounds and human labels --------------------------------------------------------

    async def StartLabelingRound(self, request: gateway_pb2.StartLabelingRoundRequest, context: Any) -> Any:
        meta = await self.registry.dataset(request.dataset)
        check_round_config(request.config)  # now, not as a FAILED job after the round is queued
        config = common_pb2.RoundConfig()
        config.CopyFrom(request.config)
        config.write_labels = True
        round_id = new_round_id()
        job_id = await self.jobs.create("round", meta.name, round_id=round_id, total=100)
        try:
            await self.round_queue.add(
                [{"job": job_id, "dataset": meta.name, "round_id": round_id, "config": config.SerializeToString()}]
            )
        except ServiceError as err:
            await self.jobs.fail(job_id, err.message)
            raise
        await self.jobs.update(job_id, sealed=1)
        return gateway_pb2.StartLabelingRoundResponse(job_id=job_id, round_id=round_id)

    async def GetReviewQueue(self, request: gateway_pb2.GetReviewQueueRequest, context: Any) -> Any:
        meta = await self.registry.dataset(request.dataset)
        queue = await self.registry.review(meta.name, request.round_id)
        items = list(queue.items)
        if request.pending_only and items:
            with translated("labelstore"):
                got = await self.services.labelstore.Get(
                    labelstore_pb2.GetRequest(dataset=meta.name, ids=[i.id for i in items])
                )
            human = {r.id for r in got.records if r.label_source == common_pb2.LABEL_SOURCE_HUMAN}
            items = [i for i in items if i.id not in human]
        if request.limit:
            items = items[: request.limit]
        return gateway_pb2.GetReviewQueueResponse(round_id=queue.round_id, items=items)

    async def SubmitLabels(self, request: gateway_pb2.SubmitLabelsRequest, context: Any) -> Any:
        meta = await self.registry.dataset(request.dataset)
        method = request.annotator.strip() or "human"
        assignments = []
        for i, label in enumerate(request.labels):
            meta.check_label(label.label, f"labels[{i}]")
            target = label.WhichOneof("target")
            if target == "id":
                if label.id <= 0:
                    raise InvalidArgument(f"labels[{i}]: id must be positive")
                row_id = label.id
            elif target == "content_sha256":
                digest = label.content_sha256.lower()
                if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
                    raise InvalidArgument(f"labels[{i}]: content_sha256 must be 64 hex characters")
                row_id = id_from_sha256(digest)
            else:
                raise InvalidArgument(f"labels[{i}]: set id or content_sha256")
            assignments.append(
                labelstore_pb2.LabelAssignment(
                    id=row_id, label=label.label, source=common_pb2.LABEL_SOURCE_HUMAN, confidence=1.0,
                    cluster_id=-1, method=method,
                )
            )
        if not assignments:
            return gateway_pb2.SubmitLabelsResponse()
        with translated("labelstore"):
            reply = await self.services.labelstore.SetLabels(
                labelstore_pb2.SetLabelsRequest(dataset=meta.name, assignments=assignments)
            )
        return gateway_pb2.SubmitLabelsResponse(
            applied=reply.changed, unchanged=reply.unchanged, unknown_ids=reply.missing_ids
        )

    # ---- analysis ---------------------------------------------------------------------------------

    async def FindDuplicates(self, request: gateway_pb2.FindDuplicatesRequest, context: Any) -> Any:
        meta = await self.registry.dataset(request.dataset)
        _threshold(request.threshold, "threshold")
        with translated("labelstore"):
            reply = await self.services.labelstore.NearDuplicates(
                labelstore_pb2.NearDuplicatesRequest(dataset=meta.name, threshold=request.threshold)
            )
        return gateway_pb2.FindDuplicatesResponse(groups=reply.groups)

    async def Project(self, request: gateway_pb2.GatewayProjectRequest, context: Any) -> Any:
        meta = await self.registry.dataset(request.dataset)
        dims = request.dims or 2
        if dims not in (2, 3):
            raise InvalidArgument(f"dims must be 2 or 3, got {dims}")
        with translated("clusterer"):
            reply = await self.services.clusterer.Project(
                clusterer_pb2.ProjectRequest(
                    dataset=meta.name, method=request.method, dims=dims, max_points=request.max_points
                )
            )
        return gateway_pb2.GatewayProjectResponse(
            points=reply.points, explained_variance=reply.explained_variance, total=reply.total
        )

    async def LabelErrors(self, request: gateway_pb2.GatewayLabelErrorsRequest, context: Any) -> Any:
        meta = await self.registry.dataset(request.dataset)
        _threshold(request.min_score, "min_score")
        with translated("clusterer"):
            reply = await self.services.clusterer.LabelErrors(
                clusterer_pb2.LabelErrorsRequest(dataset=meta.name, limit=request.limit, min_score=request.min_score)
            )
        return gateway_pb2.GatewayLabelErrorsResponse(candidates=reply.candidates)

    async def Outliers(self, request: gateway_pb2.GatewayOutliersRequest, context: Any) -> Any:
        meta = await self.registry.dataset(request.dataset)
        with translated("clusterer"):
            reply = await self.services.clusterer.Outliers(
                clusterer_pb2.OutliersRequest(dataset=meta.name, limit=request.limit)
            )
        return gateway_pb2.GatewayOutliersResponse(outliers=reply.outliers)

    async def Export(self, request: gateway_pb2.GatewayExportRequest, context: Any) -> AsyncIterator[Any]:
        meta = await self.registry.dataset(request.dataset)
        ids: list[int] = []
        if request.review_queue_only:
            ids = [i.id for i in (await self.registry.review(meta.name)).items]
            if not ids:
                return
        call = self.services.labelstore.Export(
            labelstore_pb2.ExportRequest(
                dataset=meta.name, format=request.format, filter=request.filter, ids=ids,
                image_url_prefix=request.image_url_prefix,
            )
        )
        async for chunk in stream_translated("labelstore", call):
            yield gateway_pb2.GatewayExportResponse(chunk=chunk.chunk)


class GatewayService:
    """The gateway as the runtime's server bootstrap sees it."""

    name = "gateway"
    service_names = (gateway_pb2.DESCRIPTOR.services_by_name["Gateway"].full_name,)

    def __init__(self, settings: GatewaySettings) -> None:
        self.settings = settings
        self.redis: aioredis.Redis | None = None
        self.services: Services | None = None
        self.servicer: GatewayServicer | None = None

    def register(self, server: aio.Server) -> None:
        # Nothing connects here: the Redis client and channels connect lazily; start() checks Redis.
        self.redis = redis_client(self.settings)
        self.services = Services(self.settings)
        self.servicer = GatewayServicer(self.settings, self.redis, self.services)
        gateway_pb2_grpc.add_GatewayServicer_to_server(self.servicer, server)

    async def start(self) -> None:
        assert self.redis is not None and self.servicer is not None, "register() first"
        await ping_redis(self.redis, self.settings)
        await self.servicer.ingest_queue.ensure_group()
        await self.servicer.round_queue.ensure_group()

    async def stop(self) -> None:
        if self.services is not None:
            await self.services.close()
        if self.redis is not None:
            await self.redis.aclose()


def redis_client(settings: GatewaySettings) -> aioredis.Redis:
    try:
        return aioredis.Redis.from_url(settings.redis_url, socket_connect_timeout=5, health_check_interval=30)
    except ValueError as err:
        raise SettingError("TAGALONG_REDIS_URL", f"not a Redis URL: {err}") from None


async def ping_redis(client: aioredis.Redis, settings: GatewaySettings) -> None:
    """SettingError naming TAGALONG_REDIS_URL when Redis is unreachable."""
    try:
        await client.ping()
    except (aioredis.RedisError, OSError) as err:
        raise SettingError("TAGALONG_REDIS_URL", f"cannot reach Redis at {settings.redis_url}: {err}") from None
