"""The clusterer's pure round (no network): accuracy on separable data, provenance, review batch, errors."""

from __future__ import annotations

import numpy as np
import pytest

from services.clusterer import core
from services.clusterer.core import (
    EVIDENCE,
    SOURCE_HUMAN,
    SOURCE_NONE,
    SOURCE_PROPAGATED,
    RoundParams,
    encode_labels,
    power_transform,
    run_round_core,
    seed_distance,
)
from tagalong.runtime.errors import InvalidArgument
from tests.fixtures.clusterer import Blobs, make_blobs


def _truth_index(blobs: Blobs, names: list[str]) -> np.ndarray:
    lookup = {n: i for i, n in enumerate(names)}
    return np.array([lookup[blobs.class_names[c]] for c in blobs.y])


@pytest.mark.parametrize(
    "params",
    [
        pytest.param(RoundParams(seed=1), id="full-ensemble"),
        pytest.param(RoundParams(seed=1, label_spreading=False), id="no-spreading"),
        pytest.param(RoundParams(seed=1, self_training=False), id="no-self-training"),
        pytest.param(RoundParams(seed=1, k=6, pca_components=8), id="fixed-k-and-pca"),
    ],
)
def test_round_labels_separable_blobs_correctly(blobs: Blobs, params: RoundParams) -> None:
    out = run_round_core(blobs.x, blobs.labels, blobs.is_human, params)
    truth = _truth_index(blobs, out.class_names)
    machine = ~blobs.is_human
    committed = out.source == SOURCE_PROPAGATED
    assert (out.predicted[machine] == truth[machine]).mean() >= 0.95
    assert committed.sum() >= 0.5 * machine.sum()
    assert (out.label[committed] == truth[committed]).mean() >= 0.97
    assert (out.confidence[committed] >= params.confidence_threshold).all()
    # Human rows keep their label and source; uncommitted rows carry no label.
    assert (out.source[blobs.is_human] == SOURCE_HUMAN).all()
    assert (out.label[blobs.is_human] == truth[blobs.is_human]).all()
    assert (out.label[out.source == SOURCE_NONE] == -1).all()
    assert out.iterations[0].iteration == 0 and out.iterations[0].labeled == int(
        out.iterations[0].labeled
    )
    assert sum(out.class_counts().values()) == int((out.label >= 0).sum())


def test_round_metrics_and_clusters_are_consistent(blobs: Blobs) -> None:
    out = run_round_core(blobs.x, blobs.labels, blobs.is_human, RoundParams(seed=0, max_iterations=4))
    assert 1 <= len(out.iterations) <= 5
    assert [s.iteration for s in out.iterations] == list(range(len(out.iterations)))
    assert out.iterations[-1].labeled == int((out.source == SOURCE_PROPAGATED).sum())
    assert sum(c.size for c in out.clusters) == blobs.x.shape[0]
    assert sum(c.human_labeled for c in out.clusters) == int(blobs.is_human.sum())
    for c in out.clusters:
        assert 0.0 <= c.purity <= 1.0
        assert (c.majority_label == "") == (c.human_labeled == 0)
    assert out.kmeans.k >= 2 and out.kmeans.silhouette_by_k
    assert 0 < out.pca.explained_variance <= 1.0


def test_refinement_reclusters_when_clusters_mix_classes(blobs_factory) -> None:  # type: ignore[no-untyped-def]
    # k forced to 2 for 6 classes: every cluster mixes classes, so refinement must split them by label.
    blobs = blobs_factory(per_class_labels=5)
    params = RoundParams(seed=0, k=2, max_iterations=3)
    out = run_round_core(blobs.x, blobs.labels, blobs.is_human, params)
    flat = run_round_core(blobs.x, blobs.labels, blobs.is_human, RoundParams(seed=0, k=2, recluster=False))
    assert flat.kmeans.k == 2 and all(s.clusters_split == 0 for s in flat.iterations)
    assert out.iterations[0].clusters == 2
    assert out.kmeans.k > 2 and sum(s.clusters_split for s in out.iterations) >= 1
    assert out.iterations[-1].clusters == out.kmeans.k
    # The written cluster ids are the refined ones, and they now follow the classes.
    assert out.cluster.max() < out.kmeans.k and len(out.clusters) == out.kmeans.k

    def mean_purity(res) -> float:  # type: ignore[no-untyped-def]
        sizes = np.bincount(res.cluster)
        return float(sum(np.bincount(blobs.y[res.cluster == c]).max() for c in np.flatnonzero(sizes)) / len(blobs.y))

    assert mean_purity(out) >= 0.9 > mean_purity(flat)


