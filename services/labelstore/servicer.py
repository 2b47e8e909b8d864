"""The LabelStore gRPC servicer (thin: validation and storage live in the core) and the service object."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, TypeVar

from grpc import aio
from pymilvus.exceptions import MilvusException, MilvusUnavailableException

from services.labelstore import export, filters, records
from services.labelstore.settings import LabelStoreSettings
from services.labelstore.store import LabelStore
from tagalong.runtime.errors import InvalidArgument, Unavailable
from tagalong.v1 import labelstore_pb2 as pb
from tagalong.v1 import labelstore_pb2_grpc

T = TypeVar("T")
_DONE = object()


def _unavailable(err: MilvusException) -> bool:
    """Milvus down or unreachable (retryable), as opposed to a bug in our request."""
    text = str(err).lower()
    return isinstance(err, MilvusUnavailableException) or any(
        word in text for word in ("unavailable", "connect", "deadline exceeded", "not ready")
    )


def _not_loaded(err: MilvusException) -> bool:
    """The collection is not loaded: Milvus restarted (or released it) under a running label store."""
    return "not loaded" in str(err).lower()


async def _in_thread(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Milvus calls block: never on the event loop. Milvus unreachable -> UNAVAILABLE (callers retry)."""
    try:
        return await asyncio.to_thread(fn, *args, **kwargs)
    except MilvusException as err:
        if _not_loaded(err):
            # Forget what we believed loaded: the retry (UNAVAILABLE is retried by every client) reloads it.
            owner = getattr(fn, "__self__", None)
            if isinstance(owner, LabelStore):
                owner.forget_loaded()
            raise Unavailable(f"Milvus is loading the collection again (restarted?); retry: {err.message}") from None
        if _unavailable(err):
            raise Unavailable(f"Milvus unavailable: {err.message}") from None
        raise


async def _drain(it: Iterator[T]) -> AsyncIterator[T]:
    """A blocking iterator consumed one item at a time in a worker thread."""
    while True:
        item = await _in_thread(next, it, _DONE)
        if item is _DONE:
            return
        yield item  # type: ignore[misc]


