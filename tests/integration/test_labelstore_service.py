"""The label store over gRPC against both Milvus Lite and the Milvus server (the `milvus_uri` fixture)."""

from __future__ import annotations

import csv
import hashlib
import io
import json

import grpc
import numpy as np
import pytest
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tagalong.runtime import vectors
from tagalong.runtime.ids import id_from_sha256
from tagalong.v1 import common_pb2 as c
from tagalong.v1 import labelstore_pb2 as pb
from tests.fixtures.labelstore import LabelStoreHandle

DIM = 16
T = 60  # seconds: deadline of each call


def sha(i: int) -> str:
    return hashlib.sha256(f"image-{i}".encode()).hexdigest()


def item(i: int, vec: np.ndarray, label: str = "", uri: str | None = None) -> pb.UpsertItem:
    return pb.UpsertItem(
        content_sha256=sha(i), vector=vectors.to_proto(vec), uri=uri if uri is not None else f"imgs/{i}.jpg",
        label=label,
    )


def vecs(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)


async def ensure(ls: LabelStoreHandle, name: str = "photos", dim: int = DIM) -> pb.EnsureDatasetResponse:
    return await ls.stub.EnsureDataset(pb.EnsureDatasetRequest(name=name, dim=dim, model_id="test-model"), timeout=T)


async def count(ls: LabelStoreHandle, f: c.Filter | None = None, name: str = "photos") -> int:
    return (await ls.stub.Count(pb.CountRequest(dataset=name, filter=f), timeout=T)).count


async def code_of(call) -> grpc.StatusCode:  # type: ignore[no-untyped-def]
    try:
        await call
    except aio.AioRpcError as err:
        return err.code()
    return grpc.StatusCode.OK


async def test_health_serving_and_datasets(labelstore: LabelStoreHandle) -> None:
    async with aio.insecure_channel(labelstore.address) as ch:
        reply = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    first = await ensure(labelstore)
    assert first.created and first.dataset.dim == DIM and first.dataset.count == 0
    assert first.dataset.index_type == ("FLAT" if labelstore.milvus_uri.endswith(".db") else "HNSW")
    again = await ensure(labelstore)
    assert not again.created
    assert await code_of(ensure(labelstore, dim=DIM + 1)) == grpc.StatusCode.FAILED_PRECONDITION
    assert await code_of(ensure(labelstore, name="bad-name")) == grpc.StatusCode.INVALID_ARGUMENT
    assert await code_of(ensure(labelstore, name="x" * 65)) == grpc.StatusCode.INVALID_ARGUMENT
    listed = await labelstore.stub.ListDatasets(pb.ListDatasetsRequest(), timeout=T)
    assert [d.name for d in listed.datasets] == ["photos"]
    missing = pb.CountRequest(dataset="nothing_here")
    assert await code_of(labelstore.stub.Count(missing, timeout=T)) == grpc.StatusCode.NOT_FOUND
    dropped = await labelstore.stub.DropDataset(pb.DropDatasetRequest(name="photos"), timeout=T)
    assert dropped.dropped
    dropped = await labelstore.stub.DropDataset(pb.DropDatasetRequest(name="photos"), timeout=T)
    assert not dropped.dropped
    assert await code_of(count(labelstore)) == grpc.StatusCode.NOT_FOUND


