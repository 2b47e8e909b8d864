"""KMeans with automatic k (silhouette on a sample, bounded grid), fitted on a sample, assigned in batches."""

from __future__ import annotations

from dataclasses import dataclass

import faiss
import numpy as np
from sklearn.metrics import silhouette_score

from tagalong.runtime.errors import InvalidArgument


@dataclass(frozen=True)
class KMeansResult:
    """Centroids, each point's cluster, and distances to its nearest and second-nearest centroid."""

    centroids: np.ndarray  # (k, m) float32
    assignment: np.ndarray  # (n,) int64
    dist1: np.ndarray  # (n,) squared distance to the nearest centroid
    dist2: np.ndarray  # (n,) squared distance to the second nearest (== dist1 when k == 1)
    k: int
    silhouette_by_k: dict[int, float]


def fit_centroids(
    x: np.ndarray, k: int, seed: int, niter: int = 25, max_points: int = 256, nredo: int = 1
) -> np.ndarray:
    km = faiss.Kmeans(
        x.shape[1], k, niter=niter, seed=int(seed % (2**31)), max_points_per_centroid=max_points,
        min_points_per_centroid=1, spherical=False, verbose=False, nredo=nredo,
    )
    km.train(np.ascontiguousarray(x, dtype=np.float32))
    return np.asarray(km.centroids, dtype=np.float32).reshape(k, x.shape[1])


def assign(x: np.ndarray, centroids: np.ndarray, batch: int = 65536) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Nearest and second-nearest centroid of every row, in batches (exact, faiss flat L2)."""
    k = centroids.shape[0]
    index = faiss.IndexFlatL2(centroids.shape[1])
    index.add(np.ascontiguousarray(centroids, dtype=np.float32))
    nn = min(2, k)
    n = x.shape[0]
    labels = np.empty(n, dtype=np.int64)
    d1 = np.empty(n, dtype=np.float32)
    d2 = np.empty(n, dtype=np.float32)
    for start in range(0, n, batch):
        dist, idx = index.search(np.ascontiguousarray(x[start : start + batch], dtype=np.float32), nn)
        labels[start : start + batch] = idx[:, 0]
        d1[start : start + batch] = dist[:, 0]
        d2[start : start + batch] = dist[:, -1]
    return labels, np.maximum(d1, 0), np.maximum(d2, 0)


def k_grid(k_min: int, k_max: int, steps: int = 6) -> list[int]:
    """A bounded, roughly geometric grid of k values between k_min and k_max."""
    if k_max <= k_min:
        return [k_min]
    grid = np.unique(np.round(np.geomspace(k_min, k_max, num=steps)).astype(int))
    return [int(k) for k in grid]


def fit_kmeans(
    x: np.ndarray,
    *,
    k: int = 0,
    k_min: int = 2,
    k_max: int = 50,
    seed: int = 0,
    silhouette_sample: int = 2000,
    search_sample: int = 20_000,
    fit_sample: int = 100_000,
) -> KMeansResult:
    """KMeans on (a sample of) x; k chosen by silhouette on a sample when k == 0."""
    n = x.shape[0]
    if n < 2:
        raise InvalidArgument("clustering needs at least two vectors")
    rng = np.random.default_rng(seed)
    fit_rows = x if n <= fit_sample else x[np.sort(rng.choice(n, fit_sample, replace=False))]
    scores: dict[int, float] = {}
    if k <= 0:
        k_min = max(2, min(k_min, n - 1))
        k_max = max(k_min, min(k_max, n - 1))
        sample_idx = rng.choice(fit_rows.shape[0], min(silhouette_sample, fit_rows.shape[0]), replace=False)
        sample = fit_rows[sample_idx]
        search_rows = fit_rows
        if fit_rows.shape[0] > search_sample:
            search_rows = fit_rows[rng.choice(fit_rows.shape[0], search_sample, replace=False)]

        def score(cand: int) -> None:
            cents = fit_centroids(search_rows, cand, seed, niter=15, max_points=64, nredo=2)
            lab, _, _ = assign(sample, cents)
            ok = len(np.unique(lab)) >= 2
            scores[cand] = float(silhouette_score(sample, lab, random_state=seed)) if ok else -1.0

        grid = k_grid(k_min, k_max)
        for cand in grid:
            score(cand)
        # Refine between the best coarse value's neighbours (at most 4 more fits).
        best = max(scores, key=lambda c: (scores[c], c))
        pos = grid.index(best)
        lo = grid[pos - 1] if pos > 0 else best
        hi = grid[pos + 1] if pos + 1 < len(grid) else best
        between = [c for c in range(lo + 1, hi) if c not in scores]
        if len(between) > 4:
            between = sorted({between[int(i)] for i in np.linspace(0, len(between) - 1, 4)})
        for cand in between:
            score(cand)
        k = max(scores, key=lambda c: (scores[c], c))
    k = min(k, n)
    # Several restarts for the final fit: one bad local minimum merges two classes into one cluster.
    centroids = fit_centroids(fit_rows, k, seed, nredo=3)
    labels, d1, d2 = assign(x, centroids)
    return KMeansResult(centroids=centroids, assignment=labels, dist1=d1, dist2=d2, k=k, silhouette_by_k=scores)


def split_impure_clusters(
    x: np.ndarray,
    km: KMeansResult,
    y: np.ndarray,
    weights: np.ndarray,
    n_classes: int,
    *,
    min_purity: float = 0.75,
    min_share: float = 0.15,
    min_weight: float = 2.0,
    max_k: int = 0,
) -> tuple[KMeansResult, int]:
    """Re-cluster with the labels: clusters whose labelled members disagree are split by class.

    A cluster whose weighted labels (y >= 0) give no class `min_purity` of the weight is replaced by one centroid
    per class holding at least `min_share` of it and `min_weight` in all (the weighted mean of that class's
    labelled members there); then every point goes to its nearest centroid, so the distances stay exact.
    `max_k` (0: twice the current k) bounds the growth. Returns the new clustering and how many were split.
    """
    labelled = y >= 0
    counts = np.zeros((km.k, n_classes), dtype=np.float64)
    np.add.at(counts, (km.assignment[labelled], y[labelled]), weights[labelled].astype(np.float64))
    total = counts.sum(axis=1)
    limit = max_k or 2 * km.k
    centroids: list[np.ndarray] = []
    split = 0
    budget = limit - km.k
    # Most impure (by weight of the minority labels) first, while the growth budget lasts.
    minority = total - counts.max(axis=1)
    for c in np.argsort(-minority, kind="stable"):
        enough = (counts[c] >= min_share * total[c]) & (counts[c] >= min_weight)
        classes = np.flatnonzero(enough)
        impure = total[c] > 0 and counts[c].max() < min_purity * total[c] and classes.size >= 2
        if not impure or classes.size - 1 > budget:
            centroids.append(km.centroids[c])
            continue
        in_c = labelled & (km.assignment == c)
        for j in classes:
            rows = in_c & (y == j)
            w = weights[rows].astype(np.float64)
            centroids.append((x[rows] * w[:, None]).sum(axis=0) / max(w.sum(), 1e-12))
        budget -= classes.size - 1
        split += 1
    if not split:
        return km, 0
    cents = np.asarray(centroids, dtype=np.float32)
    labels, d1, d2 = assign(x, cents)
    return KMeansResult(cents, labels, d1, d2, cents.shape[0], km.silhouette_by_k), split