def test_round_is_reproducible_with_a_seed(blobs: Blobs) -> None:
    a = run_round_core(blobs.x, blobs.labels, blobs.is_human, RoundParams(seed=7))
    b = run_round_core(blobs.x, blobs.labels, blobs.is_human, RoundParams(seed=7))
    assert np.array_equal(a.label, b.label)
    assert np.allclose(a.confidence, b.confidence)
    assert [p.index for p in a.review] == [p.index for p in b.review]


def test_higher_threshold_commits_fewer(blobs_factory) -> None:  # type: ignore[no-untyped-def]
    blobs = blobs_factory(spread=0.6, seed=3)
    low = run_round_core(blobs.x, blobs.labels, blobs.is_human, RoundParams(seed=0, confidence_threshold=0.5))
    high = run_round_core(blobs.x, blobs.labels, blobs.is_human, RoundParams(seed=0, confidence_threshold=0.99))
    assert (high.source == SOURCE_PROPAGATED).sum() <= (low.source == SOURCE_PROPAGATED).sum()


def test_round_without_human_labels_asks_for_cluster_representatives(blobs: Blobs) -> None:
    labels = np.full(blobs.x.shape[0], "", dtype=object)
    out = run_round_core(blobs.x, labels, None, RoundParams(seed=0, review_batch_size=12))
    assert (out.source == SOURCE_NONE).all()
    assert len(out.review) == 12
    picked = [p.index for p in out.review]
    assert len(set(picked)) == 12
    # Representative items (kernel herding), spread so that together they cover every true class.
    assert all(p.reason.startswith("representative of an unlabelled neighbourhood") for p in out.review)
    assert all("has no human label" in p.reason for p in out.review)
    assert set(blobs.y[picked]) == set(range(6))
    assert [p.priority for p in out.review] == sorted((p.priority for p in out.review), reverse=True)


def _reason_kinds(out) -> dict[str, int]:  # type: ignore[no-untyped-def]
    kinds = {"coverage": 0, "uncertainty": 0}
    for p in out.review:
        if p.reason.startswith("representative of an unlabelled neighbourhood"):
            kinds["coverage"] += 1
        else:
            assert "margin" in p.reason and " between " in p.reason and "cluster" in p.reason, p.reason
            assert "representative of an uncertain neighbourhood" in p.reason, p.reason
            kinds["uncertainty"] += 1
    return kinds


@pytest.mark.parametrize(
    ("per_class", "expect_uncertainty"),
    [
        pytest.param(3, False, id="low-budget-all-coverage"),
        pytest.param(12, True, id="enough-labels-mixes-uncertainty"),
    ],
)
def test_review_batch_is_diverse_and_explained(blobs_factory, per_class: int, expect_uncertainty: bool) -> None:  # type: ignore[no-untyped-def]
    blobs = blobs_factory(per_class_labels=per_class)
    out = run_round_core(blobs.x, blobs.labels, blobs.is_human, RoundParams(seed=0, review_batch_size=20))
    assert len(out.review) == 20
    idx = [p.index for p in out.review]
    assert len(set(idx)) == 20
    assert not blobs.is_human[idx].any()
    kinds = _reason_kinds(out)
    if expect_uncertainty:  # enough labels: herding weighted by uncertainty, each pick explained by its margin
        assert kinds == {"coverage": 0, "uncertainty": 20}
    else:  # below LOW_BUDGET_PER_CLASS labels per class: plain herding, representative items only
        assert kinds == {"coverage": 20, "uncertainty": 0}


