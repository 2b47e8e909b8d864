"""The Clusterer over gRPC against a real label store (Milvus Lite and the Milvus server): rounds write labels
with provenance and never touch human ones; Project, ZeroShot, LabelErrors and Outliers read the real store."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc import aio

from services.clusterer.testing import running_clusterer
from services.labelstore.testing import running_labelstore
from tagalong.runtime.ids import content_sha256, id_from_sha256
from tagalong.runtime.vectors import to_proto
from tagalong.v1 import clusterer_pb2, clusterer_pb2_grpc, common_pb2, labelstore_pb2, labelstore_pb2_grpc
from tests.fixtures.clusterer import Blobs, make_blobs


@dataclass
class Stack:
    clusterer: clusterer_pb2_grpc.ClustererStub
    store: labelstore_pb2_grpc.LabelStoreStub
    dataset: str
    blobs: Blobs
    ids: np.ndarray
    artifact_dir: Path


async def _load(store: labelstore_pb2_grpc.LabelStoreStub, dataset: str, blobs: Blobs) -> np.ndarray:
    dim = blobs.x.shape[1]
    await store.EnsureDataset(labelstore_pb2.EnsureDatasetRequest(name=dataset, dim=dim, model_id="synthetic"))
    ids = []
    items = []
    for i, vec in enumerate(blobs.x):
        sha = content_sha256(f"{dataset}-{i}".encode())
        ids.append(id_from_sha256(sha))
        items.append(
            labelstore_pb2.UpsertItem(
                content_sha256=sha, vector=to_proto(vec), uri=f"mem://{i}.jpg", label=str(blobs.labels[i])
            )
        )
    for start in range(0, len(items), 200):
        await store.Upsert(labelstore_pb2.UpsertRequest(dataset=dataset, items=items[start : start + 200]), timeout=60)
    return np.asarray(ids, dtype=np.int64)


async def _scan(store: labelstore_pb2_grpc.LabelStoreStub, dataset: str) -> dict[int, common_pb2.Record]:
    out: dict[int, common_pb2.Record] = {}
    request = labelstore_pb2.ScanEmbeddingsRequest(dataset=dataset, page_size=500)
    async for page in store.ScanEmbeddings(request, timeout=60):
        for r in page.records:
            out[r.id] = r
    return out


@contextlib.asynccontextmanager
async def _stack(milvus_uri: str, tmp_path: Path) -> AsyncIterator[Stack]:
    """A label store on `milvus_uri` holding 400 synthetic vectors (12 human labels) and a clusterer on it."""
    blobs = make_blobs(n=400, n_classes=4, dim=32, per_class_labels=3, spread=0.3, seed=11)
    dataset = f"clu_{uuid.uuid4().hex[:10]}"
    artifact_dir = tmp_path / "artifacts"
    async with running_labelstore(milvus_uri) as store_addr, running_clusterer(store_addr, artifact_dir) as clu:
        async with aio.insecure_channel(store_addr) as sch, aio.insecure_channel(clu.address) as cch:
            store = labelstore_pb2_grpc.LabelStoreStub(sch)
            ids = await _load(store, dataset, blobs)
            yield Stack(clusterer_pb2_grpc.ClustererStub(cch), store, dataset, blobs, ids, artifact_dir)


@pytest.fixture()
async def stack(milvus_lite_uri: str, tmp_path: Path) -> AsyncIterator[Stack]:
    async with _stack(milvus_lite_uri, tmp_path) as s:
        yield s


async def _run_round(s: Stack, **config: object) -> tuple[list[clusterer_pb2.RoundProgress], clusterer_pb2.RoundResult]:
    request = clusterer_pb2.RunRoundRequest(
        dataset=s.dataset, round_id="it-round-1", config=common_pb2.RoundConfig(**config)  # type: ignore[arg-type]
    )
    progress, result = [], None
    async for msg in s.clusterer.RunRound(request, timeout=300):
        if msg.HasField("progress"):
            progress.append(msg.progress)
        else:
            result = msg.result
    assert result is not None
    return progress, result


async def test_round_writes_propagated_labels_and_keeps_human_ones(milvus_uri: str, tmp_path: Path) -> None:
    async with _stack(milvus_uri, tmp_path) as s:
        before = await _scan(s.store, s.dataset)
        progress, result = await _run_round(s, write_labels=True, seed=3, review_batch_size=10)
        after = await _scan(s.store, s.dataset)

    summary = result.summary
    fractions = [p.fraction for p in progress]
    assert fractions == sorted(fractions) and fractions[-1] == pytest.approx(1.0)
    assert {"scan", "pca", "kmeans", "propagate", "refine", "uncertainty", "write"} <= {p.stage for p in progress}
    assert summary.round_id == "it-round-1" and summary.dataset == s.dataset
    assert summary.total == 400 and summary.human_labeled == 12
    assert summary.propagated > 200
    assert summary.propagated + summary.uncommitted + summary.human_labeled == 400
    assert summary.labels_written == summary.propagated  # every committed row was new
    assert summary.coverage == pytest.approx((summary.propagated + 12) / 400, abs=1e-4)
    assert sum(summary.class_counts.values()) == summary.propagated + 12
    assert len(summary.iterations) >= 1 and summary.k >= 2 and summary.pca_components >= 2
    assert Path(summary.artifact_uri).is_dir()
    assert {p.name for p in Path(summary.artifact_uri).iterdir()} >= {"pca.npz", "centroids.npz", "round.json"}

    truth = {int(i): s.blobs.class_names[c] for i, c in zip(s.ids, s.blobs.y, strict=True)}
    propagated = [r for r in after.values() if r.label_source == common_pb2.LABEL_SOURCE_PROPAGATED]
    assert len(propagated) == summary.propagated
    assert np.mean([r.label == truth[r.id] for r in propagated]) >= 0.97
    for r in propagated:
        assert r.round_id == "it-round-1" and r.label_method.startswith("ensemble:") and r.confidence >= 0.9
        assert r.cluster_id >= 0
    for rid, r in before.items():
        if r.label_source == common_pb2.LABEL_SOURCE_HUMAN:  # untouched: label, source, confidence
            assert (after[rid].label, after[rid].label_source, after[rid].confidence) == (r.label, r.label_source, 1.0)
    unlabelled = [r for r in after.values() if r.label_source in (0, common_pb2.LABEL_SOURCE_NONE)]
    assert len(unlabelled) == summary.uncommitted and all(r.label == "" for r in unlabelled)

    review = result.review_batch
    assert len(review) == 10 and len({r.id for r in review}) == 10
    for item in review:
        assert item.id in after and after[item.id].label_source != common_pb2.LABEL_SOURCE_HUMAN
        assert item.uri.startswith("mem://") and item.reason


async def test_second_round_clears_stale_machine_labels_and_moves_clusters(stack: Stack) -> None:
    """A round recomputes every machine label: what it no longer commits is cleared, not left looking current."""
    _, first = await _run_round(stack, write_labels=True, seed=3)
    after_first = await _scan(stack.store, stack.dataset)
    machine_rows = [r for r in after_first.values() if r.label_source != common_pb2.LABEL_SOURCE_HUMAN]
    assert first.summary.propagated > 0
    # Every machine row carries this round's cluster, committed or not (was: committed rows only).
    assert all(r.cluster_id >= 0 for r in machine_rows)
    # Second round that commits (almost) nothing: a threshold of 1.0.
    _, second = await _run_round(stack, write_labels=True, seed=4, k=3, confidence_threshold=1.0)
    after_second = await _scan(stack.store, stack.dataset)
    propagated = {rid for rid, r in after_second.items() if r.label_source == common_pb2.LABEL_SOURCE_PROPAGATED}
    assert len(propagated) == second.summary.propagated < first.summary.propagated
    cleared = [r for rid, r in after_second.items()
               if after_first[rid].label_source == common_pb2.LABEL_SOURCE_PROPAGATED and rid not in propagated]
    assert cleared and all(r.label == "" and r.confidence == 0.0 for r in cleared)
    assert second.summary.labels_written >= len(cleared)
    # k=3 this time: every machine row now points at one of the new clusters (refinement may have split a
    # cluster that mixes two of the four classes, so the summary's k is the bound).
    assert 3 <= second.summary.k <= 4
    assert {r.cluster_id for rid, r in after_second.items()
            if r.label_source != common_pb2.LABEL_SOURCE_HUMAN} <= set(range(second.summary.k))
    assert sum(r.label_source == common_pb2.LABEL_SOURCE_HUMAN for r in after_second.values()) == 12


async def test_refinement_reclusters_a_forced_too_small_k(stack: Stack) -> None:
    # Four classes in two clusters: each cluster holds human labels of two classes, so refinement splits it.
    _, split = await _run_round(stack, write_labels=True, seed=5, k=2)
    rows = await _scan(stack.store, stack.dataset)
    _, flat = await _run_round(stack, seed=5, k=2, disable_recluster=True)
    its = split.summary.iterations
    assert its[0].clusters == 2 and sum(i.clusters_split for i in its) >= 1
    assert split.summary.k == its[-1].clusters > 2 and len(split.summary.clusters) == split.summary.k
    assert {r.cluster_id for r in rows.values() if r.label_source != common_pb2.LABEL_SOURCE_HUMAN} <= set(
        range(split.summary.k)
    )
    assert flat.summary.k == 2 and all(i.clusters_split == 0 for i in flat.summary.iterations)
    # Clusters now follow the classes: purity of the labelled members is higher than with k stuck at 2.
    assert min(c.purity for c in split.summary.clusters if c.human_labeled) > min(
        c.purity for c in flat.summary.clusters if c.human_labeled
    )


async def test_pca_basis_is_kept_per_dataset_and_reused(stack: Stack) -> None:
    _, first = await _run_round(stack, seed=1)
    _, second = await _run_round(stack, seed=2)
    _, forced = await _run_round(stack, seed=2, refit_pca=True)
    _, other_settings = await _run_round(stack, seed=2, pca_components=5)
    assert not first.summary.pca_reused and second.summary.pca_reused
    assert second.summary.pca_components == first.summary.pca_components
    assert second.summary.explained_variance == pytest.approx(first.summary.explained_variance)
    assert not forced.summary.pca_reused and not other_settings.summary.pca_reused
    assert other_settings.summary.pca_components == 5


async def test_feature_power_follows_the_config_and_the_embeddings(stack: Stack) -> None:
    # Non-negative embeddings (like pooled CNN features): the default square root, or none when the config says 1.
    relu = make_blobs(n=200, n_classes=4, dim=32, per_class_labels=3, spread=0.3, seed=12)
    x = np.abs(relu.x)
    nonneg = Blobs(x / np.linalg.norm(x, axis=1, keepdims=True), relu.y, relu.centres, relu.class_names, relu.labels)
    other = Stack(stack.clusterer, stack.store, f"{stack.dataset}_relu", nonneg, np.zeros(0), stack.artifact_dir)
    await _load(stack.store, other.dataset, nonneg)
    _, default = await _run_round(other, seed=1)
    _, off = await _run_round(other, seed=1, feature_power=1.0)
    _, signed = await _run_round(stack, seed=1, feature_power=0.5)
    assert default.summary.feature_power == 0.5 and off.summary.feature_power == 1.0
    assert signed.summary.feature_power == 1.0  # embeddings with negative values are never transformed
    # A different transform is a different basis: the saved PCA is not reused across powers.
    assert not off.summary.pca_reused


async def test_round_without_write_labels_writes_nothing(stack: Stack) -> None:
    _, result = await _run_round(stack, write_labels=False)
    assert result.summary.labels_written == 0 and result.summary.propagated > 0
    rows = await _scan(stack.store, stack.dataset)
    assert not any(r.label_source == common_pb2.LABEL_SOURCE_PROPAGATED for r in rows.values())


@pytest.mark.parametrize(
    ("request_kwargs", "code"),
    [
        pytest.param({"dataset": ""}, grpc.StatusCode.INVALID_ARGUMENT, id="no-dataset"),
        pytest.param({"dataset": "nosuchdataset"}, grpc.StatusCode.NOT_FOUND, id="unknown-dataset"),
        pytest.param({"round_id": "../escape"}, grpc.StatusCode.INVALID_ARGUMENT, id="bad-round-id"),
        pytest.param(
            {"config": common_pb2.RoundConfig(confidence_threshold=2.0)}, grpc.StatusCode.INVALID_ARGUMENT,
            id="bad-threshold",
        ),
        pytest.param(
            {"config": common_pb2.RoundConfig(feature_power=2.0)}, grpc.StatusCode.INVALID_ARGUMENT, id="bad-power",
        ),
    ],
)
async def test_round_errors(stack: Stack, request_kwargs: dict[str, object], code: grpc.StatusCode) -> None:
    kwargs: dict[str, object] = {"dataset": stack.dataset, **request_kwargs}
    with pytest.raises(aio.AioRpcError) as err:
        async for _ in stack.clusterer.RunRound(clusterer_pb2.RunRoundRequest(**kwargs), timeout=60):  # type: ignore[arg-type]
            pass
    assert err.value.code() == code


async def test_project_samples_and_reports_variance(stack: Stack) -> None:
    reply = await stack.clusterer.Project(
        clusterer_pb2.ProjectRequest(dataset=stack.dataset, dims=3, max_points=50, seed=1), timeout=60
    )
    assert reply.total == 400 and len(reply.points) == 50
    assert len({p.id for p in reply.points}) == 50 and all(len(p.coords) == 3 for p in reply.points)
    assert len(reply.explained_variance) == 3 and sum(reply.explained_variance) <= 1.0
    with pytest.raises(aio.AioRpcError) as err:
        await stack.clusterer.Project(
            clusterer_pb2.ProjectRequest(dataset=stack.dataset, method=common_pb2.PROJECTION_METHOD_UMAP), timeout=30
        )
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_zero_shot_classifies_and_writes_without_touching_humans(stack: Stack) -> None:
    classes = [
        common_pb2.ClassPrompts(label=name, prompt_embeddings=[to_proto(stack.blobs.centres[c])])
        for c, name in enumerate(stack.blobs.class_names)
    ]
    reply = await stack.clusterer.ZeroShot(
        clusterer_pb2.ZeroShotRequest(dataset=stack.dataset, classes=classes, write_labels=True, min_confidence=0.6),
        timeout=60,
    )
    truth = {int(i): stack.blobs.class_names[c] for i, c in zip(stack.ids, stack.blobs.y, strict=True)}
    assert len(reply.predictions) == 400
    assert np.mean([p.label == truth[p.id] for p in reply.predictions]) >= 0.95
    confs = [p.confidence for p in reply.predictions]
    assert confs == sorted(confs, reverse=True)
    rows = await _scan(stack.store, stack.dataset)
    zero_shot = [r for r in rows.values() if r.label_source == common_pb2.LABEL_SOURCE_ZERO_SHOT]
    assert reply.labels_written == len(zero_shot) > 0
    assert sum(r.label_source == common_pb2.LABEL_SOURCE_HUMAN for r in rows.values()) == 12
    some = [int(i) for i in stack.ids[:5]]
    limited = await stack.clusterer.ZeroShot(
        clusterer_pb2.ZeroShotRequest(dataset=stack.dataset, classes=classes, ids=some, limit=3), timeout=60
    )
    assert len(limited.predictions) == 3 and {p.id for p in limited.predictions} <= set(some)
    with pytest.raises(aio.AioRpcError) as err:
        await stack.clusterer.ZeroShot(clusterer_pb2.ZeroShotRequest(dataset=stack.dataset, classes=classes[:1]))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_label_errors_find_a_wrong_human_label(stack: Stack) -> None:
    # Everyone labelled by a person, one of them wrongly.
    names = stack.blobs.class_names
    wrong_id = int(stack.ids[0])
    wrong_label = names[(stack.blobs.y[0] + 1) % 4]
    assignments = [
        labelstore_pb2.LabelAssignment(
            id=int(i), label=wrong_label if int(i) == wrong_id else names[c], source=common_pb2.LABEL_SOURCE_HUMAN,
            confidence=1.0, cluster_id=-1, method="tester",
        )
        for i, c in zip(stack.ids, stack.blobs.y, strict=True)
    ]
    await stack.store.SetLabels(labelstore_pb2.SetLabelsRequest(dataset=stack.dataset, assignments=assignments))
    reply = await stack.clusterer.LabelErrors(clusterer_pb2.LabelErrorsRequest(dataset=stack.dataset), timeout=60)
    assert reply.examined == 400
    assert reply.candidates and reply.candidates[0].id == wrong_id
    assert reply.candidates[0].given_label == wrong_label
    assert reply.candidates[0].suggested_label == names[stack.blobs.y[0]]
    assert reply.candidates[0].score >= 0.8


async def test_outliers_rank_and_limit(stack: Stack) -> None:
    reply = await stack.clusterer.Outliers(clusterer_pb2.OutliersRequest(dataset=stack.dataset, limit=7), timeout=60)
    assert reply.examined == 400 and len(reply.outliers) == 7
    scores = [o.score for o in reply.outliers]
    assert scores == sorted(scores, reverse=True) and scores[0] > 1.0
