"""The asyncio client: the same methods as `Client`, awaitable; `watch` is an async iterator."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import grpc
from grpc import aio

from tagalong.runtime.channels import make_channel
from tagalong.runtime.settings import ClientSettings
from tagalong.sdk import _requests as rq
from tagalong.sdk._requests import DEFAULT_ADDRESS, ItemLike, JobFailedError, TagalongError, is_terminal
from tagalong.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc

F = TypeVar("F", bound=Callable[..., Any])


def _errors(fn: F) -> F:
    @functools.wraps(fn)
    async def wrapped(*args: Any, **kwargs: Any) -> Any:
        try:
            return await fn(*args, **kwargs)
        except grpc.RpcError as err:
            raise TagalongError.of(err) from None

    return wrapped  # type: ignore[return-value]


class AsyncClient:
    """`async with AsyncClient(address, token=None) as c: await c.search_text(...)`."""

    def __init__(self, address: str = DEFAULT_ADDRESS, token: str | None = None, timeout: float = 60.0) -> None:
        self.address = address
        self.timeout = timeout
        # The channel's interceptor adds the token, request id and default deadline to every call.
        self._channel = make_channel(address, ClientSettings(auth_token=token, deadline_seconds=timeout))
        self.stub = gateway_pb2_grpc.GatewayStub(self._channel)

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @_errors
    async def create_dataset(self, name: str, classes: Iterable[str] = ()) -> gateway_pb2.Dataset:
        reply = await self.stub.CreateDataset(gateway_pb2.CreateDatasetRequest(name=name, classes=list(classes)))
        return reply.dataset

    @_errors
    async def list_datasets(self) -> list[gateway_pb2.Dataset]:
        return list((await self.stub.ListDatasets(gateway_pb2.GatewayListDatasetsRequest())).datasets)

    @_errors
    async def ingest(self, dataset: str, items: Iterable[ItemLike], *, check_duplicates: bool = False,
                     duplicate_threshold: float = 0.0, timeout: float = 3600.0) -> gateway_pb2.IngestResponse:
        requests = rq.ingest_requests(dataset, items, check_duplicates, duplicate_threshold)
        return await self.stub.Ingest(requests, timeout=timeout)

    async def ingest_dir(self, dataset: str, directory: str | Path, *, labels_from_dirs: bool = False,
                         server_paths: bool = False, check_duplicates: bool = False) -> gateway_pb2.IngestResponse:
        items = await asyncio.to_thread(rq.dir_items, directory, labels_from_dirs, server_paths)
        return await self.ingest(dataset, items, check_duplicates=check_duplicates)

    @_errors
    async def get_job(self, job_id: str) -> gateway_pb2.Job:
        return (await self.stub.GetJob(gateway_pb2.GetJobRequest(job_id=job_id))).job

    async def watch(self, job_id: str, interval: float = 0.5,
                    timeout: float | None = None) -> AsyncIterator[gateway_pb2.Job]:
        """Progress updates until the job ends; a stream cut by the server (UNAVAILABLE) is resumed."""
        request = gateway_pb2.WatchJobRequest(job_id=job_id, interval_seconds=interval)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (timeout or 7 * 24 * 3600)
        failures = 0
        while True:
            try:
                async for reply in self.stub.WatchJob(request, timeout=max(deadline - loop.time(), 0.001)):
                    failures = 0
                    yield reply.job
                return
            except aio.AioRpcError as err:
                failures += 1
                if not rq.resumable(err, failures):
                    raise TagalongError.of(err) from None
                await asyncio.sleep(rq.backoff(failures))

    async def wait(self, job_id: str, timeout: float | None = None, interval: float = 0.5) -> gateway_pb2.Job:
        job: gateway_pb2.Job | None = None
        async for update in self.watch(job_id, interval, timeout):
            job = update
        if job is None or not is_terminal(job):
            job = await self.get_job(job_id)
        if job.state == gateway_pb2.JOB_STATE_FAILED:
            raise JobFailedError(job)
        return job

    @_errors
    async def embed_images(self, images: Iterable[bytes], float16: bool = False) -> Any:
        return await self.stub.EmbedImages(gateway_pb2.GatewayEmbedImagesRequest(images=list(images), float16=float16))

    @_errors
    async def embed_texts(self, texts: Iterable[str], float16: bool = False) -> Any:
        return await self.stub.EmbedTexts(gateway_pb2.GatewayEmbedTextsRequest(texts=list(texts), float16=float16))

    @_errors
    async def search_text(self, dataset: str, text: str, top_k: int = 10,
                          filter: common_pb2.Filter | None = None) -> list[common_pb2.Hit]:
        request = gateway_pb2.SearchByTextRequest(dataset=dataset, text=text, top_k=top_k, filter=filter)
        return list((await self.stub.SearchByText(request)).hits)

    @_errors
    async def search_image(self, dataset: str, image: bytes | str | Path | int, top_k: int = 10,
                           filter: common_pb2.Filter | None = None) -> list[common_pb2.Hit]:
        return list((await self.stub.SearchByImage(rq.image_query(dataset, image, top_k, filter))).hits)

    @_errors
    async def zero_shot(self, dataset: str, class_names: Iterable[str], *, templates: Iterable[str] = (),
                        ids: Iterable[int] = (), write_labels: bool = False, min_confidence: float = 0.0,
                        limit: int = 0) -> gateway_pb2.GatewayZeroShotResponse:
        request = gateway_pb2.GatewayZeroShotRequest(
            dataset=dataset, class_names=list(class_names), templates=list(templates), ids=list(ids),
            write_labels=write_labels, min_confidence=min_confidence, limit=limit)
        return await self.stub.ZeroShot(request, timeout=600)

    @_errors
    async def start_round(self, dataset: str, config: common_pb2.RoundConfig | None = None,
                          **config_fields: Any) -> gateway_pb2.StartLabelingRoundResponse:
        request = gateway_pb2.StartLabelingRoundRequest(dataset=dataset,
                                                        config=rq.round_config(config, config_fields))
        return await self.stub.StartLabelingRound(request)

    @_errors
    async def review_queue(self, dataset: str, round_id: str = "", limit: int = 0,
                           pending_only: bool = False) -> gateway_pb2.GetReviewQueueResponse:
        return await self.stub.GetReviewQueue(gateway_pb2.GetReviewQueueRequest(
            dataset=dataset, round_id=round_id, limit=limit, pending_only=pending_only))

    @_errors
    async def submit_labels(self, dataset: str, labels: Mapping[int | str, str] | Iterable[tuple[int | str, str]],
                            annotator: str = "") -> gateway_pb2.SubmitLabelsResponse:
        return await self.stub.SubmitLabels(gateway_pb2.SubmitLabelsRequest(
            dataset=dataset, labels=rq.label_list(labels), annotator=annotator))

    @_errors
    async def find_duplicates(self, dataset: str, threshold: float = 0.0) -> list[common_pb2.DuplicateGroup]:
        reply = await self.stub.FindDuplicates(gateway_pb2.FindDuplicatesRequest(dataset=dataset, threshold=threshold),
                                               timeout=600)
        return list(reply.groups)

    @_errors
    async def project(self, dataset: str, method: str | int = "pca", dims: int = 2,
                      max_points: int = 0) -> gateway_pb2.GatewayProjectResponse:
        return await self.stub.Project(gateway_pb2.GatewayProjectRequest(
            dataset=dataset, method=rq.projection_method(method), dims=dims, max_points=max_points), timeout=600)

    @_errors
    async def label_errors(self, dataset: str, limit: int = 0,
                           min_score: float = 0.0) -> list[common_pb2.LabelErrorCandidate]:
        reply = await self.stub.LabelErrors(gateway_pb2.GatewayLabelErrorsRequest(
            dataset=dataset, limit=limit, min_score=min_score), timeout=600)
        return list(reply.candidates)

    @_errors
    async def outliers(self, dataset: str, limit: int = 0) -> list[common_pb2.OutlierScore]:
        reply = await self.stub.Outliers(gateway_pb2.GatewayOutliersRequest(dataset=dataset, limit=limit), timeout=600)
        return list(reply.outliers)

    @_errors
    async def export(self, dataset: str, format: str | int = "jsonl", *, out: str | Path | None = None,
                     review_queue_only: bool = False, image_url_prefix: str = "",
                     filter: common_pb2.Filter | None = None) -> bytes:
        request = gateway_pb2.GatewayExportRequest(
            dataset=dataset, format=rq.export_format(format), filter=filter, review_queue_only=review_queue_only,
            image_url_prefix=image_url_prefix)
        chunks = [r.chunk async for r in self.stub.Export(request, timeout=600)]
        data = b"".join(chunks)
        if out is not None:
            await asyncio.to_thread(Path(out).write_bytes, data)
        return data
