"""Data-quality scores: suspected human label errors (neighbourhood disagreement) and outliers (kNN distance)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from services.clusterer.knn import knn_search
from tagalong.runtime.vectors import l2_normalize


@dataclass(frozen=True)
class LabelErrorScores:
    """For each examined item: the label its neighbourhood suggests and how strongly it disagrees."""

    index: np.ndarray  # rows examined (human-labelled)
    suggested: np.ndarray  # class index suggested by the neighbours (-1: no labelled neighbour)
    score: np.ndarray  # in [0, 1]: 1 - weighted share of neighbours agreeing with the given label


def label_error_scores(
    x: np.ndarray, y: np.ndarray, is_human: np.ndarray, n_classes: int, *, k: int = 10, seed: int = 0
) -> LabelErrorScores:
    """Score each human label by how much its k nearest labelled neighbours (any source) disagree with it.

    Neighbours are weighted by cosine similarity; items without labelled neighbours score 0 (no evidence).
    """
    labelled = np.flatnonzero(y >= 0)
    humans = np.flatnonzero(is_human & (y >= 0))
    if humans.size == 0 or labelled.size < 2:
        return LabelErrorScores(humans, np.full(humans.size, -1), np.zeros(humans.size, dtype=np.float32))
    xl = l2_normalize(x[labelled])
    sims, idx = knn_search(xl, min(k, labelled.size - 1), seed=seed)
    pos = np.searchsorted(labelled, humans)
    sims, idx = sims[pos], idx[pos]
    w = np.clip(sims, 0.0, None) * (idx >= 0)
    neigh_labels = np.where(idx >= 0, y[labelled][np.maximum(idx, 0)], 0)
    votes = np.zeros((humans.size, n_classes), dtype=np.float32)
    np.add.at(votes, (np.repeat(np.arange(humans.size), idx.shape[1]), neigh_labels.ravel()), w.ravel())
    total = votes.sum(axis=1)
    given = y[humans]
    agree = np.where(total > 0, votes[np.arange(humans.size), given] / np.maximum(total, 1e-12), 1.0)
    suggested = np.where(total > 0, votes.argmax(axis=1), -1)
    return LabelErrorScores(humans, suggested, (1.0 - agree).astype(np.float32))


def outlier_scores(
    x: np.ndarray, *, k: int = 10, assignment: np.ndarray | None = None, seed: int = 0
) -> np.ndarray:
    """Mean cosine distance to the k nearest neighbours, divided by the median of that distance over the
    whole set (or, when given, the item's cluster): about 1 for typical items, well above 1 for unusual
    ones. The service uses the global median: bench/eval_outliers.py measured the cluster-relative form
    hiding groups of odd items that KMeans gives a cluster of their own."""
    n = x.shape[0]
    if n < 2:
        return np.zeros(n, dtype=np.float32)
    xn = l2_normalize(x)
    sims, idx = knn_search(xn, min(k, n - 1), seed=seed)
    sims = np.where(idx >= 0, sims, np.nan)
    dist = np.nan_to_num(np.nanmean(1.0 - sims, axis=1), nan=1.0)
    dist = np.maximum(dist, 0.0)
    if assignment is None:
        ref = np.full(n, np.median(dist))
    else:
        med = np.zeros(int(assignment.max()) + 1)
        for c in np.unique(assignment):
            med[c] = np.median(dist[assignment == c])
        ref = med[assignment]
    return (dist / np.maximum(ref, 1e-6)).astype(np.float32)
