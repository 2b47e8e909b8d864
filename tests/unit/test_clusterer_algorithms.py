"""The clusterer's building blocks: PCA, KMeans, kNN graphs, propagation, zero-shot, quality scores, artifacts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from services.clusterer import knn
from services.clusterer.artifacts import check_round_id, load_round, save_round
from services.clusterer.classifier import train_classifier
from services.clusterer.kmeans import KMeansResult, assign, fit_kmeans, k_grid, split_impure_clusters
from services.clusterer.pca import PCABasis, fit_pca
from services.clusterer.projection import project
from services.clusterer.propagation import cluster_majority, label_spreading
from services.clusterer.quality import label_error_scores, outlier_scores
from services.clusterer.zeroshot import class_embeddings, zero_shot_probs
from tagalong.runtime.errors import FailedPrecondition, InvalidArgument, NotFound
from tests.fixtures.clusterer import make_blobs


def _low_rank(n: int = 2000, d: int = 32, rank: int = 4, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    basis = rng.normal(size=(rank, d))
    return (rng.normal(size=(n, rank)) * [10, 5, 2, 1] @ basis + 0.01 * rng.normal(size=(n, d))).astype(np.float32)


def test_pca_matches_sklearn_and_keeps_the_target_variance() -> None:
    from sklearn.decomposition import PCA

    x = _low_rank()
    basis = fit_pca(x, variance=0.99, batch=300)  # several batches: the streamed covariance must add up
    ref = PCA(n_components=basis.n_components).fit(x)
    assert basis.explained_variance >= 0.99
    assert np.cumsum(basis.explained_variance_ratio)[-2] < 0.99  # the fewest components that reach it
    assert np.allclose(np.abs(basis.components @ ref.components_.T), np.eye(basis.n_components), atol=1e-3)
    assert np.allclose(basis.explained_variance_ratio, ref.explained_variance_ratio_, atol=1e-4)
    fixed = fit_pca(x, n_components=3)
    assert fixed.n_components == 3 and fixed.transform(x).shape == (2000, 3)


def test_pca_save_and_load_round_trip(tmp_path: Path) -> None:
    basis = fit_pca(_low_rank(), n_components=3)
    basis.save(tmp_path / "pca.npz")
    again = PCABasis.load(tmp_path / "pca.npz")
    x = _low_rank(n=10, seed=1)
    assert np.allclose(again.transform(x), basis.transform(x))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        pytest.param({"variance": 0.0}, "pca_variance", id="zero-variance"),
        pytest.param({"n_components": 99}, "exceeds", id="too-many-components"),
    ],
)
def test_pca_rejects_bad_settings(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        fit_pca(_low_rank(), **kwargs)  # type: ignore[arg-type]


def test_kmeans_finds_the_number_of_well_separated_blobs() -> None:
    # Five orthogonal centres (random ones may land close together and honestly look like four).
    rng = np.random.default_rng(4)
    y = np.arange(1500) % 5
    x = (np.eye(24)[y] + 0.05 * rng.normal(size=(1500, 24))).astype(np.float32)
    result = fit_kmeans(x, k_min=2, k_max=12, seed=0)
    assert 5 in result.silhouette_by_k
    assert result.k == 5
    for c in range(result.k):  # each cluster is one class
        assert len(np.unique(y[result.assignment == c])) == 1
    assert (result.dist2 >= result.dist1).all()


def test_kmeans_fits_on_a_sample_and_assigns_everything() -> None:
    blobs = make_blobs(n=3000, n_classes=4, dim=16, spread=0.15, seed=5)
    result = fit_kmeans(blobs.x, k=4, seed=0, fit_sample=500)
    assert result.assignment.shape == (3000,)
    assert len(np.unique(result.assignment)) == 4


def _one_cluster(x: np.ndarray) -> KMeansResult:
    cents = x.mean(axis=0, keepdims=True).astype(np.float32)
    lab, d1, d2 = assign(x, cents)
    return KMeansResult(cents, lab, d1, d2, 1, {})


def test_split_impure_clusters_separates_the_classes_a_cluster_merged() -> None:
    rng = np.random.default_rng(0)
    a = rng.normal(size=(200, 8)) * 0.1 + [3, 0, 0, 0, 0, 0, 0, 0]
    b = rng.normal(size=(200, 8)) * 0.1 - [3, 0, 0, 0, 0, 0, 0, 0]
    x = np.vstack([a, b]).astype(np.float32)
    truth = np.repeat([0, 1], 200)
    y = np.full(400, -1)
    y[[0, 1, 2, 200, 201, 202]] = truth[[0, 1, 2, 200, 201, 202]]
    km = _one_cluster(x)
    out, n_split = split_impure_clusters(x, km, y, np.ones(400), 2)
    assert n_split == 1 and out.k == 2
    # Each blob is one of the new clusters, and the distances are those to the assigned centroid.
    assert len(set(out.assignment[:200])) == 1 and len(set(out.assignment[200:])) == 1
    assert out.assignment[0] != out.assignment[200]
    assert np.allclose(out.dist1, ((x - out.centroids[out.assignment]) ** 2).sum(axis=1), rtol=1e-4, atol=1e-4)
    # A pure cluster, a minority below min_share, or too little weight: nothing to split.
    pure = np.where(truth == 0, y, -1)
    assert split_impure_clusters(x, km, pure, np.ones(400), 2) == (km, 0)
    assert split_impure_clusters(x, km, y, np.ones(400), 2, min_weight=4.0) == (km, 0)
    many = np.where(np.arange(400) < 150, 0, y)  # 150 labels of class 0 against 3 of class 1
    assert split_impure_clusters(x, km, many, np.ones(400), 2)[1] == 0


def test_split_impure_clusters_respects_the_growth_bound() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(300, 4)).astype(np.float32)
    y = np.arange(300) % 3  # every cluster holds three classes evenly: maximally impure
    km = fit_kmeans(x, k=4, seed=0)
    out, n_split = split_impure_clusters(x, km, y, np.ones(300), 3, max_k=6)
    assert out.k <= 6 and n_split == 1  # one split (+2 clusters) fits, a second would not


def test_k_grid_is_bounded_and_sorted() -> None:
    grid = k_grid(2, 200)
    assert grid[0] == 2 and grid[-1] == 200 and len(grid) <= 6 and grid == sorted(grid)
    assert k_grid(7, 7) == [7]


def test_knn_exact_matches_brute_force() -> None:
    x = make_blobs(n=300, dim=16).x
    sims, idx = knn.knn_search(x, 5)
    full = x @ x.T
    np.fill_diagonal(full, -np.inf)
    ref = np.argsort(-full, axis=1)[:, :5]
    assert (idx != np.arange(300)[:, None]).all()
    assert np.mean([len(set(a) & set(b)) / 5 for a, b in zip(idx, ref, strict=True)]) > 0.99
    assert np.allclose(sims, np.take_along_axis(full, idx, axis=1), atol=1e-5)


def test_knn_ivf_path_has_high_recall(monkeypatch: pytest.MonkeyPatch) -> None:
    x = make_blobs(n=4000, n_classes=8, dim=16, seed=1).x
    _exact_s, exact_i = knn.knn_search(x, 10)
    monkeypatch.setattr(knn, "EXACT_LIMIT", 100)
    _, approx_i = knn.knn_search(x, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(approx_i, exact_i, strict=True)])
    assert recall > 0.9


def test_affinity_graph_is_symmetric_and_normalised() -> None:
    x = make_blobs(n=200, dim=8).x
    w = knn.affinity_graph(*knn.knn_search(x, 6))
    assert isinstance(w, sp.csr_matrix) and (abs(w - w.T) > 1e-6).nnz == 0
    assert w.diagonal().max() == 0
    s = knn.normalized_graph(w)
    assert np.linalg.norm(s.toarray(), 2) <= 1.0 + 1e-4  # spectral radius of D^-1/2 W D^-1/2


def test_label_spreading_follows_the_graph() -> None:
    # Two chains of 30 nodes (neighbours i±1, i±2), one label at the end of each: every node takes its
    # chain's label, however far along the chain it is.
    n = 30
    idx = np.full((2 * n, 4), -1)
    for chain in (0, 1):
        for i in range(n):
            nb = [j for j in (i - 2, i - 1, i + 1, i + 2) if 0 <= j < n]
            idx[chain * n + i, : len(nb)] = [chain * n + j for j in nb]
    sims = np.where(idx >= 0, 0.9, 0.0).astype(np.float32)
    s = knn.normalized_graph(knn.affinity_graph(sims, idx))
    y = np.full(2 * n, -1)
    y[0], y[n] = 0, 1
    probs = label_spreading(s, y, 2)
    assert (probs[:n].argmax(1) == 0).all() and (probs[n:].argmax(1) == 1).all()
    assert np.allclose(probs.sum(1), 1.0, atol=1e-5)


def test_cluster_majority_weighs_purity_support_and_distance() -> None:
    assignment = np.array([0] * 6 + [1] * 6 + [2] * 3)
    y = np.full(15, -1)
    y[[0, 1, 2]] = 0  # cluster 0: three agreeing labels
    y[[6, 7]] = [0, 1]  # cluster 1: a tie
    dist = np.tile([0.1, 0.1, 0.1, 0.2, 0.3, 5.0], 2)
    dist = np.concatenate([dist, [0.1, 0.1, 0.1]])
    cm = cluster_majority(assignment, dist, y, 2, 3)
    assert cm.probs[3, 0] > cm.probs[8].max()  # pure and supported beats a tie
    assert cm.probs[5, 0] < cm.probs[3, 0]  # far from the centroid: weaker vote
    assert not cm.has_vote[12:].any() and cm.has_vote[:12].all()  # cluster 2 has no label
    assert cm.cluster_counts[1].tolist() == [1, 1]


def test_classifier_round_trip_and_binary_form(tmp_path: Path) -> None:
    blobs = make_blobs(n=400, n_classes=2, dim=8, seed=3)
    clf = train_classifier(blobs.x, blobs.y, np.ones(400))
    assert clf is not None
    probs = clf.predict_proba(blobs.x, 3)
    assert probs.shape == (400, 3) and np.allclose(probs[:, 2], 0)
    assert (probs.argmax(1) == blobs.y).mean() > 0.95
    assert train_classifier(blobs.x, np.zeros(400, int), np.ones(400)) is None


def test_zero_shot_prefers_the_nearest_prompt_and_sharpens_with_temperature() -> None:
    blobs = make_blobs(n=300, n_classes=3, dim=16, spread=0.1, seed=2)
    prompts = [np.stack([c, c]) for c in blobs.centres]
    vecs = class_embeddings(prompts, 16)
    warm = zero_shot_probs(blobs.x, vecs, temperature=1.0)
    cold = zero_shot_probs(blobs.x, vecs, temperature=0.01)
    assert (cold.argmax(1) == blobs.y).mean() > 0.95
    assert cold.max(1).mean() > warm.max(1).mean()
    assert np.allclose(cold.sum(1), 1.0, atol=1e-5)


@pytest.mark.parametrize(
    ("prompts", "message"),
    [
        pytest.param([np.ones((1, 16))], "at least two", id="one-class"),
        pytest.param([np.ones((1, 16)), np.ones((1, 8))], "dimension", id="wrong-dim"),
        pytest.param([np.ones((1, 16)), np.ones((0, 16))], "no prompt", id="empty"),
    ],
)
def test_zero_shot_rejects_bad_prompts(prompts: list[np.ndarray], message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        class_embeddings(prompts, 16)


def test_label_errors_rank_flipped_labels_first() -> None:
    blobs = make_blobs(n=600, n_classes=3, dim=16, spread=0.2, seed=6)
    y = blobs.y.copy()
    flipped = np.array([1, 2, 3, 4, 5])
    y[flipped] = (y[flipped] + 1) % 3
    human = np.zeros(600, dtype=bool)
    human[:100] = True
    scores = label_error_scores(blobs.x, np.where(human, y, blobs.y), human, 3, k=10)
    assert scores.index.tolist() == list(range(100))
    worst = set(scores.index[np.argsort(-scores.score)[:5]].tolist())
    assert worst == set(flipped.tolist())
    assert (scores.suggested[flipped] == blobs.y[flipped]).all()
    assert scores.score[flipped].min() > 0.8


def test_outlier_scores_rank_planted_outliers_first() -> None:
    blobs = make_blobs(n=500, n_classes=3, dim=16, spread=0.15, seed=7)
    rng = np.random.default_rng(0)
    odd = rng.normal(size=(5, 16)).astype(np.float32)
    x = np.vstack([blobs.x, odd])
    scores = outlier_scores(x, k=10)
    assert set(np.argsort(-scores)[:5].tolist()) == set(range(500, 505))
    assert np.median(scores[:500]) == pytest.approx(1.0, abs=0.1)
    assignment = np.concatenate([blobs.y, [0] * 5])
    by_cluster = outlier_scores(x, k=10, assignment=assignment)
    assert set(np.argsort(-by_cluster)[:5].tolist()) == set(range(500, 505))


@pytest.mark.parametrize(
    ("method", "dims"),
    [pytest.param("pca", 2, id="pca-2d"), pytest.param("pca", 3, id="pca-3d"), pytest.param("tsne", 2, id="tsne-2d")],
)
def test_projection_shapes(method: str, dims: int) -> None:
    blobs = make_blobs(n=80, n_classes=3, dim=16, spread=0.1)
    proj = project(blobs.x, method, dims)
    assert proj.coords.shape == (80, dims) and np.isfinite(proj.coords).all()
    if method == "pca":
        assert len(proj.explained_variance) == dims and sum(proj.explained_variance) <= 1.0


def test_projection_errors() -> None:
    x = make_blobs(n=50, dim=8).x
    with pytest.raises(InvalidArgument):
        project(x, "pca", 4)
    with pytest.raises(InvalidArgument):
        project(x, "isomap", 2)
    import importlib.util

    if importlib.util.find_spec("umap") is None:
        with pytest.raises(FailedPrecondition, match="umap-learn"):
            project(x, "umap", 2)


def test_artifacts_round_trip_without_pickle(tmp_path: Path) -> None:
    blobs = make_blobs(n=200, n_classes=3, dim=8)
    pca = fit_pca(blobs.x, n_components=4)
    clf = train_classifier(pca.transform(blobs.x), blobs.y, np.ones(200))
    folder = save_round(
        tmp_path, "round-1", pca=pca, centroids=np.ones((3, 4), np.float32), classifier=clf,
        class_names=["a", "b", "c"], meta={"k": 3},
    )
    assert sorted(p.name for p in folder.iterdir()) == ["centroids.npz", "classifier.npz", "pca.npz", "round.json"]
    loaded = load_round(tmp_path, "round-1")
    assert loaded.class_names == ["a", "b", "c"] and loaded.meta["k"] == 3
    assert loaded.classifier is not None
    z = pca.transform(blobs.x)
    assert np.allclose(loaded.classifier.predict_proba(z, 3), clf.predict_proba(z, 3))  # type: ignore[union-attr]
    # Saving the same id again replaces it atomically; nothing temporary is left behind.
    save_round(tmp_path, "round-1", pca=pca, centroids=np.zeros((3, 4)), classifier=None, class_names=["a"], meta={})
    assert not (tmp_path / "round-1" / "classifier.npz").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["round-1"]
    with pytest.raises(NotFound):
        load_round(tmp_path, "never-saved")


@pytest.mark.parametrize("bad", ["", "../escape", "a/b", ".hidden", "x" * 200, "a..b"])
def test_round_ids_cannot_escape_the_artifact_dir(bad: str) -> None:
    with pytest.raises(InvalidArgument):
        check_round_id(bad)
