"""The embedder as a real gRPC server on a free port: per-item errors, batching, backpressure, deadlines."""

from __future__ import annotations

import asyncio
import urllib.request
from collections.abc import Sequence
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from skimage import data

from services.embedder import offline
from services.embedder.testing import running_embedder, running_embedder_server
from tagalong.runtime.vectors import from_proto
from tagalong.v1 import embedder_pb2, embedder_pb2_grpc
from tests.fixtures.embedder import encode_image

INVALID_ARGUMENT = grpc.StatusCode.INVALID_ARGUMENT.value[0]


def _vectors(results: Sequence[embedder_pb2.EmbedResult]) -> np.ndarray:
    return np.stack([from_proto(r.vector) for r in results])


@pytest.fixture(scope="module")
def photos() -> list[bytes]:
    arrays = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket(), data.immunohistochemistry()]
    return [encode_image(a, "JPEG", quality=90) for a in arrays]


async def test_embed_images_matches_offline_and_reports_the_model(clip_model_dir: Path, photos: list[bytes]) -> None:
    async with running_embedder(clip_model_dir) as address, aio.insecure_channel(address) as channel:
        health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""))
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        stub = embedder_pb2_grpc.EmbedderStub(channel)
        reply = await stub.EmbedImages(embedder_pb2.EmbedImagesRequest(images=photos), timeout=30)
        info = await stub.ModelInfo(embedder_pb2.ModelInfoRequest(), timeout=10)
    assert reply.model_id == info.model_id == "tagalong/random-clip-w64-l2-seed0"
    assert reply.dim == info.dim == 64
    served = _vectors(reply.results)
    np.testing.assert_allclose(served, offline.embed_images(clip_model_dir, photos), atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(served, axis=1), 1.0, rtol=1e-5)
    assert info.has_text_tower and info.family == "clip" and info.variant == "fp32"
    assert info.context_length == 77 and list(info.providers) == ["CPUExecutionProvider"]
    assert set(info.file_sha256) >= {"image.onnx", "text.onnx"}
    assert (info.preprocess.resize, info.preprocess.crop, info.preprocess.interpolation) == (224, 224, "bicubic")


async def test_one_corrupt_image_in_64_fails_only_that_item(clip_model_dir: Path, photos: list[bytes]) -> None:
    images = [photos[i % len(photos)] for i in range(64)]
    images[17] = b"\xff\xd8\xff\xe0 definitely not a jpeg"
    async with running_embedder(clip_model_dir, max_batch_size=16) as address, aio.insecure_channel(address) as ch:
        reply = await embedder_pb2_grpc.EmbedderStub(ch).EmbedImages(
            embedder_pb2.EmbedImagesRequest(images=images), timeout=60
        )
    assert len(reply.results) == 64
    bad = reply.results[17]
    assert bad.WhichOneof("outcome") == "error"
    assert bad.error.code == INVALID_ARGUMENT and "image" in bad.error.message
    good = [r for i, r in enumerate(reply.results) if i != 17]
    assert all(r.WhichOneof("outcome") == "vector" for r in good)
    vectors = _vectors(good)
    # Same bytes, same vector, wherever they sat in the batch.
    np.testing.assert_allclose(vectors[0], vectors[5], atol=1e-5)


async def test_float16_on_the_wire(clip_model_dir: Path, photos: list[bytes]) -> None:
    async with running_embedder(clip_model_dir) as address, aio.insecure_channel(address) as ch:
        stub = embedder_pb2_grpc.EmbedderStub(ch)
        f32 = await stub.EmbedImages(embedder_pb2.EmbedImagesRequest(images=photos[:2]), timeout=30)
        f16 = await stub.EmbedImages(embedder_pb2.EmbedImagesRequest(images=photos[:2], float16=True), timeout=30)
    assert len(f16.results[0].vector.float16_le) == 2 * 64 and not f16.results[0].vector.values
    np.testing.assert_allclose(_vectors(f16.results), _vectors(f32.results), atol=2e-3)


