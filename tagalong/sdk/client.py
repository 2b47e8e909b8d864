"""The blocking client: one method per Gateway RPC, plus ingest_dir / watch / wait conveniences."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

import grpc

from tagalong.runtime.channels import call_metadata, make_sync_channel
from tagalong.runtime.settings import ClientSettings
from tagalong.sdk import _requests as rq
from tagalong.sdk._requests import DEFAULT_ADDRESS, ItemLike, JobFailedError, TagalongError, is_terminal
from tagalong.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc

F = TypeVar("F", bound=Callable[..., Any])


def _errors(fn: F) -> F:
    @functools.wraps(fn)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except grpc.RpcError as err:
            raise TagalongError.of(err) from None

    return wrapped  # type: ignore[return-value]


class Client:
    """`Client("127.0.0.1:50050", token=None)`; errors are raised as TagalongError(code, details)."""

    def __init__(self, address: str = DEFAULT_ADDRESS, token: str | None = None, timeout: float = 60.0) -> None:
        self.address = address
        self.timeout = timeout
        self._settings = ClientSettings(auth_token=token, deadline_seconds=timeout)
        self._channel = make_sync_channel(address, self._settings)
        self.stub = gateway_pb2_grpc.GatewayStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _kw(self, timeout: float | None = None) -> dict[str, Any]:
        return {"metadata": call_metadata(self._settings), "timeout": timeout or self.timeout}

    # ---- datasets and ingest ----

    @_errors
    def create_dataset(self, name: str, classes: Iterable[str] = ()) -> gateway_pb2.Dataset:
        return self.stub.CreateDataset(gateway_pb2.CreateDatasetRequest(name=name, classes=list(classes)),
                                       **self._kw()).dataset

    @_errors
    def list_datasets(self) -> list[gateway_pb2.Dataset]:
        return list(self.stub.ListDatasets(gateway_pb2.GatewayListDatasetsRequest(), **self._kw()).datasets)

    @_errors
    def ingest(self, dataset: str, items: Iterable[ItemLike], *, check_duplicates: bool = False,
               duplicate_threshold: float = 0.0, on_item: Callable[[], None] | None = None,
               timeout: float = 3600.0) -> gateway_pb2.IngestResponse:
        """Streams the items (bytes, local files, or IngestItem with a server path); returns the job."""
        requests = rq.ingest_requests(dataset, items, check_duplicates, duplicate_threshold, on_item)
        return self.stub.Ingest(requests, **self._kw(timeout))

    def ingest_dir(self, dataset: str, directory: str | Path, *, labels_from_dirs: bool = False,
                   server_paths: bool = False, check_duplicates: bool = False,
                   on_item: Callable[[], None] | None = None) -> gateway_pb2.IngestResponse:
        """Ingests every image under a directory (uploaded, or read by the gateway with server_paths)."""
        items = rq.dir_items(directory, labels_from_dirs, server_paths)
        return self.ingest(dataset, items, check_duplicates=check_duplicates, on_item=on_item)

    # ---- jobs ----

    @_errors
    def get_job(self, job_id: str) -> gateway_pb2.Job:
        return self.stub.GetJob(gateway_pb2.GetJobRequest(job_id=job_id), **self._kw()).job

    def watch(self, job_id: str, interval: float = 0.5, timeout: float | None = None) -> Iterator[gateway_pb2.Job]:
        """Progress updates until the job ends (the last one is the final state).

        A stream cut by the server (UNAVAILABLE: a restart, or its connection-age limit) is resumed.
        """
        request = gateway_pb2.WatchJobRequest(job_id=job_id, interval_seconds=interval)
        deadline = None if timeout is None else time.monotonic() + timeout
        failures = 0
        while True:
            left = None if deadline is None else max(deadline - time.monotonic(), 0.001)
            try:
                for reply in self.stub.WatchJob(request, metadata=call_metadata(self._settings), timeout=left):
                    failures = 0
                    yield reply.job
                return
            except grpc.RpcError as err:
                failures += 1
                if not rq.resumable(err, failures):
                    raise TagalongError.of(err) from None
                time.sleep(rq.backoff(failures))

    def wait(self, job_id: str, timeout: float | None = None, interval: float = 0.5,
             on_update: Callable[[gateway_pb2.Job], None] | None = None) -> gateway_pb2.Job:
        """Blocks until the job ends; returns it (PARTIAL included), raises JobFailedError when it FAILED."""
        deadline = None if timeout is None else time.monotonic() + timeout
        job: gateway_pb2.Job | None = None
        for job in self.watch(job_id, interval, timeout=None if deadline is None else deadline - time.monotonic()):
            if on_update is not None:
                on_update(job)
        if job is None or not is_terminal(job):
            job = self.get_job(job_id)
        if job.state == gateway_pb2.JOB_STATE_FAILED:
            raise JobFailedError(job)
        return job

    # ---- embedding and search ----

    @_errors
    def embed_images(self, images: Iterable[bytes], float16: bool = False) -> gateway_pb2.GatewayEmbedImagesResponse:
        return self.stub.EmbedImages(gateway_pb2.GatewayEmbedImagesRequest(images=list(images), float16=float16),
                                     **self._kw())

    @_errors
    def embed_texts(self, texts: Iterable[str], float16: bool = False) -> gateway_pb2.GatewayEmbedTextsResponse:
        return self.stub.EmbedTexts(gateway_pb2.GatewayEmbedTextsRequest(texts=list(texts), float16=float16),
                                    **self._kw())

    @_errors
    def search_text(self, dataset: str, text: str, top_k: int = 10,
                    filter: common_pb2.Filter | None = None) -> list[common_pb2.Hit]:
        request = gateway_pb2.SearchByTextRequest(dataset=dataset, text=text, top_k=top_k, filter=filter)
        return list(self.stub.SearchByText(request, **self._kw()).hits)

    @_errors
    def search_image(self, dataset: str, image: bytes | str | Path | int, top_k: int = 10,
                     filter: common_pb2.Filter | None = None) -> list[common_pb2.Hit]:
        """Neighbours of image bytes, a local image file, or a stored id (int)."""
        return list(self.stub.SearchByImage(rq.image_query(dataset, image, top_k, filter), **self._kw()).hits)

    @_errors
    def zero_shot(self, dataset: str, class_names: Iterable[str], *, templates: Iterable[str] = (),
                  ids: Iterable[int] = (), write_labels: bool = False, min_confidence: float = 0.0,
                  limit: int = 0) -> gateway_pb2.GatewayZeroShotResponse:
        request = gateway_pb2.GatewayZeroShotRequest(
            dataset=dataset, class_names=list(class_names), templates=list(templates), ids=list(ids),
            write_labels=write_labels, min_confidence=min_confidence, limit=limit)
        return self.stub.ZeroShot(request, **self._kw(600))

    # ---- rounds and labels ----

    @_errors
    def start_round(self, dataset: str, config: common_pb2.RoundConfig | None = None,
                    **config_fields: Any) -> gateway_pb2.StartLabelingRoundResponse:
        """Starts a labelling round job; RoundConfig fields may be given as keywords (k=10, seed=0, ...)."""
        request = gateway_pb2.StartLabelingRoundRequest(dataset=dataset,
                                                        config=rq.round_config(config, config_fields))
        return self.stub.StartLabelingRound(request, **self._kw())

    @_errors
    def review_queue(self, dataset: str, round_id: str = "", limit: int = 0,
                     pending_only: bool = False) -> gateway_pb2.GetReviewQueueResponse:
        request = gateway_pb2.GetReviewQueueRequest(dataset=dataset, round_id=round_id, limit=limit,
                                                    pending_only=pending_only)
        return self.stub.GetReviewQueue(request, **self._kw())

    @_errors
    def submit_labels(self, dataset: str, labels: Mapping[int | str, str] | Iterable[tuple[int | str, str]],
                      annotator: str = "") -> gateway_pb2.SubmitLabelsResponse:
        """Human labels by stored id (int) or hex sha256 of the image bytes."""
        request = gateway_pb2.SubmitLabelsRequest(dataset=dataset, labels=rq.label_list(labels), annotator=annotator)
        return self.stub.SubmitLabels(request, **self._kw())

    # ---- analysis and export ----

    @_errors
    def find_duplicates(self, dataset: str, threshold: float = 0.0) -> list[common_pb2.DuplicateGroup]:
        request = gateway_pb2.FindDuplicatesRequest(dataset=dataset, threshold=threshold)
        return list(self.stub.FindDuplicates(request, **self._kw(600)).groups)

    @_errors
    def project(self, dataset: str, method: str | int = "pca", dims: int = 2,
                max_points: int = 0) -> gateway_pb2.GatewayProjectResponse:
        request = gateway_pb2.GatewayProjectRequest(dataset=dataset, method=rq.projection_method(method), dims=dims,
                                                    max_points=max_points)
        return self.stub.Project(request, **self._kw(600))

    @_errors
    def label_errors(self, dataset: str, limit: int = 0,
                     min_score: float = 0.0) -> list[common_pb2.LabelErrorCandidate]:
        request = gateway_pb2.GatewayLabelErrorsRequest(dataset=dataset, limit=limit, min_score=min_score)
        return list(self.stub.LabelErrors(request, **self._kw(600)).candidates)

    @_errors
    def outliers(self, dataset: str, limit: int = 0) -> list[common_pb2.OutlierScore]:
        request = gateway_pb2.GatewayOutliersRequest(dataset=dataset, limit=limit)
        return list(self.stub.Outliers(request, **self._kw(600)).outliers)

    @_errors
    def export(self, dataset: str, format: str | int = "jsonl", *, out: str | Path | None = None,
               review_queue_only: bool = False, image_url_prefix: str = "",
               filter: common_pb2.Filter | None = None) -> bytes:
        """The exported file's bytes (also written to `out` when given)."""
        request = gateway_pb2.GatewayExportRequest(
            dataset=dataset, format=rq.export_format(format), filter=filter, review_queue_only=review_queue_only,
            image_url_prefix=image_url_prefix)
        data = b"".join(r.chunk for r in self.stub.Export(request, **self._kw(600)))
        if out is not None:
            Path(out).write_bytes(data)
        return data