async def test_upsert_is_idempotent_by_content_hash_and_keeps_labels(labelstore: LabelStoreHandle) -> None:
    await ensure(labelstore)
    v = vecs(30)
    first = await labelstore.stub.Upsert(
        pb.UpsertRequest(dataset="photos", items=[item(i, v[i], label="cat" if i < 5 else "") for i in range(30)]),
        timeout=T,
    )
    assert (first.upserted, first.inserted) == (30, 30)
    assert list(first.ids) == [id_from_sha256(sha(i)) for i in range(30)]
    assert await count(labelstore) == 30  # Strong: visible at once
    # A machine label on row 10, then the same bytes again (a redelivered ingest, new vector, new uri).
    await labelstore.stub.SetLabels(pb.SetLabelsRequest(dataset="photos", assignments=[
        pb.LabelAssignment(id=first.ids[10], label="dog", source=c.LABEL_SOURCE_PROPAGATED, confidence=0.7,
                           cluster_id=4, round_id="r1", method="cluster_majority")]), timeout=T)
    again = await labelstore.stub.Upsert(pb.UpsertRequest(dataset="photos", items=[
        item(i, v[i] + 0.01, uri=f"moved/{i}.jpg", label="bird" if i == 0 else "") for i in range(30)]), timeout=T)
    assert (again.upserted, again.inserted) == (30, 0)
    assert await count(labelstore) == 30
    got = await labelstore.stub.Get(pb.GetRequest(dataset="photos", ids=[first.ids[0], first.ids[10]],
                                                  include_vectors=True), timeout=T)
    by_id = {r.id: r for r in got.records}
    human, machine = by_id[first.ids[0]], by_id[first.ids[10]]
    assert (human.label, human.label_source, human.confidence) == ("cat", c.LABEL_SOURCE_HUMAN, 1.0)
    assert (machine.label, machine.label_source, machine.cluster_id, machine.round_id) == (
        "dog", c.LABEL_SOURCE_PROPAGATED, 4, "r1")
    assert machine.confidence == pytest.approx(0.7)
    assert machine.uri == "moved/10.jpg" and machine.content_sha256 == sha(10) and machine.model_id == "test-model"
    np.testing.assert_allclose(vectors.from_proto(machine.vector), v[10] + 0.01, rtol=1e-6)
    assert machine.created_at_ms > 0 and machine.labeled_at_ms >= machine.created_at_ms


BAD_ITEMS = [
    pytest.param(pb.UpsertItem(content_sha256=sha(1), vector=vectors.to_proto(np.ones(DIM + 1))), id="dim"),
    pytest.param(pb.UpsertItem(content_sha256=sha(1), vector=vectors.to_proto(np.zeros(DIM))), id="zero-vector"),
    pytest.param(pb.UpsertItem(vector=vectors.to_proto(np.ones(DIM))), id="no-id"),
    pytest.param(pb.UpsertItem(content_sha256="xyz", vector=vectors.to_proto(np.ones(DIM))), id="bad-sha"),
    pytest.param(pb.UpsertItem(id=-5, vector=vectors.to_proto(np.ones(DIM))), id="negative-id"),
    pytest.param(pb.UpsertItem(id=7, content_sha256=sha(1), vector=vectors.to_proto(np.ones(DIM))),
                 id="id-sha-mismatch"),
    pytest.param(pb.UpsertItem(content_sha256=sha(1), vector=vectors.to_proto(np.ones(DIM)), label="x" * 500),
                 id="long-label"),
]


async def test_bad_items_are_invalid_argument_and_write_nothing(labelstore: LabelStoreHandle) -> None:
    """One dataset for the whole table: creating a collection on the server takes seconds."""
    await ensure(labelstore)
    good = item(2, np.ones(DIM))
    for case in BAD_ITEMS:
        (bad,) = case.values
        with pytest.raises(aio.AioRpcError) as err:
            await labelstore.stub.Upsert(pb.UpsertRequest(dataset="photos", items=[good, bad]), timeout=T)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, case.id
        assert "items[1]" in (err.value.details() or ""), case.id
    assert await count(labelstore) == 0
    bad_query = pb.SearchRequest(dataset="photos", queries=[vectors.to_proto(np.ones(DIM + 3))])
    assert await code_of(labelstore.stub.Search(bad_query, timeout=T)) == grpc.StatusCode.INVALID_ARGUMENT


