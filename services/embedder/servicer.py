"""The thin gRPC layer of the embedder: messages in, core calls, messages out; plus the service object."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import grpc
import numpy as np
from grpc import aio

from services.embedder.core import EmbedderCore, ItemResult
from services.embedder.engine import EmbeddingModel
from services.embedder.settings import EmbedderSettings
from tagalong.runtime.errors import ServiceError
from tagalong.runtime.vectors import to_proto
from tagalong.v1 import common_pb2, embedder_pb2, embedder_pb2_grpc

log = logging.getLogger(__name__)


def _deadline(context: aio.ServicerContext) -> float | None:
    """The call's deadline on the event loop's clock (None when the caller set none)."""
    remaining = context.time_remaining()
    return None if remaining is None else asyncio.get_running_loop().time() + remaining


def _result(item: ItemResult, float16: bool) -> embedder_pb2.EmbedResult:
    if isinstance(item, np.ndarray):
        return embedder_pb2.EmbedResult(vector=to_proto(item, float16=float16))
    return embedder_pb2.EmbedResult(error=common_pb2.ItemError(code=item.code.value[0], message=item.message))


class EmbedderServicer(embedder_pb2_grpc.EmbedderServicer):
    """tagalong.v1.Embedder over an EmbedderCore."""

    def __init__(self, core: EmbedderCore) -> None:
        self.core = core

    def _model(self) -> EmbeddingModel:
        model, _ = self.core.ready()
        return model

    async def EmbedImages(
        self, request: embedder_pb2.EmbedImagesRequest, context: aio.ServicerContext
    ) -> embedder_pb2.EmbedImagesResponse:
        results = await self.core.embed_images(list(request.images), _deadline(context))
        model = self._model()
        return embedder_pb2.EmbedImagesResponse(
            results=[_result(r, request.float16) for r in results], model_id=model.manifest.model_id, dim=model.dim
        )

    async def EmbedTexts(
        self, request: embedder_pb2.EmbedTextsRequest, context: aio.ServicerContext
    ) -> embedder_pb2.EmbedTextsResponse:
        results = await self.core.embed_texts(list(request.texts), _deadline(context))
        model = self._model()
        return embedder_pb2.EmbedTextsResponse(
            results=[_result(r, request.float16) for r in results], model_id=model.manifest.model_id, dim=model.dim
        )

    async def EmbedImageStream(
        self, request_iterator: AsyncIterator[embedder_pb2.EmbedImageStreamRequest], context: aio.ServicerContext
    ) -> AsyncIterator[embedder_pb2.EmbedImageStreamResponse]:
        """Items run concurrently (up to stream_window in flight); results come back as they finish."""
        out: asyncio.Queue[embedder_pb2.EmbedImageStreamResponse | None] = asyncio.Queue()
        window = asyncio.Semaphore(self.core.settings.stream_window)
        deadline = _deadline(context)
        failure: list[BaseException] = []

        async def one(req: embedder_pb2.EmbedImageStreamRequest) -> None:
            try:
                (item,) = await self.core.embed_images([req.image], deadline)
            except ServiceError as err:  # queue full, deadline: this item fails, the stream goes on
                item = err
            finally:
                window.release()
            await out.put(embedder_pb2.EmbedImageStreamResponse(item_id=req.item_id, result=_result(item, req.float16)))

        async def reader() -> None:
            tasks: set[asyncio.Task[None]] = set()
            try:
                async for req in request_iterator:
                    await window.acquire()
                    task = asyncio.create_task(one(req))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                if tasks:
                    await asyncio.gather(*tasks)
            except BaseException as err:  # noqa: BLE001 - reported by the writer below
                failure.append(err)
                for task in tasks:
                    task.cancel()
            finally:
                await out.put(None)

        reading = asyncio.create_task(reader())
        try:
            while (response := await out.get()) is not None:
                yield response
            if failure and not isinstance(failure[0], asyncio.CancelledError):
                raise failure[0]
        finally:
            reading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reading

    async def ModelInfo(
        self, request: embedder_pb2.ModelInfoRequest, context: aio.ServicerContext
    ) -> embedder_pb2.ModelInfoResponse:
        model = self._model()
        m = model.manifest
        p = m.preprocess
        return embedder_pb2.ModelInfoResponse(
            model_id=m.model_id, dim=m.dim, has_text_tower=model.has_text_tower, variant=m.variant,
            providers=model.providers, file_sha256=m.files,
            preprocess=embedder_pb2.PreprocessConfig(
                resize=p.resize, crop=p.crop, mean=list(p.mean), std=list(p.std), interpolation=p.interpolation
            ),
            max_batch_size=self.core.settings.max_batch_size,
            context_length=m.text.context_length if m.text and model.has_text_tower else 0, family=m.family,
        )


class EmbedderService:
    """What the shared server bootstrap runs: register, start (load + warm up), stop."""

    name = "embedder"
    service_names = (embedder_pb2.DESCRIPTOR.services_by_name["Embedder"].full_name,)

    def __init__(self, settings: EmbedderSettings) -> None:
        self.settings = settings
        self.core = EmbedderCore(settings)
        self.servicer = EmbedderServicer(self.core)

    def register(self, server: grpc.aio.Server) -> None:
        embedder_pb2_grpc.add_EmbedderServicer_to_server(self.servicer, server)

    async def start(self) -> None:
        await self.core.start()

    async def stop(self) -> None:
        await self.core.stop()