async def test_texts_embed_on_clip_and_fail_precondition_on_an_image_only_model(
    clip_model_dir: Path, effnet_model_dir: Path
) -> None:
    texts = ["a photo of a cat", "a photo of a dog", "a photo of a cat"]
    async with running_embedder(clip_model_dir) as address, aio.insecure_channel(address) as ch:
        reply = await embedder_pb2_grpc.EmbedderStub(ch).EmbedTexts(
            embedder_pb2.EmbedTextsRequest(texts=texts), timeout=30
        )
    vectors = _vectors(reply.results)
    assert vectors.shape == (3, 64)
    np.testing.assert_allclose(vectors[0], vectors[2], atol=1e-6)
    assert float(vectors[0] @ vectors[1]) < 0.9999
    np.testing.assert_allclose(vectors, offline.embed_texts(clip_model_dir, texts), atol=1e-5)

    async with running_embedder(effnet_model_dir) as address, aio.insecure_channel(address) as ch:
        stub = embedder_pb2_grpc.EmbedderStub(ch)
        with pytest.raises(aio.AioRpcError) as info:
            await stub.EmbedTexts(embedder_pb2.EmbedTextsRequest(texts=["a cat"]), timeout=30)
        model = await stub.ModelInfo(embedder_pb2.ModelInfoRequest(), timeout=10)
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "no text tower" in (info.value.details() or "")
    assert not model.has_text_tower and model.context_length == 0 and model.dim == 1280


async def test_image_stream_returns_every_item_by_id(clip_model_dir: Path, photos: list[bytes]) -> None:
    items = [(f"item-{i}", photos[i % len(photos)]) for i in range(20)]
    items[7] = ("item-7", b"garbage")

    async def requests():  # type: ignore[no-untyped-def]
        for item_id, image in items:
            yield embedder_pb2.EmbedImageStreamRequest(item_id=item_id, image=image)

    async with running_embedder(clip_model_dir, stream_window=4) as address, aio.insecure_channel(address) as ch:
        got = {}
        async for reply in embedder_pb2_grpc.EmbedderStub(ch).EmbedImageStream(requests(), timeout=60):
            got[reply.item_id] = reply.result
    assert set(got) == {item_id for item_id, _ in items}
    assert got["item-7"].error.code == INVALID_ARGUMENT
    expected = offline.embed_images(clip_model_dir, photos)
    for i in (0, 3, 19):
        np.testing.assert_allclose(from_proto(got[f"item-{i}"].vector), expected[i % len(photos)], atol=1e-5)


async def test_concurrent_single_image_callers_are_batched_together(
    clip_model_dir: Path, photos: list[bytes]
) -> None:
    # Small (CIFAR-sized) images decode fast, so callers reach the batcher close together.
    tiny = [encode_image(np.ascontiguousarray(a[::12, ::12])) for a in (data.astronaut(), data.coffee())]
    async with running_embedder_server(clip_model_dir, max_batch_size=32, max_delay_ms=250) as running:
        batcher = running.service.core.image_batcher
        async with aio.insecure_channel(running.address) as ch:
            stub = embedder_pb2_grpc.EmbedderStub(ch)
            before = batcher.batches_run
            replies = await asyncio.gather(*(
                stub.EmbedImages(embedder_pb2.EmbedImagesRequest(images=[tiny[i % 2]]), timeout=30)
                for i in range(24)
            ))
        sizes = batcher.batch_sizes[before:]
    assert all(r.results[0].WhichOneof("outcome") == "vector" for r in replies)
    assert sum(sizes) == 24
    # 24 callers, one image each, served by far fewer model runs.
    assert len(sizes) <= 8 and max(sizes) >= 6, sizes