async def test_filters_search_and_counts(labelstore: LabelStoreHandle) -> None:
    await ensure(labelstore)
    v = vecs(40, seed=1)
    labels = ['cat', 'dog', 'a"b\\c', "x' || id > 0"]
    items = [item(i, v[i], uri=f"{'set_a' if i < 20 else 'set%b'}/{i}.jpg") for i in range(40)]
    up = await labelstore.stub.Upsert(pb.UpsertRequest(dataset="photos", items=items), timeout=T)
    ids = list(up.ids)
    assign = [pb.LabelAssignment(id=ids[i], label=labels[i % 4], confidence=(i % 10) / 10,
                                 source=c.LABEL_SOURCE_HUMAN if i < 8 else c.LABEL_SOURCE_PROPAGATED,
                                 cluster_id=i % 3, round_id="r7") for i in range(32)]
    res = await labelstore.stub.SetLabels(pb.SetLabelsRequest(dataset="photos", assignments=assign), timeout=T)
    assert res.changed == 32 and res.unchanged == 0 and not res.missing_ids
    cases = [
        (c.Filter(), 40),
        (c.Filter(labels=["cat"]), 8),
        (c.Filter(labels=['a"b\\c']), 8),  # quotes and backslashes are data, not syntax
        (c.Filter(labels=["x' || id > 0"]), 8),
        (c.Filter(labels=['" || id > 0 || label == "']), 0),  # an injection attempt matches nothing
        (c.Filter(sources=[c.LABEL_SOURCE_HUMAN]), 8),
        (c.Filter(sources=[c.LABEL_SOURCE_NONE]), 8),
        (c.Filter(sources=[c.LABEL_SOURCE_PROPAGATED], labels=["dog"]), 6),
        (c.Filter(min_confidence=0.5), 8 + sum(1 for i in range(8, 32) if i % 10 >= 5)),  # human labels count as 1.0
        (c.Filter(max_confidence=0.2, sources=[c.LABEL_SOURCE_PROPAGATED]),
         sum(1 for i in range(8, 32) if i % 10 <= 2)),
        (c.Filter(uri_prefix="set_a/"), 20),
        (c.Filter(uri_prefix="set%b/"), 20),  # % is not a wildcard
        (c.Filter(uri_prefix="set"), 40),
        (c.Filter(cluster_id=1), sum(1 for i in range(32) if i % 3 == 1)),
        (c.Filter(round_id="r7"), 32),
    ]
    for f, expected in cases:
        assert await count(labelstore, f) == expected, f
    hits = await labelstore.stub.Search(pb.SearchRequest(
        dataset="photos", queries=[vectors.to_proto(v[1]), vectors.to_proto(v[25])], top_k=5,
        filter=c.Filter(labels=["dog", "cat"])), timeout=T)
    assert len(hits.results) == 2
    for result in hits.results:
        assert 0 < len(result.hits) <= 5
        assert all(h.label in ("dog", "cat") for h in result.hits)
        assert [h.score for h in result.hits] == sorted((h.score for h in result.hits), reverse=True)
    assert hits.results[0].hits[0].id == ids[1] and hits.results[0].hits[0].score == pytest.approx(1.0, abs=1e-4)
    bad = pb.CountRequest(dataset="photos", filter=c.Filter(labels=["bad\nlabel"]))
    assert await code_of(labelstore.stub.Count(bad, timeout=T)) == grpc.StatusCode.INVALID_ARGUMENT
    too_long = pb.CountRequest(dataset="photos", filter=c.Filter(labels=["y" * 1000]))
    assert await code_of(labelstore.stub.Count(too_long, timeout=T)) == grpc.StatusCode.INVALID_ARGUMENT


