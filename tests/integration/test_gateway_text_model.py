"""Text calls through the gateway on an image-only model (EfficientNet-Lite0): the embedder's
FAILED_PRECONDITION is passed through with a clear message; image calls still work."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
import redis.asyncio as aioredis
from grpc import aio

from gateway.keys import Keys
from gateway.registry import DatasetMeta, Registry
from tagalong.v1 import gateway_pb2, gateway_pb2_grpc
from tests.fixtures.gateway import clean_redis, gateway_settings, running_gateway


async def test_text_calls_on_an_image_only_model(effnet_model_dir: Path, redis_url: str, redis_prefix: str,
                                                 sample_images: list[bytes]) -> None:
    from services.embedder.testing import running_embedder

    client = aioredis.Redis.from_url(redis_url)
    await Registry(client, Keys(redis_prefix)).put_dataset(DatasetMeta("photos", "efficientnet-lite0", 1280))
    await client.aclose()
    async with running_embedder(effnet_model_dir) as embedder:
        settings = gateway_settings(redis_url, redis_prefix, embedder_addr=embedder, labelstore_addr="127.0.0.1:9",
                                    clusterer_addr="127.0.0.1:9")
        try:
            async with running_gateway(settings) as gw, aio.insecure_channel(gw.address) as channel:
                stub = gateway_pb2_grpc.GatewayStub(channel)
                for call in (
                    stub.SearchByText(gateway_pb2.SearchByTextRequest(dataset="photos", text="a red car"), timeout=30),
                    stub.ZeroShot(gateway_pb2.GatewayZeroShotRequest(dataset="photos", class_names=["cat", "dog"]),
                                  timeout=30),
                ):
                    with pytest.raises(aio.AioRpcError) as info:
                        await call
                    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
                    assert "text tower" in (info.value.details() or "")
                with pytest.raises(aio.AioRpcError) as info:
                    await stub.EmbedTexts(gateway_pb2.GatewayEmbedTextsRequest(texts=["x"]), timeout=30)
                assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
                images = await stub.EmbedImages(
                    gateway_pb2.GatewayEmbedImagesRequest(images=[sample_images[0], b"not an image"]), timeout=60)
                assert images.dim == 1280 and images.model_id == "efficientnet-lite0"
                assert [r.WhichOneof("outcome") for r in images.results] == ["vector", "error"]
                assert images.results[1].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
        finally:
            clean_redis(redis_url, redis_prefix)