def test_review_batch_weighs_uncertainty_by_diversity(blobs_factory) -> None:  # type: ignore[no-untyped-def]
    # Same round, three diversities: the less diversity, the more uncertain the picks; diversity 1 is plain herding.
    blobs = blobs_factory(per_class_labels=12)
    mean_unc = {}
    for diversity in (0.1, 0.5, 1.0):
        out = run_round_core(
            blobs.x, blobs.labels, blobs.is_human, RoundParams(seed=0, review_batch_size=20, diversity=diversity)
        )
        mean_unc[diversity] = float(np.mean([out.uncertainty.combined[p.index] for p in out.review]))
        if diversity == 1.0:
            assert _reason_kinds(out) == {"coverage": 20, "uncertainty": 0}
    assert mean_unc[0.1] > mean_unc[1.0] and mean_unc[0.5] > mean_unc[1.0], mean_unc


def _two_regions(n_big: int = 300, n_small: int = 200) -> np.ndarray:
    rng = np.random.default_rng(0)
    big = rng.normal(size=(n_big, 8)) * 0.05 + np.eye(8)[0]
    small = rng.normal(size=(n_small, 8)) * 0.05 + np.eye(8)[1]
    z = np.vstack([big, small]).astype(np.float32)
    return z / np.linalg.norm(z, axis=1, keepdims=True)


def test_herding_picks_the_unlabelled_dense_region_first() -> None:
    from services.clusterer.review import herding_picks

    z = _two_regions()
    assignment = np.zeros(500, dtype=np.int64)
    taken = np.zeros(500, dtype=bool)
    first = herding_picks(z, taken, 1, assignment, np.array([False]))
    assert first[0].index < 300 and taken[first[0].index]  # the bigger region gains most
    assert "has no human label" in first[0].reason
    labelled = np.zeros(500, dtype=bool)
    labelled[0] = True  # the big region already holds a label: the small one is next
    nxt = herding_picks(z, labelled, 2, assignment, np.array([True]))
    assert nxt[0].index >= 300 and "has no human label" not in nxt[0].reason
    assert len({p.index for p in nxt}) == 2 and nxt[0].priority >= nxt[1].priority
    # Nothing free: nothing picked.
    assert herding_picks(z, np.ones(500, dtype=bool), 3, assignment, np.array([True])) == []


def test_weighted_herding_covers_the_uncertain_region_first() -> None:
    from services.clusterer.review import herding_picks

    z = _two_regions()
    assignment = np.zeros(500, dtype=np.int64)
    weights = np.where(np.arange(500) < 300, 0.05, 1.0)  # the big region is sure, the small one is not
    picks = herding_picks(
        z, np.zeros(500, dtype=bool), 3, assignment, np.array([True]), weights=weights, describe=lambda i: f"item {i}"
    )
    assert picks[0].index >= 300  # unweighted, the bigger region would go first (test above)
    assert picks[0].reason.startswith(f"item {picks[0].index}; representative of an uncertain neighbourhood")
    assert len({p.index for p in picks}) == 3


def test_herding_a_huge_collection_works_on_a_sample(monkeypatch: pytest.MonkeyPatch) -> None:
    from services.clusterer import review

    searched: list[int] = []
    real = review.knn_search
    monkeypatch.setattr(review, "knn_search", lambda x, k, **kw: (searched.append(x.shape[0]), real(x, k, **kw))[1])
    monkeypatch.setattr(review, "HERDING_SAMPLE", 200)
    z = _two_regions(600, 400)
    assignment = np.zeros(1000, dtype=np.int64)
    picks = review.herding_picks(z, np.zeros(1000, dtype=bool), 4, assignment, np.array([False]), seed=3)
    again = review.herding_picks(z, np.zeros(1000, dtype=bool), 4, assignment, np.array([False]), seed=3)
    assert [p.index for p in picks] == [p.index for p in again]  # seeded: reproducible
    assert len({p.index for p in picks}) == 4
    assert searched == [200, 200]  # the graph is built on the sample, never on all 1,000