async def test_human_labels_are_never_overwritten_by_machines(labelstore: LabelStoreHandle) -> None:
    await ensure(labelstore)
    v = vecs(4, seed=2)
    up = await labelstore.stub.Upsert(pb.UpsertRequest(dataset="photos", items=[
        item(0, v[0], label="cat"), item(1, v[1]), item(2, v[2]), item(3, v[3])]), timeout=T)
    a, b, d, e = up.ids
    machine = [
        pb.LabelAssignment(id=a, label="dog", source=c.LABEL_SOURCE_PROPAGATED, confidence=0.99),
        pb.LabelAssignment(id=a, label="", source=c.LABEL_SOURCE_ZERO_SHOT),  # a machine cannot clear it either
        pb.LabelAssignment(id=b, label="dog", source=c.LABEL_SOURCE_ZERO_SHOT, confidence=0.6),
        pb.LabelAssignment(id=12345, label="dog", source=c.LABEL_SOURCE_PROPAGATED, confidence=0.6),
    ]
    res = await labelstore.stub.SetLabels(pb.SetLabelsRequest(dataset="photos", assignments=machine), timeout=T)
    assert (res.changed, res.unchanged, res.skipped_human) == (1, 0, 1)
    assert list(res.missing_ids) == [12345] and list(res.changed_ids) == [b]
    # Same again: unchanged. A human overrides a machine label, and a human may relabel a human label.
    res = await labelstore.stub.SetLabels(pb.SetLabelsRequest(dataset="photos", assignments=machine[2:3]), timeout=T)
    assert (res.changed, res.unchanged) == (0, 1)
    human = [pb.LabelAssignment(id=b, label="bird", source=c.LABEL_SOURCE_HUMAN, method="alice"),
             pb.LabelAssignment(id=a, label="lynx", source=c.LABEL_SOURCE_HUMAN, method="bob")]
    res = await labelstore.stub.SetLabels(pb.SetLabelsRequest(dataset="photos", assignments=human), timeout=T)
    assert res.changed == 2 and set(res.changed_ids) == {a, b}
    # Ingest labels never replace a human label either.
    await labelstore.stub.Upsert(pb.UpsertRequest(dataset="photos", items=[item(1, v[1], label="frog")]), timeout=T)
    got = await labelstore.stub.Get(pb.GetRequest(dataset="photos", ids=[a, b, 999]), timeout=T)
    by_id = {r.id: r for r in got.records}
    assert (by_id[a].label, by_id[a].label_source, by_id[a].label_method) == ("lynx", c.LABEL_SOURCE_HUMAN, "bob")
    assert (by_id[b].label, by_id[b].label_source, by_id[b].confidence) == ("bird", c.LABEL_SOURCE_HUMAN, 1.0)
    assert list(got.missing_ids) == [999] and not by_id[a].HasField("vector")
    clear = [pb.LabelAssignment(id=a, label="", source=c.LABEL_SOURCE_HUMAN)]
    res = await labelstore.stub.SetLabels(pb.SetLabelsRequest(dataset="photos", assignments=clear), timeout=T)
    assert res.changed == 1
    assert await count(labelstore, c.Filter(sources=[c.LABEL_SOURCE_NONE])) == 3  # a, d, e
    assert await count(labelstore, c.Filter(sources=[c.LABEL_SOURCE_HUMAN])) == 1
    deleted = await labelstore.stub.Delete(pb.DeleteRequest(dataset="photos", ids=[d, e, 424242]), timeout=T)
    assert deleted.deleted == 2 and await count(labelstore) == 2


