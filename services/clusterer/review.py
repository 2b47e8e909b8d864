"""Uncertainty scores and the human-review batch: uncertainty mixed with diversity (k-center greedy)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from services.clusterer.kmeans import assign, fit_centroids
from services.clusterer.knn import knn_search

# Below this many human labels per class, review batches are all coverage picks (see select_review). 5, not 10:
# mixing in uncertainty picks from 5 labels per class on measured about +0.5 points at 60-100 labels on the dev
# split and -0.3 to +1.2 (CIFAR-10), +0.1 to +0.6 (Fashion-MNIST) on the test split (bench/eval_labeling.py's
# active-learning curve, 3 seeds); nothing changes below 50 labels.
LOW_BUDGET_PER_CLASS = 5
# Neighbours behind an item's typicality (TypiClust uses 20).
TYPICALITY_NEIGHBOURS = 20
# Regions bigger than this are scored on a sample of this many members (a kNN search within the region).
TYPICALITY_SAMPLE = 5000


@dataclass(frozen=True)
class Uncertainty:
    """Per-point uncertainty signals, each in [0, 1] (higher = less sure)."""

    centroid_margin: np.ndarray  # relative gap between the two nearest centroids (low = on a border)
    entropy: np.ndarray  # classifier entropy / log(K)
    disagreement: np.ndarray  # 1 - ensemble agreement
    prob_margin: np.ndarray  # top-1 minus top-2 ensemble probability
    combined: np.ndarray


def uncertainty_scores(
    dist1: np.ndarray, dist2: np.ndarray, classifier_probs: np.ndarray | None, agreement: np.ndarray, probs: np.ndarray
) -> Uncertainty:
    r1, r2 = np.sqrt(dist1), np.sqrt(dist2)
    centroid_margin = np.where(r1 + r2 > 0, (r2 - r1) / np.maximum(r1 + r2, 1e-12), 1.0).astype(np.float32)
    n, k = probs.shape
    if classifier_probs is not None and k > 1:
        p = np.clip(classifier_probs, 1e-12, 1.0)
        entropy = (-(p * np.log(p)).sum(axis=1) / np.log(k)).astype(np.float32)
    else:
        entropy = np.ones(n, dtype=np.float32)
    top2 = np.sort(probs, axis=1)[:, -2:] if k > 1 else np.hstack([np.zeros((n, 1)), probs])
    prob_margin = (top2[:, 1] - top2[:, 0]).astype(np.float32)
    disagreement = (1.0 - agreement).astype(np.float32)
    combined = 0.4 * (1 - prob_margin) + 0.3 * entropy + 0.2 * disagreement + 0.1 * (1 - centroid_margin)
    return Uncertainty(centroid_margin, entropy, disagreement, prob_margin, combined.astype(np.float32))


@dataclass(frozen=True)
class ReviewPick:
    """One item chosen for human review."""

    index: int
    priority: float
    reason: str


def _describe(i: int, probs: np.ndarray, unc: Uncertainty, assignment: np.ndarray, names: Sequence[str]) -> str:
    order = np.argsort(probs[i])[::-1]
    cluster = int(assignment[i])
    if probs.shape[1] < 2 or probs[i, order[0]] <= 0:
        return f"no machine guess yet; cluster {cluster}"
    a, b = names[order[0]], names[order[1]]
    parts = [f"margin {unc.prob_margin[i]:.2f} between {a} and {b}"]
    if unc.disagreement[i] > 0.01:
        parts.append(f"methods disagree ({unc.disagreement[i]:.0%})")
    if unc.entropy[i] > 0.7:
        parts.append(f"classifier entropy {unc.entropy[i]:.2f}")
    parts.append(f"cluster {cluster}")
    return "; ".join(parts)


def typicality(zm: np.ndarray, neighbours: int = TYPICALITY_NEIGHBOURS) -> np.ndarray:
    """Inverse mean Euclidean distance of each row to its `neighbours` nearest other rows (unit vectors): how
    dense the point's surroundings are (TypiClust's typicality, Hacohen et al. 2022). Not built on
    quality.outlier_scores (mean cosine distance): the two rank members a little differently, and swapping
    them in moved the active-learning curve by up to 1 point, so the measured form stays."""
    m = zm.shape[0]
    if m < 3:
        return np.ones(m, dtype=np.float32)
    sims, idx = knn_search(zm, min(neighbours, m - 1))
    dist = np.sqrt(np.maximum(2.0 - 2.0 * sims, 0.0))
    valid = idx >= 0
    mean = (dist * valid).sum(axis=1) / np.maximum(valid.sum(axis=1), 1)
    return (1.0 / (mean + 1e-6)).astype(np.float32)


def _typical_member(z: np.ndarray, region: np.ndarray, taken: np.ndarray, seed: int = 0) -> int | None:
    """The most typical (densest) untaken member of a region, or None when all are taken. Density, not distance
    to the centroid: a centroid can sit in a sparse part of a skewed region, and a label on a dense point
    reaches more of its neighbours. Measured with bench/eval_labeling.py's active-learning curve, 3 seeds: at 50
    labels +6.1 points on CIFAR-10 and -0.1 on Fashion-MNIST (dev split), -0.5 and +1.0 (test split); labels
    needed to reach random selection's accuracy at 100 on the test split: 90 -> 80 and 70 -> 50.
    Regions above TYPICALITY_SAMPLE members are scored on a random sample of that size (bounded cost at 1M)."""
    if region.size > TYPICALITY_SAMPLE:
        region = np.sort(np.random.default_rng(seed).choice(region, TYPICALITY_SAMPLE, replace=False))
    free = ~taken[region]
    if not free.any():
        return None
    t = typicality(z[region])
    t[~free] = -np.inf
    return int(region[int(np.argmax(t))])


def select_review(
    z: np.ndarray,
    *,
    is_human: np.ndarray,
    assignment: np.ndarray,
    cluster_has_human: np.ndarray,
    probs: np.ndarray,
    unc: Uncertainty,
    class_names: Sequence[str],
    batch_size: int,
    diversity: float,
    seed: int = 0,
    pool_factor: int = 10,
) -> list[ReviewPick]:
    """Most useful items for a person to label, most useful first.

    1. The most typical member (the densest, see typicality) of each cluster with no human label, biggest first:
       one label there unlocks a whole cluster.
    2. Coverage of finer regions: the data is split into (labelled + batch) small clusters and the most
       typical member of the uncovered ones is picked, biggest first, for a `diversity` share of what is
       left (all of it below LOW_BUDGET_PER_CLASS human labels per class, where single uncertain points are
       unreliable picks but regions are not).
    3. k-center greedy over the most uncertain items: each pick maximises
       (1 - diversity) * uncertainty + diversity * distance to everything labelled or picked,
       so no batch holds 20 near-identical images.
    """
    n = z.shape[0]
    if batch_size <= 0 or n == 0:
        return []
    picks: list[ReviewPick] = []
    taken = np.zeros(n, dtype=bool)
    taken[is_human] = True
    sizes = np.bincount(assignment, minlength=cluster_has_human.shape[0])
    for c in (c for c in np.argsort(-sizes, kind="stable") if not cluster_has_human[c] and sizes[c] > 0):
        if len(picks) >= batch_size:
            return picks
        i = _typical_member(z, np.flatnonzero(assignment == c), taken, seed)
        if i is not None:
            taken[i] = True
            reason = f"cluster {c} ({sizes[c]} items) has no human label; its most typical item"
            picks.append(ReviewPick(i, 1.0 + float(sizes[c]) / n, reason))
    remaining = batch_size - len(picks)
    n_classes = max(probs.shape[1], 1)
    if int(is_human.sum()) < LOW_BUDGET_PER_CLASS * n_classes:
        # Low-budget regime: representative items beat uncertain ones (uncertainty is unreliable with few
        # labels; see TypiClust, Hacohen et al. 2022), so coverage takes the whole batch.
        coverage_quota = remaining
    else:
        coverage_quota = round(diversity * remaining)
    if coverage_quota > 0 and (~taken).sum() > 0:
        picks += _coverage_picks(z, taken, assignment, coverage_quota, batch_size, seed, unc.combined)
    remaining = batch_size - len(picks)
    free = np.flatnonzero(~taken)
    if remaining <= 0 or free.size == 0:
        return picks
    pool_size = min(free.size, max(pool_factor * remaining, 200))
    pool = free[np.argsort(-unc.combined[free], kind="stable")[:pool_size]]
    zp = z[pool]
    anchors = np.flatnonzero(taken)
    dmin = np.ones(pool.size, dtype=np.float32)
    if anchors.size:
        dmin = np.full(pool.size, np.inf, dtype=np.float32)
        for start in range(0, anchors.size, 4096):
            a = z[anchors[start : start + 4096]]
            d = np.sqrt(np.maximum(((zp**2).sum(1)[:, None] - 2 * zp @ a.T + (a**2).sum(1)[None, :]), 0))
            dmin = np.minimum(dmin, d.min(axis=1))
    scale = float(np.max(dmin)) if np.isfinite(dmin).all() and dmin.size else 1.0
    u = unc.combined[pool]
    chosen = np.zeros(pool.size, dtype=bool)
    for _ in range(min(remaining, pool.size)):
        score = (1 - diversity) * u + diversity * np.minimum(dmin / max(scale, 1e-12), 1.0)
        score[chosen] = -np.inf
        j = int(np.argmax(score))
        chosen[j] = True
        i = int(pool[j])
        taken[i] = True
        picks.append(ReviewPick(i, float(score[j]), _describe(i, probs, unc, assignment, class_names)))
        dmin = np.minimum(dmin, np.sqrt(np.maximum(((zp - zp[j]) ** 2).sum(axis=1), 0)))
    return picks


def _coverage_picks(
    z: np.ndarray, taken: np.ndarray, assignment: np.ndarray, quota: int, batch_size: int, seed: int,
    uncertainty: np.ndarray,
) -> list[ReviewPick]:
    """The most typical members of the fine clusters that hold no labelled or picked item yet, biggest first
    (TypiClust). The reason states the region's mean uncertainty; it does not rank: with typical (densest)
    members picked, weighting regions by uncertainty measured 1 point worse on the dev split at 30-50 labels
    on CIFAR-10 and equal on Fashion-MNIST."""
    n = z.shape[0]
    # As many regions as labels after this batch (TypiClust): each new label goes to an uncovered region.
    k_fine = int(min(max(int(taken.sum()) + batch_size, 2), max(n // 5, 2), 1024))
    centroids = fit_centroids(z, k_fine, seed)
    fine, _, _ = assign(z, centroids)
    covered = np.bincount(fine[taken], minlength=k_fine) > 0
    sizes = np.bincount(fine, minlength=k_fine)
    mean_unc = np.bincount(fine, weights=uncertainty.astype(np.float64), minlength=k_fine) / np.maximum(sizes, 1)
    out: list[ReviewPick] = []
    for c in np.argsort(-sizes, kind="stable"):
        if len(out) >= quota:
            break
        if covered[c] or sizes[c] == 0:
            continue
        i = _typical_member(z, np.flatnonzero(fine == c), taken, seed)
        if i is None:
            continue
        taken[i] = True
        reason = (f"typical of an unlabelled region ({sizes[c]} similar items, mean uncertainty {mean_unc[c]:.2f}); "
                  f"cluster {int(assignment[i])}")
        out.append(ReviewPick(i, 0.5 + 0.5 * float(sizes[c]) / max(sizes.max(), 1), reason))
    return out