def test_review_batch_never_fills_up_with_near_duplicates(blobs_factory) -> None:  # type: ignore[no-untyped-def]
    # 30 near-identical copies of one point placed between two classes: the most uncertain items of all.
    # 12 labels per class, so herding is weighted by uncertainty: the copies weigh the most.
    blobs = blobs_factory(per_class_labels=12)
    rng = np.random.default_rng(0)
    mid = blobs.centres[0] + blobs.centres[1]
    mid /= np.linalg.norm(mid)
    dupes = (mid[None, :] + 1e-3 * rng.normal(size=(30, blobs.x.shape[1]))).astype(np.float32)
    x = np.vstack([blobs.x, dupes])
    labels = np.concatenate([blobs.labels, np.full(30, "", dtype=object)])
    out = run_round_core(x, labels, labels != "", RoundParams(seed=0, review_batch_size=20, diversity=0.5))
    from_dupes = sum(1 for p in out.review if p.index >= blobs.x.shape[0])
    assert 0 < from_dupes <= 2


def test_zero_shot_prior_labels_a_class_nobody_labelled(blobs: Blobs) -> None:
    # Remove every human label of class_5; give prompts near its centre (and the others') as a prior.
    labels = blobs.labels.copy()
    labels[labels == "class_5"] = ""
    rng = np.random.default_rng(0)
    prior = {
        name: blobs.centres[c][None, :] + 0.05 * rng.normal(size=(3, blobs.x.shape[1])).astype(np.float32)
        for c, name in enumerate(blobs.class_names)
    }
    out = run_round_core(blobs.x, labels, labels != "", RoundParams(seed=0), zero_shot_prior=prior)
    c5 = out.class_names.index("class_5")
    true5 = blobs.y == 5
    assert (out.predicted[true5] == c5).mean() >= 0.9
    assert "zero_shot" in out.method


def test_integer_labels_with_class_names(blobs: Blobs) -> None:
    y = np.where(blobs.is_human, blobs.y, -1)
    out = run_round_core(blobs.x, y, blobs.is_human, RoundParams(seed=0), class_names=blobs.class_names)
    assert out.class_names == blobs.class_names
    assert (out.predicted == blobs.y).mean() >= 0.95


def test_non_human_input_labels_are_ignored(blobs: Blobs) -> None:
    wrong = blobs.labels.copy()
    machine_rows = np.flatnonzero(~blobs.is_human)[:300]
    wrong[machine_rows] = "class_0"  # stale machine labels from an earlier round
    out = run_round_core(blobs.x, wrong, blobs.is_human, RoundParams(seed=0))
    truth = _truth_index(blobs, out.class_names)
    assert (out.predicted[machine_rows] == truth[machine_rows]).mean() >= 0.95


def test_encode_labels() -> None:
    y, names = encode_labels(["b", "", "a", "b"], extra_classes=["c"])
    assert names == ["a", "b", "c"]
    assert y.tolist() == [1, -1, 0, 1]