async def test_scan_is_ordered_paged_and_resumable(labelstore: LabelStoreHandle) -> None:
    await ensure(labelstore)
    v = vecs(257, seed=3)
    stream = [pb.UpsertStreamRequest(dataset="photos", items=[item(i, v[i]) for i in range(0, 100)]),
              pb.UpsertStreamRequest(items=[item(i, v[i]) for i in range(100, 257)]),
              pb.UpsertStreamRequest(items=[item(i, v[i]) for i in range(0, 10)])]  # repeats: no new rows
    summary = await labelstore.stub.UpsertStream(iter(stream), timeout=T)
    assert summary.inserted == 257 and summary.upserted in (257, 267)  # repeats in one write batch count once
    pages = [p async for p in labelstore.stub.ScanEmbeddings(
        pb.ScanEmbeddingsRequest(dataset="photos", page_size=50, include_vectors=True), timeout=T)]
    ids = [r.id for p in pages for r in p.records]
    assert ids == sorted(id_from_sha256(sha(i)) for i in range(257))
    assert all(len(p.records) <= 50 for p in pages) and pages[-1].sent == 257 and pages[0].total == 257
    by_id = {id_from_sha256(sha(i)): i for i in range(257)}
    rec = pages[1].records[0]
    np.testing.assert_allclose(vectors.from_proto(rec.vector), v[by_id[rec.id]], rtol=1e-6)
    # Resume after the second page: the rest, nothing repeated.
    rest = [r.id async for p in labelstore.stub.ScanEmbeddings(pb.ScanEmbeddingsRequest(
        dataset="photos", page_size=64, after_id=pages[1].last_id), timeout=T) for r in p.records]
    assert rest == ids[len(pages[0].records) + len(pages[1].records):]
    empty = [p async for p in labelstore.stub.ScanEmbeddings(pb.ScanEmbeddingsRequest(
        dataset="photos", filter=c.Filter(labels=["none-such"])), timeout=T)]
    assert len(empty) == 1 and empty[0].total == 0 and not empty[0].records


async def test_export_formats(labelstore: LabelStoreHandle) -> None:
    await ensure(labelstore)
    v = vecs(12, seed=4)
    up = await labelstore.stub.Upsert(pb.UpsertRequest(dataset="photos", items=[
        item(i, v[i], label="cat" if i < 3 else "", uri=f"img,{i}\".jpg") for i in range(12)]), timeout=T)
    await labelstore.stub.SetLabels(pb.SetLabelsRequest(dataset="photos", assignments=[
        pb.LabelAssignment(id=up.ids[i], label="dog", source=c.LABEL_SOURCE_PROPAGATED, confidence=0.8, round_id="r2")
        for i in range(3, 6)]), timeout=T)

    async def export(fmt: int, **kw: object) -> str:
        chunks = [m async for m in labelstore.stub.Export(pb.ExportRequest(dataset="photos", format=fmt, **kw),
                                                           timeout=T)]
        return b"".join(m.chunk for m in chunks).decode()

    lines = [json.loads(x) for x in (await export(c.EXPORT_FORMAT_JSONL)).splitlines()]
    assert len(lines) == 12 and {x["label_source"] for x in lines} == {"human", "propagated", "none"}
    row = next(x for x in lines if x["id"] == up.ids[4])
    assert (row["label"], row["round_id"], row["uri"]) == ("dog", "r2", 'img,4".jpg')
    rows = list(csv.DictReader(io.StringIO(await export(c.EXPORT_FORMAT_CSV))))
    assert len(rows) == 12 and rows[0].keys() == {"id", "uri", "label", "label_source", "confidence", "cluster_id",
                                                  "round_id"}
    assert {r["uri"] for r in rows} == {f'img,{i}".jpg' for i in range(12)}
    coco = json.loads(await export(c.EXPORT_FORMAT_COCO))
    assert len(coco["images"]) == 12 and [x["name"] for x in coco["categories"]] == ["cat", "dog"]
    assert len(coco["annotations"]) == 6
    tasks = json.loads(await export(c.EXPORT_FORMAT_LABEL_STUDIO, image_url_prefix="http://files/",
                                    ids=[up.ids[0], up.ids[4], up.ids[9]]))
    assert [t["data"]["tagalong_id"] for t in tasks] == [str(i) for i in sorted([up.ids[0], up.ids[4], up.ids[9]])]
    by_id = {int(t["data"]["tagalong_id"]): t for t in tasks}
    assert by_id[up.ids[0]]["annotations"][0]["result"][0]["value"]["choices"] == ["cat"]
    pred = by_id[up.ids[4]]["predictions"][0]
    assert pred["result"][0]["value"]["choices"] == ["dog"] and pred["score"] == pytest.approx(0.8)
    assert by_id[up.ids[9]]["data"]["image"] == 'http://files/img,9".jpg' and "predictions" not in by_id[up.ids[9]]
