"""A collection released under a running label store (as after a Milvus restart): the call that meets it
gets UNAVAILABLE (which clients retry, never INTERNAL) and the retry reloads it and succeeds."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from grpc import aio
from pymilvus import MilvusClient

from services.labelstore.testing import running_labelstore
from tagalong.runtime import vectors
from tagalong.v1 import labelstore_pb2 as pb
from tagalong.v1 import labelstore_pb2_grpc
from tests.fixtures.labelstore import unique_prefix

DIM = 8


@pytest.mark.milvus_server
async def test_released_collection_is_unavailable_then_reloaded(milvus_server_uri: str) -> None:
    rng = np.random.default_rng(3)
    data = rng.standard_normal((10, DIM)).astype(np.float32)
    async with running_labelstore(milvus_server_uri, collection_prefix=unique_prefix()) as address:
        async with aio.insecure_channel(address) as ch:
            stub = labelstore_pb2_grpc.LabelStoreStub(ch)
            await stub.EnsureDataset(pb.EnsureDatasetRequest(name="reload", dim=DIM, model_id="m"), timeout=60)
            await stub.Upsert(pb.UpsertRequest(dataset="reload", items=[
                pb.UpsertItem(id=100 + i, vector=vectors.to_proto(v), uri=f"u/{i}") for i, v in enumerate(data)]),
                timeout=60)
            query = pb.SearchRequest(dataset="reload", queries=[vectors.to_proto(data[4])], top_k=1)
            assert (await stub.Search(query, timeout=60)).results[0].hits[0].id == 104
            (info,) = (await stub.ListDatasets(pb.ListDatasetsRequest(), timeout=60)).datasets
            other = MilvusClient(milvus_server_uri)
            other.release_collection(info.collection)
            other.close()
            with pytest.raises(grpc.aio.AioRpcError) as first:
                await stub.Search(query, timeout=60)
            assert first.value.code() == grpc.StatusCode.UNAVAILABLE, first.value.details()
            again = await stub.Search(query, timeout=60)
            assert again.results[0].hits[0].id == 104
            await stub.DropDataset(pb.DropDatasetRequest(name="reload"), timeout=60)