class LabelStoreService(labelstore_pb2_grpc.LabelStoreServicer):
    """Serves one Milvus (Lite file or server) through the core LabelStore."""

    name = "labelstore"
    service_names = (pb.DESCRIPTOR.services_by_name["LabelStore"].full_name,)

    def __init__(self, settings: LabelStoreSettings) -> None:
        self.settings = settings
        self.store = LabelStore(settings)

    def register(self, server: aio.Server) -> None:
        labelstore_pb2_grpc.add_LabelStoreServicer_to_server(self, server)

    async def start(self) -> None:
        """Health turns SERVING only after this: Milvus answered and the metadata collection is there."""
        await _in_thread(self.store.connect)

    async def stop(self) -> None:
        await _in_thread(self.store.close)

    def _expr(self, request: Any) -> str:
        f = request.filter if request.HasField("filter") else None
        return filters.filter_expr(
            f, max_label_length=self.settings.max_label_length, max_uri_length=self.settings.max_uri_length
        )

    # ---- datasets ---------------------------------------------------------------------------------------
    async def EnsureDataset(
        self, request: pb.EnsureDatasetRequest, context: aio.ServicerContext
    ) -> pb.EnsureDatasetResponse:
        ds, created = await _in_thread(self.store.ensure_dataset, request.name, request.dim, request.model_id)
        count = await _in_thread(self.store.count, ds.name)
        return pb.EnsureDatasetResponse(dataset=records.dataset_info(ds, count), created=created)

    async def ListDatasets(
        self, request: pb.ListDatasetsRequest, context: aio.ServicerContext
    ) -> pb.ListDatasetsResponse:
        found = await _in_thread(self.store.list_datasets)
        return pb.ListDatasetsResponse(datasets=[records.dataset_info(ds, n) for ds, n in found])

    async def DropDataset(
        self, request: pb.DropDatasetRequest, context: aio.ServicerContext
    ) -> pb.DropDatasetResponse:
        return pb.DropDatasetResponse(dropped=await _in_thread(self.store.drop_dataset, request.name))

    # ---- writes -----------------------------------------------------------------------------------------
    async def Upsert(
        self, request: pb.UpsertRequest, context: aio.ServicerContext
    ) -> pb.UpsertResponse:
        res = await _in_thread(
            self.store.upsert, request.dataset, list(request.items), check_duplicates=request.check_duplicates,
            duplicate_threshold=request.duplicate_threshold,
        )
        return pb.UpsertResponse(
            upserted=res.upserted, inserted=res.inserted, ids=res.ids,
            duplicates=[pb.DuplicateMatch(**d) for d in res.duplicates],
        )

    async def UpsertStream(
        self, request_iterator: AsyncIterator[pb.UpsertStreamRequest], context: aio.ServicerContext
    ) -> pb.UpsertStreamResponse:
        dataset = ""
        pending: list[pb.UpsertItem] = []
        upserted = inserted = 0
        batch = self.settings.write_batch_rows
        async for msg in request_iterator:
            if not dataset:
                if not msg.dataset:
                    raise InvalidArgument("the first message of UpsertStream must name the dataset")
                dataset = msg.dataset
            elif msg.dataset and msg.dataset != dataset:
                raise InvalidArgument(f"one stream writes one dataset: got {msg.dataset!r} after {dataset!r}")
            pending.extend(msg.items)
            while len(pending) >= batch:
                res = await _in_thread(self.store.upsert, dataset, pending[:batch])
                upserted, inserted = upserted + res.upserted, inserted + res.inserted
                del pending[:batch]
        if pending:
            res = await _in_thread(self.store.upsert, dataset, pending)
            upserted, inserted = upserted + res.upserted, inserted + res.inserted
        return pb.UpsertStreamResponse(upserted=upserted, inserted=inserted)

    async def SetLabels(
        self, request: pb.SetLabelsRequest, context: aio.ServicerContext
    ) -> pb.SetLabelsResponse:
        res = await _in_thread(self.store.set_labels, request.dataset, list(request.assignments))
        return pb.SetLabelsResponse(
            changed=res.changed, unchanged=res.unchanged, skipped_human=res.skipped_human,
            missing_ids=res.missing_ids, changed_ids=res.changed_ids,
        )

    async def Delete(
        self, request: pb.DeleteRequest, context: aio.ServicerContext
    ) -> pb.DeleteResponse:
        return pb.DeleteResponse(deleted=await _in_thread(self.store.delete, request.dataset, list(request.ids)))

    # ---- reads ------------------------------------------------------------------------------------------
    async def Get(
        self, request: pb.GetRequest, context: aio.ServicerContext
    ) -> pb.GetResponse:
        rows, missing = await _in_thread(self.store.get, request.dataset, list(request.ids), request.include_vectors)
        return pb.GetResponse(records=[records.record(r) for r in rows], missing_ids=missing)

    async def Count(
        self, request: pb.CountRequest, context: aio.ServicerContext
    ) -> pb.CountResponse:
        expr = self._expr(request)
        return pb.CountResponse(count=await _in_thread(self.store.count, request.dataset, expr))

    async def Search(
        self, request: pb.SearchRequest, context: aio.ServicerContext
    ) -> pb.SearchResponse:
        expr = self._expr(request)
        results = await _in_thread(self.store.search, request.dataset, list(request.queries), request.top_k, expr)
        return pb.SearchResponse(results=[pb.SearchResult(hits=[records.hit(h) for h in hits]) for hits in results])

    async def ScanEmbeddings(
        self, request: pb.ScanEmbeddingsRequest, context: aio.ServicerContext
    ) -> AsyncIterator[pb.ScanEmbeddingsResponse]:
        expr = self._expr(request)
        after = request.after_id if request.HasField("after_id") else 0
        total, pages = await _in_thread(
            self.store.scan, request.dataset, expr, request.page_size, after, request.include_vectors
        )
        sent, last = 0, after
        async for page in _drain(pages):
            sent += len(page)
            last = int(page[-1]["id"])
            yield pb.ScanEmbeddingsResponse(
                records=[records.record(r) for r in page], last_id=last, sent=sent, total=total
            )
        if sent == 0:  # one message even for an empty scan, so callers always learn the total
            yield pb.ScanEmbeddingsResponse(last_id=last, sent=0, total=total)

    async def NearDuplicates(
        self, request: pb.NearDuplicatesRequest, context: aio.ServicerContext
    ) -> pb.NearDuplicatesResponse:
        if request.vectors:
            per_query = await _in_thread(
                self.store.duplicates_of, request.dataset, list(request.vectors), request.threshold,
                request.max_neighbors,
            )
            return pb.NearDuplicatesResponse(
                per_query=[pb.DuplicateMatches(matches=[records.hit(h) for h in hits]) for hits in per_query]
            )
        groups = await _in_thread(
            self.store.duplicate_groups, request.dataset, request.threshold, request.max_neighbors
        )
        return pb.NearDuplicatesResponse(groups=[records.group(g) for g in groups])

    async def Export(
        self, request: pb.ExportRequest, context: aio.ServicerContext
    ) -> AsyncIterator[pb.ExportResponse]:
        expr = self._expr(request)
        await _in_thread(self.store.dataset, request.dataset)  # NOT_FOUND before the first chunk
        ids = list(request.ids)
        chunks = export.export(
            int(request.format), lambda: self.store.iter_rows(request.dataset, expr, ids),
            chunk_bytes=self.settings.export_chunk_bytes, image_url_prefix=request.image_url_prefix,
        )
        async for chunk, rows in _drain(chunks):
            yield pb.ExportResponse(chunk=chunk, rows=rows)
