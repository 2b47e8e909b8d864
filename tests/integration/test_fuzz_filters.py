"""Filter values that would break or widen a Milvus expression (quotes, backslashes, `" or 1==1`, LIKE
wildcards, huge strings) against a real label store on a real Milvus server: each matches exactly the rows
it names literally, or is refused as INVALID_ARGUMENT; never more rows, never INTERNAL."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import grpc
import numpy as np
import pytest
import pytest_asyncio
from grpc import aio

from tagalong.runtime.ids import content_sha256, id_from_sha256
from tagalong.v1 import common_pb2, labelstore_pb2, labelstore_pb2_grpc

ROWS = [  # (uri, label)
    ("a/1.png", "cat"), ("a/2.png", "cat"), ("a/3.png", "dog"), ("b/100%_done.png", 'it"s'),
    ("b/back\\slash.png", "back\\slash"), ("c/quote\".png", "o'neil"), ("d/x.png", ""),
]
DIM = 8
INJECT = '" or 1==1 or "'


pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def store(milvus_server_uri: str) -> AsyncIterator[labelstore_pb2_grpc.LabelStoreStub]:
    from services.labelstore.testing import running_labelstore

    prefix = f"fz{uuid.uuid4().hex[:8]}_"
    async with running_labelstore(milvus_server_uri, collection_prefix=prefix) as address:
        async with aio.insecure_channel(address) as channel:
            stub = labelstore_pb2_grpc.LabelStoreStub(channel)
            await stub.EnsureDataset(labelstore_pb2.EnsureDatasetRequest(name="filt", dim=DIM, model_id="m"))
            rng = np.random.default_rng(0)
            items = []
            for uri, label in ROWS:
                v = rng.standard_normal(DIM).astype(np.float32)
                sha = content_sha256(uri.encode())
                vector = common_pb2.Vector(values=(v / np.linalg.norm(v)).tolist())
                items.append(labelstore_pb2.UpsertItem(id=id_from_sha256(sha), content_sha256=sha, uri=uri, label=label,
                                                       vector=vector))
            await stub.Upsert(labelstore_pb2.UpsertRequest(dataset="filt", items=items))
            yield stub
            await stub.DropDataset(labelstore_pb2.DropDatasetRequest(name="filt"))


CASES = [
    pytest.param(common_pb2.Filter(labels=["cat"]), 2, id="plain-label"),
    pytest.param(common_pb2.Filter(labels=[INJECT]), 0, id="label-or-1==1"),
    pytest.param(common_pb2.Filter(labels=['cat" or label != "']), 0, id="label-close-quote"),
    pytest.param(common_pb2.Filter(labels=["cat\\"]), 0, id="label-trailing-backslash"),
    pytest.param(common_pb2.Filter(labels=['it"s']), 1, id="label-with-quote-literal"),
    pytest.param(common_pb2.Filter(labels=["back\\slash"]), 1, id="label-with-backslash-literal"),
    pytest.param(common_pb2.Filter(labels=["o'neil"]), 1, id="label-with-apostrophe-literal"),
    pytest.param(common_pb2.Filter(labels=["cat", INJECT]), 2, id="injection-beside-a-real-label"),
    pytest.param(common_pb2.Filter(uri_prefix="a/"), 3, id="uri-prefix"),
    pytest.param(common_pb2.Filter(uri_prefix="%"), 0, id="uri-prefix-like-wildcard"),
    pytest.param(common_pb2.Filter(uri_prefix="_"), 0, id="uri-prefix-underscore"),
    pytest.param(common_pb2.Filter(uri_prefix="b/100%"), 1, id="uri-prefix-literal-percent"),
    pytest.param(common_pb2.Filter(uri_prefix=f"a/{INJECT}"), 0, id="uri-prefix-or-1==1"),
    pytest.param(common_pb2.Filter(uri_prefix='c/quote"'), 1, id="uri-prefix-with-quote"),
    pytest.param(common_pb2.Filter(round_id=INJECT), 0, id="round-id-or-1==1"),
    pytest.param(common_pb2.Filter(labels=["\\\" or 1==1 or \\\""]), 0, id="escaped-escape"),
    pytest.param(common_pb2.Filter(labels=["x" * 100_000]), None, id="huge-label"),
    pytest.param(common_pb2.Filter(uri_prefix="é" * 10_000), None, id="huge-uri-prefix"),
    pytest.param(common_pb2.Filter(labels=["a\x00b"]), None, id="nul-in-label"),
    pytest.param(common_pb2.Filter(min_confidence=float("nan")), None, id="nan-confidence"),
    pytest.param(common_pb2.Filter(cluster_id=-(2**63)), 0, id="min-int64-cluster"),
]


@pytest.mark.parametrize(("flt", "expected"), CASES)
async def test_filter_values_are_literals(store: labelstore_pb2_grpc.LabelStoreStub, flt: common_pb2.Filter,
                                          expected: int | None) -> None:
    """expected None: either INVALID_ARGUMENT or 0 rows."""
    try:
        count = (await store.Count(labelstore_pb2.CountRequest(dataset="filt", filter=flt))).count
    except aio.AioRpcError as err:
        assert expected is None, f"{err.code()} {err.details()}"
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err.details()
        return
    assert count == (expected or 0)
    query = common_pb2.Vector(values=[1.0] + [0.0] * (DIM - 1))
    reply = await store.Search(labelstore_pb2.SearchRequest(dataset="filt", queries=[query], top_k=10, filter=flt))
    assert len(reply.results[0].hits) == count


@pytest.mark.parametrize("after_id", [pytest.param(-(2**63), id="min-int64"), pytest.param(-1, id="minus-one"),
                                      pytest.param(2**63 - 1, id="max-int64")])
async def test_scan_after_extreme_ids(store: labelstore_pb2_grpc.LabelStoreStub, after_id: int) -> None:
    """ScanEmbeddings(after_id=...) at the ends of int64: rows or INVALID_ARGUMENT, never INTERNAL."""
    try:
        pages = [p async for p in store.ScanEmbeddings(labelstore_pb2.ScanEmbeddingsRequest(dataset="filt",
                                                                                            after_id=after_id))]
    except aio.AioRpcError as err:
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err.details()
        return
    rows = sum(len(p.records) for p in pages)
    assert rows == (0 if after_id == 2**63 - 1 else len(ROWS))
