"""Uncertainty scores and the human-review batch: kernel herding over the collection, weighted by uncertainty
once there are enough labels (representative items of the regions the round is unsure about)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from services.clusterer.knn import knn_search

# Below this many human labels per class, review batches are plain herding (see select_review). Chosen on the dev
# split (bench/eval_labeling.py's active-learning curve, 3 seeds) with the uncertainty-weighted herding above it:
# mean accuracy over 50-100 labels 3: 0.644 / 0.817, 4: 0.641 / 0.820, 5: 0.636 / 0.819 (CIFAR-10 / Fashion-MNIST);
# but 3 costs CIFAR-10 2.3 points at 40 labels (0.591 against 0.614). (Against the k-center greedy mix used before,
# all-herding up to 10 labels per class had measured the same on Fashion-MNIST and 0.8 to 1.9 points worse on
# CIFAR-10 at 60-90 labels.)
LOW_BUDGET_PER_CLASS = 4
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
# From LOW_BUDGET_PER_CLASS labels per class on, herding weighs each item by uncertainty ** (UNCERTAINTY_POWER x
# (1 - diversity)): power 2 at the default diversity 0.5, plain herding at diversity 1. Chosen on the dev split
# (bench/eval_labeling.py's active-learning curve, 3 seeds) over the k-center greedy pick among the most uncertain
# items that it replaced; at 60-100 labels (switching at 5 labels per class), powers 1 and 2 against it:
# CIFAR-10 +0.2..+1.9 and +1.2..+2.8 points, Fashion-MNIST +1.0..+1.4 and +1.4..+1.6 points. Power 4: CIFAR-10
# +1.0..+2.3, Fashion-MNIST +0.9..+1.6. Also tried on the dev split and not kept: weighting the plain-herding
# batches towards classes with few human labels (each item by sum_c p_c / (1 + labels of c)), which balances
# the labels (Fashion-MNIST at 40: 1 to 7 per class -> 2 to 5) but lost at 20 labels (Fashion-MNIST 0.763 ->
# 0.704) and was level from 40 on (0.792 -> 0.790; CIFAR-10 0.614 -> 0.605).
UNCERTAINTY_POWER = 4.0


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
    seed: int = 0, weights: np.ndarray | None = None, describe: Callable[[int], str] | None = None,
) -> list[ReviewPick]:
    """Representative items by kernel herding (MaxHerding, Bae et al. 2024): each pick is the item that most
    raises the generalized coverage sum_i w_i max_{s labelled or picked} k(z_i, z_s), with a Gaussian kernel over
    each item's HERDING_NEIGHBOURS nearest neighbours. Dense regions nobody has labelled give the biggest gains, and
    an item near a label gains little, so a batch spreads over the data without clustering first. `weights` (per
    item, in [0, 1]; default all 1) make some items worth covering more than others: uncertain ones, so that a pick
    is the most representative item of a region the round is unsure about, and one pick covers its near-duplicates.
    Collections above HERDING_SAMPLE items are herded on a seeded sample of that size (coverage by labels still
    counts them all). `describe(i)`, when given, words each pick's reason. Marks the picks in `taken`."""
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
    w = np.ones(m) if weights is None else np.asarray(weights, dtype=np.float64)[rows]
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
        gain = (np.maximum(kern - cover[nb], 0.0) * w[nb]).sum(axis=1) + w * np.maximum(1.0 - cover, 0.0)
        gain[~free] = -np.inf
        j = int(np.argmax(gain))
        free[j] = False
        i = int(rows[j])
        taken[i] = True
        cover[nb[j]] = np.maximum(cover[nb[j]], kern[j])
        cover[j] = 1.0
        c = int(assignment[i])
        if describe is None:
            unlabelled = "" if cluster_has_human[c] else ", which has no human label"
            reason = (f"representative of an unlabelled neighbourhood (covers {gain[j]:.1f} of its {width - 1} "
                      f"neighbours and itself); cluster {c}{unlabelled}")
        else:
            reason = f"{describe(i)}; representative of an uncertain neighbourhood (weighted coverage {gain[j]:.1f})"
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
) -> list[ReviewPick]:
    """Most useful items for a person to label, most useful first, by kernel herding (herding_picks):

    - below LOW_BUDGET_PER_CLASS human labels per class, plain herding: representative items of the regions no
      label covers yet (uncertainty is unreliable with so few labels; TypiClust, Hacohen et al. 2022);
    - from there on, herding with each item weighted by its combined uncertainty ** (UNCERTAINTY_POWER x
      (1 - diversity)): the picks are representative items of the regions the round is unsure about. Coverage
      keeps a batch spread out (no 20 near-identical images in one batch); diversity 1 is plain herding.
    """
    n = z.shape[0]
    if batch_size <= 0 or n == 0:
        return []
    taken = np.zeros(n, dtype=bool)
    taken[is_human] = True
    n_classes = max(probs.shape[1], 1)
    if int(is_human.sum()) < LOW_BUDGET_PER_CLASS * n_classes or diversity >= 1.0:
        return herding_picks(z, taken, batch_size, assignment, cluster_has_human, seed)
    power = UNCERTAINTY_POWER * (1.0 - diversity)
    weights = np.power(np.clip(unc.combined.astype(np.float64), 1e-3, 1.0), power)
    return herding_picks(
        z, taken, batch_size, assignment, cluster_has_human, seed, weights=weights,
        describe=lambda i: _describe(i, probs, unc, assignment, class_names),
    )