@pytest.mark.parametrize(
    ("x", "labels", "params", "message"),
    [
        pytest.param(np.zeros((2, 4), np.float32), ["a", "b"], RoundParams(), "at least 3", id="too-few"),
        pytest.param(np.full((5, 4), np.nan, np.float32), [""] * 5, RoundParams(), "NaN", id="nan"),
        pytest.param(np.ones((5, 4), np.float32), [""] * 4, RoundParams(), "labels for", id="length-mismatch"),
        pytest.param(
            np.ones((5, 4), np.float32), [""] * 5, RoundParams(confidence_threshold=1.5), "confidence", id="threshold"
        ),
        pytest.param(np.ones((5, 4), np.float32), [""] * 5, RoundParams(pca_variance=0.0), "pca_variance", id="pca"),
        pytest.param(np.ones((5, 4), np.float32), [""] * 5, RoundParams(k_min=9, k_max=3), "k_min", id="k-bounds"),
        pytest.param(
            np.ones((5, 4), np.float32), [""] * 5, RoundParams(feature_power=0.0), "feature_power", id="power"
        ),
    ],
)
def test_round_rejects_bad_input(x: np.ndarray, labels: list[str], params: RoundParams, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        run_round_core(x, labels, None, params)


def test_power_transform_applies_to_non_negative_embeddings_only() -> None:
    x = np.array([[0.0, 4.0, 9.0], [1.0, 0.25, 16.0]], np.float32)
    out, power = power_transform(x, 0.5)
    assert power == 0.5 and np.allclose(out, [[0.0, 2.0, 3.0], [1.0, 0.5, 4.0]])
    signed = x - 1.0  # CLIP-like: negative values, no transform
    same, power = power_transform(signed, 0.5)
    assert power == 1.0 and same is signed
    off, power = power_transform(x, 1.0)
    assert power == 1.0 and off is x


def test_round_on_non_negative_embeddings_uses_the_power_transform(blobs: Blobs) -> None:
    # ReLU-like features: the positive part of the blobs in twice the dimensions (still separable).
    x = np.hstack([np.maximum(blobs.x, 0), np.maximum(-blobs.x, 0)])
    out = run_round_core(x, blobs.labels, blobs.is_human, RoundParams(seed=0, review_batch_size=0))
    raw = run_round_core(x, blobs.labels, blobs.is_human, RoundParams(seed=0, review_batch_size=0, feature_power=1.0))
    signed = run_round_core(blobs.x, blobs.labels, blobs.is_human, RoundParams(seed=0, review_batch_size=0))
    assert out.feature_power == 0.5 and raw.feature_power == 1.0 and signed.feature_power == 1.0
    truth = _truth_index(blobs, out.class_names)
    machine = ~blobs.is_human
    assert (out.predicted[machine] == truth[machine]).mean() >= 0.95
    assert not np.allclose(out.pca.mean, raw.pca.mean)  # the basis was fitted on the transformed features


def test_progress_reports_every_stage(blobs: Blobs) -> None:
    seen: list[tuple[str, float]] = []
    params = RoundParams(seed=0)
    run_round_core(blobs.x, blobs.labels, blobs.is_human, params, progress=lambda s, f, m: seen.append((s, f)))
    stages = [s for s, _ in seen]
    for stage in ("pca", "kmeans", "propagate", "refine", "uncertainty"):
        assert stage in stages
    fractions = [f for _, f in seen]
    assert fractions == sorted(fractions) and all(0 <= f <= 1 for f in fractions)


def test_many_classes_few_points_still_runs() -> None:
    blobs = make_blobs(n=60, n_classes=12, dim=16, per_class_labels=1, seed=2)
    out = run_round_core(blobs.x, blobs.labels, blobs.is_human, RoundParams(seed=0, review_batch_size=5))
    assert out.predicted.shape == (60,)
    assert len(out.review) == 5


def test_saved_pca_is_reused_only_while_it_applies(blobs: Blobs, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from services.clusterer import artifacts

    first = run_round_core(blobs.x, blobs.labels, params=RoundParams(seed=0, review_batch_size=0))
    key = {"pca_variance": 0.95}
    n, d = blobs.x.shape
    artifacts.save_dataset_pca(tmp_path, "ds/../odd name", first.pca, rows=n, settings=key)
    saved = artifacts.load_dataset_pca(tmp_path, "ds/../odd name", rows=n + n // 5, dim=d, settings=key)
    assert saved is not None and np.array_equal(saved.components, first.pca.components)
    assert all(p.parent.parent == tmp_path / "datasets" for p in tmp_path.rglob("pca.npz"))
    again = run_round_core(blobs.x, blobs.labels, params=RoundParams(seed=0, review_batch_size=0), pca=saved)
    assert again.pca_reused and not first.pca_reused
    assert np.array_equal(again.predicted, first.predicted)
    # Grown by more than a quarter, other settings, other dimension, other dataset: refit.
    assert artifacts.load_dataset_pca(tmp_path, "ds/../odd name", rows=2 * n, dim=d, settings=key) is None
    assert artifacts.load_dataset_pca(tmp_path, "ds/../odd name", rows=n, dim=d, settings={"pca_variance": 0.9}) is None
    assert artifacts.load_dataset_pca(tmp_path, "ds/../odd name", rows=n, dim=d + 1, settings=key) is None
    assert artifacts.load_dataset_pca(tmp_path, "other", rows=n, dim=d, settings=key) is None
    # A basis for another dimension handed to the round directly is not used.
    wrong = run_round_core(blobs.x[:, :-1], blobs.labels, params=RoundParams(seed=0, review_batch_size=0), pca=saved)
    assert not wrong.pca_reused


def test_seed_distance_is_the_log_distance_to_the_nearest_seed_of_the_class(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(0)
    z = rng.normal(size=(300, 8)).astype(np.float32)
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    pred = rng.integers(-1, 3, 300)  # -1: no prediction; class 2 has no seed
    seeds = np.full(300, -1)
    seeds[:20] = rng.integers(0, 2, 20)
    got = seed_distance(z, pred, seeds, typical=0.5, rng=np.random.default_rng(0), batch=7)
    for i in range(300):
        same = np.flatnonzero(seeds == pred[i]) if pred[i] >= 0 else np.array([], dtype=int)
        if same.size == 0:
            assert got[i] == pytest.approx(np.log(10.0))  # the maximum: nothing vouches for it
        else:
            dist = 1.0 - float((z[same] @ z[i]).max())
            assert got[i] == pytest.approx(np.log(np.clip(max(dist, 1e-6) / 0.5, 0.1, 10.0)), abs=1e-5)
    # Above the cap a random subset of a class's seeds is used: never closer than the full set.
    monkeypatch.setattr(core, "SEED_DISTANCE_MAX_SEEDS", 3)
    capped = seed_distance(z, pred, seeds, typical=0.5, rng=np.random.default_rng(0))
    assert np.all(capped >= got - 1e-6) and np.any(capped > got + 1e-3)


def test_confidence_falls_with_distance_from_the_human_labels(blobs: Blobs) -> None:
    """The round computes seed_distance for every point and it enters the confidence with a negative weight:
    of two points with the same other evidence, the one farther from every human example of its class gets the
    lower confidence (one example cannot vouch for a far-off region reached through the graph). The effect on
    real photos is measured by bench/eval_labeling.py (precision at 1 label per class)."""
    params = RoundParams(seed=0, max_iterations=0, review_batch_size=0)
    out = run_round_core(blobs.x, blobs.labels, blobs.is_human, params)
    assert out.evidence is not None
    col = EVIDENCE.index("seed_distance")
    machine = ~blobs.is_human & (out.predicted >= 0)
    assert np.ptp(out.evidence[machine, col]) > 0.1
    weights = np.array([core.CALIBRATION[name] for name in EVIDENCE])
    without = out.evidence[machine].astype(np.float64) @ weights - weights[col] * out.evidence[machine, col]
    logit = np.log(out.confidence[machine] / (1.0 - out.confidence[machine])) - core.CALIBRATION["intercept"]
    # The distance term alone explains the rest of each point's logit, and it lowers the far points.
    assert np.allclose(logit - without, weights[col] * out.evidence[machine, col], atol=1e-3)
    far = out.evidence[machine, col] > np.median(out.evidence[machine, col])
    assert (logit - without)[far].mean() < (logit - without)[~far].mean()
