"""Uncertainty scores and the human-review batch: representative items (kernel herding) mixed with uncertain,
diverse ones (k-center greedy)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from services.clusterer.knn import knn_search

# Below this many human labels per class, review batches are all representative picks (see select_review). 5, not
# 10: with kernel herding, all-herding up to 10 labels per class measured the same on Fashion-MNIST and 0.8 to 1.9
# points worse on CIFAR-10 at 60-90 labels (dev split, bench/eval_labeling.py's active-learning curve, 3 seeds).
LOW_BUDGET_PER_CLASS = 5
# Kernel herding (herding_picks): the kernel reaches each item's 50 nearest neighbours, with a width of
# HERDING_BANDWIDTH x the median squared distance to the 50th. Chosen on the dev split (bench/eval_labeling.py's
# active-learning curve, 3 seeds) over TypiClust (the densest item of each uncovered k-means region, which this
# replaced): at 50 labels 0.599 -> 0.622 on CIFAR-10 and 0.767 -> 0.807 on Fashion-MNIST. Widths 1, 2, 3, 6 x the
# median: the same on CIFAR-10 from 2 on; 2 best on Fashion-MNIST at 20-50 labels. Its weak spot is the very first
# batch on Fashion-MNIST (10 labels: 0.56 against 0.64), which the gain from 20 labels on makes up for.
HERDING_NEIGHBOURS = 50
HERDING_BANDWIDTH = 2.0
# Collections above this many items are herded on a seeded sample of this size (bounded cost at 1M).
HERDING_SAMPLE = 50_000


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


def herding_picks(
    z: np.ndarray, taken: np.ndarray, quota: int, assignment: np.ndarray, cluster_has_human: np.ndarray,
    seed: int = 0,
) -> list[ReviewPick]:
    """Representative items by kernel herding (MaxHerding, Bae et al. 2024): each pick is the item that most
    raises the generalized coverage sum_i max_{s labelled or picked} k(z_i, z_s), with a Gaussian kernel over each
    item's HERDING_NEIGHBOURS nearest neighbours. Dense regions nobody has labelled give the biggest gains, and an
    item near a label gains little, so a batch spreads over the data without clustering first. Collections above
    HERDING_SAMPLE items are herded on a seeded sample of that size (coverage by labels still counts them all).
    Marks the picks in `taken`."""
    n = z.shape[0]
    free_all = np.flatnonzero(~taken)
    if quota <= 0 or free_all.size == 0:
        return []
    rows = np.arange(n)
    if n > HERDING_SAMPLE:
        rows = np.sort(np.random.default_rng(seed).choice(n, HERDING_SAMPLE, replace=False))
    m = rows.size
    if m < 3:  # nothing to herd: take what is free
        picks = free_all[:quota]
        taken[picks] = True
        return [ReviewPick(int(i), 0.5, "representative item; cluster " + str(int(assignment[i]))) for i in picks]
    zs = np.ascontiguousarray(z[rows], dtype=np.float32)
    sims, nb = knn_search(zs, min(HERDING_NEIGHBOURS, m - 1), seed=seed)
    d2 = np.maximum(2.0 - 2.0 * sims.astype(np.float64), 0.0)
    valid = nb >= 0
    sigma2 = max(HERDING_BANDWIDTH * float(np.median(d2[:, -1])), 1e-9)
    kern = np.where(valid, np.exp(-d2 / sigma2), 0.0)
    nb = np.maximum(nb, 0)
    cover = np.zeros(m)
    anchors = np.flatnonzero(taken)
    if anchors.size:  # what is labelled (or picked earlier in this batch) already covers its surroundings
        best, _ = knn_search(z[anchors], 1, queries=zs, seed=seed)
        cover = np.exp(-np.maximum(2.0 - 2.0 * best[:, 0].astype(np.float64), 0.0) / sigma2)
    free = ~taken[rows]
    out: list[ReviewPick] = []
    width = kern.shape[1] + 1
    while len(out) < quota and free.any():
        gain = np.maximum(kern - cover[nb], 0.0).sum(axis=1) + np.maximum(1.0 - cover, 0.0)
        gain[~free] = -np.inf
        j = int(np.argmax(gain))
        free[j] = False
        i = int(rows[j])
        taken[i] = True
        cover[nb[j]] = np.maximum(cover[nb[j]], kern[j])
        cover[j] = 1.0
        c = int(assignment[i])
        unlabelled = "" if cluster_has_human[c] else ", which has no human label"
        reason = (f"representative of an unlabelled neighbourhood (covers {gain[j]:.1f} of its {width - 1} "
                  f"neighbours and itself); cluster {c}{unlabelled}")
        out.append(ReviewPick(i, 0.5 + 0.5 * float(gain[j]) / width, reason))
    return out


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

    1. Representative items by kernel herding (herding_picks) for a `diversity` share of the batch (all of it
       below LOW_BUDGET_PER_CLASS human labels per class, where single uncertain points are unreliable picks
       but dense unlabelled regions are not).
    2. k-center greedy over the most uncertain items: each pick maximises
       (1 - diversity) * uncertainty + diversity * distance to everything labelled or picked,
       so no batch holds 20 near-identical images.
    """
    n = z.shape[0]
    if batch_size <= 0 or n == 0:
        return []
    picks: list[ReviewPick] = []
    taken = np.zeros(n, dtype=bool)
    taken[is_human] = True
    n_classes = max(probs.shape[1], 1)
    if int(is_human.sum()) < LOW_BUDGET_PER_CLASS * n_classes:
        # Low-budget regime: representative items beat uncertain ones (uncertainty is unreliable with few
        # labels; see TypiClust, Hacohen et al. 2022), so coverage takes the whole batch.
        coverage_quota = batch_size
    else:
        coverage_quota = round(diversity * batch_size)
    if coverage_quota > 0:
        picks += herding_picks(z, taken, coverage_quota, assignment, cluster_has_human, seed)
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