class Gate:
    """Holds the model back so that the queue fills: wraps the batcher's real runner."""

    def __init__(self, run) -> None:  # type: ignore[no-untyped-def]
        self.run = run
        self.open = asyncio.Event()
        self.sizes: list[int] = []

    async def __call__(self, payloads):  # type: ignore[no-untyped-def]
        self.sizes.append(len(payloads))
        await self.open.wait()
        return await self.run(payloads)


async def test_full_queue_is_resource_exhausted_at_once(clip_model_dir: Path, photos: list[bytes]) -> None:
    settings = {"max_batch_size": 1, "max_delay_ms": 0, "queue_size": 2}
    async with running_embedder_server(clip_model_dir, **settings) as running:
        batcher = running.service.core.image_batcher
        gate = Gate(batcher.run)
        batcher.run = gate
        async with aio.insecure_channel(running.address) as ch:
            stub = embedder_pb2_grpc.EmbedderStub(ch)
            first = asyncio.ensure_future(
                stub.EmbedImages(embedder_pb2.EmbedImagesRequest(images=[photos[0]]), timeout=30)
            )
            while not gate.sizes:
                await asyncio.sleep(0.01)
            second = asyncio.ensure_future(
                stub.EmbedImages(embedder_pb2.EmbedImagesRequest(images=photos[1:3]), timeout=30)
            )
            while batcher.depth < 2:
                await asyncio.sleep(0.01)
            loop = asyncio.get_running_loop()
            started = loop.time()
            with pytest.raises(aio.AioRpcError) as info:
                await stub.EmbedImages(embedder_pb2.EmbedImagesRequest(images=[photos[3]]), timeout=30)
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert loop.time() - started < 2.0
            gate.open.set()
            assert len((await first).results) == 1 and len((await second).results) == 2


async def test_expired_request_is_dropped_before_inference(clip_model_dir: Path, photos: list[bytes]) -> None:
    async with running_embedder_server(clip_model_dir, max_batch_size=8, max_delay_ms=0) as running:
        batcher = running.service.core.image_batcher
        gate = Gate(batcher.run)
        batcher.run = gate
        async with aio.insecure_channel(running.address) as ch:
            stub = embedder_pb2_grpc.EmbedderStub(ch)
            blocker = asyncio.ensure_future(
                stub.EmbedImages(embedder_pb2.EmbedImagesRequest(images=[photos[0]]), timeout=30)
            )
            while not gate.sizes:
                await asyncio.sleep(0.01)
            with pytest.raises(aio.AioRpcError) as info:
                await stub.EmbedImages(embedder_pb2.EmbedImagesRequest(images=photos[1:4]), timeout=0.5)
            assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            patient = asyncio.ensure_future(
                stub.EmbedImages(embedder_pb2.EmbedImagesRequest(images=[photos[4]]), timeout=30)
            )
            while batcher.depth < 4:
                await asyncio.sleep(0.01)
            gate.open.set()
            await blocker
            assert (await patient).results[0].WhichOneof("outcome") == "vector"
    # The three expired images never reached the model: batches were [blocker] and [patient].
    assert gate.sizes == [1, 1]


async def test_metrics_show_batches_queue_and_stages(clip_model_dir: Path, photos: list[bytes]) -> None:
    async with running_embedder_server(clip_model_dir, metrics_port=0) as running:
        async with aio.insecure_channel(running.address) as ch:
            await embedder_pb2_grpc.EmbedderStub(ch).EmbedImages(
                embedder_pb2.EmbedImagesRequest(images=photos), timeout=30
            )
        port = running.metrics_port
        body = await asyncio.to_thread(
            lambda: urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        )
    for name in (
        'tagalong_embedder_batch_size_count{kind="image"}',
        'tagalong_embedder_stage_seconds_count{stage="decode"}',
        'tagalong_embedder_stage_seconds_count{stage="infer"}',
        'tagalong_embedder_queue_depth{kind="image"}',
        'tagalong_embedder_items_total{kind="image",outcome="ok"}',
        'tagalong_embedder_items_per_second{kind="image"}',
    ):
        assert name in body, name
