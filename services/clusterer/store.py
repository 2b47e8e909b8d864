"""The clusterer's side of the label store: paged scans into arrays and batched SetLabels (gRPC client)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass

import grpc
import numpy as np
from grpc import aio

from tagalong.runtime import errors
from tagalong.runtime.vectors import stack
from tagalong.v1 import common_pb2, labelstore_pb2, labelstore_pb2_grpc

_CODES: dict[grpc.StatusCode, type[errors.ServiceError]] = {
    grpc.StatusCode.NOT_FOUND: errors.NotFound,
    grpc.StatusCode.INVALID_ARGUMENT: errors.InvalidArgument,
    grpc.StatusCode.FAILED_PRECONDITION: errors.FailedPrecondition,
    grpc.StatusCode.RESOURCE_EXHAUSTED: errors.ResourceExhausted,
    grpc.StatusCode.UNAVAILABLE: errors.Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: errors.DeadlineExceeded,
    grpc.StatusCode.UNAUTHENTICATED: errors.Unavailable,
}


def store_error(err: aio.AioRpcError) -> errors.ServiceError:
    """A label-store failure as the clusterer's own error (same code where it is the caller's business)."""
    cls = _CODES.get(err.code(), errors.Unavailable)
    return cls(f"label store: {err.details()}")


@dataclass
class Dataset:
    """Rows of a dataset as arrays (vectors may be empty when not asked for)."""

    ids: np.ndarray  # (n,) int64
    vectors: np.ndarray  # (n, d) float32 or (n, 0)
    labels: list[str]
    sources: np.ndarray  # (n,) LabelSource numbers
    uris: list[str]
    cluster_ids: np.ndarray  # (n,) int64

    @property
    def is_human(self) -> np.ndarray:
        return self.sources == common_pb2.LABEL_SOURCE_HUMAN


class StoreClient:
    """Scans and label writes against one label store."""

    def __init__(self, channel: aio.Channel, *, call_seconds: float, scan_seconds: float, page_size: int) -> None:
        self.stub = labelstore_pb2_grpc.LabelStoreStub(channel)
        self.call_seconds = call_seconds
        self.scan_seconds = scan_seconds
        self.page_size = page_size

    async def pages(
        self, dataset: str, *, include_vectors: bool = True, filter: common_pb2.Filter | None = None
    ) -> AsyncIterator[labelstore_pb2.ScanEmbeddingsResponse]:
        """Every page of a scan, in id order."""
        request = labelstore_pb2.ScanEmbeddingsRequest(
            dataset=dataset, page_size=self.page_size, include_vectors=include_vectors, filter=filter
        )
        try:
            async for page in self.stub.ScanEmbeddings(request, timeout=self.scan_seconds):
                yield page
        except aio.AioRpcError as err:
            raise store_error(err) from None

    async def load(
        self,
        dataset: str,
        *,
        max_points: int,
        on_page: Callable[[int, int], None] | None = None,
        keep: Callable[[int, int], np.ndarray] | None = None,
    ) -> Dataset:
        """The whole dataset with vectors (or the rows `keep(offset, page_len)` selects, for sampling).

        RESOURCE_EXHAUSTED when more than max_points rows would be held in memory.
        """
        ids: list[np.ndarray] = []
        vecs: list[np.ndarray] = []
        labels: list[str] = []
        sources: list[np.ndarray] = []
        uris: list[str] = []
        clusters: list[np.ndarray] = []
        held = 0
        offset = 0
        async for page in self.pages(dataset):
            recs = list(page.records)
            if keep is not None:
                mask = keep(offset, len(recs))
                recs = [r for r, m in zip(recs, mask, strict=True) if m]
            offset += len(page.records)
            held += len(recs)
            if held > max_points:
                raise errors.ResourceExhausted(
                    f"dataset {dataset!r} has more than {max_points} rows (TAGALONG_CLUSTERER_MAX_POINTS)"
                )
            if recs:
                ids.append(np.fromiter((r.id for r in recs), dtype=np.int64, count=len(recs)))
                vecs.append(stack([r.vector for r in recs], field="records.vector"))
                labels.extend(r.label for r in recs)
                sources.append(np.fromiter((r.label_source for r in recs), dtype=np.int32, count=len(recs)))
                uris.extend(r.uri for r in recs)
                clusters.append(np.fromiter((r.cluster_id for r in recs), dtype=np.int64, count=len(recs)))
            if on_page is not None:
                on_page(offset, int(page.total))
        if not ids:
            empty = np.zeros(0, np.int64)
            return Dataset(empty, np.zeros((0, 0), np.float32), [], np.zeros(0, np.int32), [], empty)
        dims = {v.shape[1] for v in vecs}
        if len(dims) > 1:
            raise errors.FailedPrecondition(f"dataset {dataset!r} mixes vector dimensions {sorted(dims)}")
        return Dataset(
            ids=np.concatenate(ids), vectors=np.concatenate(vecs), labels=labels, sources=np.concatenate(sources),
            uris=uris, cluster_ids=np.concatenate(clusters),
        )

    async def count(self, dataset: str) -> int:
        """Rows in the dataset."""
        try:
            reply = await self.stub.Count(labelstore_pb2.CountRequest(dataset=dataset), timeout=self.call_seconds)
        except aio.AioRpcError as err:
            raise store_error(err) from None
        return int(reply.count)

    async def get(self, dataset: str, ids: Sequence[int], batch: int = 1000) -> Dataset:
        """Rows by id with vectors; NOT_FOUND naming the first missing id."""
        parts: list[common_pb2.Record] = []
        for start in range(0, len(ids), batch):
            request = labelstore_pb2.GetRequest(dataset=dataset, ids=ids[start : start + batch], include_vectors=True)
            try:
                reply = await self.stub.Get(request, timeout=self.call_seconds)
            except aio.AioRpcError as err:
                raise store_error(err) from None
            if reply.missing_ids:
                raise errors.NotFound(f"id {reply.missing_ids[0]} is not in dataset {dataset!r}")
            parts.extend(reply.records)
        return Dataset(
            ids=np.fromiter((r.id for r in parts), dtype=np.int64, count=len(parts)),
            vectors=stack([r.vector for r in parts], field="records.vector"),
            labels=[r.label for r in parts], sources=np.array([r.label_source for r in parts], dtype=np.int32),
            uris=[r.uri for r in parts], cluster_ids=np.array([r.cluster_id for r in parts], dtype=np.int64),
        )

    async def set_labels(
        self, dataset: str, assignments: Sequence[labelstore_pb2.LabelAssignment], batch: int
    ) -> int:
        """Write assignments in batches; returns rows changed."""
        changed = 0
        for start in range(0, len(assignments), batch):
            request = labelstore_pb2.SetLabelsRequest(dataset=dataset, assignments=assignments[start : start + batch])
            try:
                reply = await self.stub.SetLabels(request, timeout=self.call_seconds)
            except aio.AioRpcError as err:
                raise store_error(err) from None
            changed += int(reply.changed)
        return changed
