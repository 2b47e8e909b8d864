"""One labelling round as one pure call: PCA -> KMeans -> propagation ensemble -> refinement -> review.

`run_round_core(x, labels, is_human, params)` takes numpy arrays and returns everything a round produces;
no gRPC, so the servicer, the evaluation harness and the benchmarks all call the same code.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from services.clusterer.classifier import LinearClassifier, train_classifier
from services.clusterer.kmeans import KMeansResult, fit_kmeans, split_impure_clusters
from services.clusterer.knn import affinity_graph, knn_search, normalized_graph
from services.clusterer.pca import PCABasis, fit_pca
from services.clusterer.propagation import cluster_majority, label_spreading
from services.clusterer.review import ReviewPick, Uncertainty, select_review, uncertainty_scores
from services.clusterer.threads import limited_threads
from services.clusterer.zeroshot import class_embeddings, zero_shot_probs
from tagalong.runtime.errors import InvalidArgument
from tagalong.runtime.vectors import l2_normalize

Progress = Callable[[str, float, str], None]

SOURCE_NONE, SOURCE_HUMAN, SOURCE_PROPAGATED = 0, 1, 2
# Ensemble weights: label spreading is the most accurate member at few labels (measured by bench/eval_labeling.py).
MEMBER_WEIGHTS = {"label_spreading": 2.0, "self_training": 1.0, "cluster_majority": 0.5, "zero_shot": 0.5}
# Confidence = P(label correct) from a logistic model over per-point evidence (see _confidence). Fitted on the
# *dev* split (1,000 training images per class of CIFAR-10 and Fashion-MNIST, EfficientNet-Lite0 features, 1-20
# human labels per class, 2 seeds, the default RoundParams; fitted on evidence computed with the previous
# coefficients in place, since what is committed feeds self-training; last refitted when seed_distance came in;
# `python -m bench.fit_calibration` refits and checks it) and reported on the test splits, so the threshold means
# the same thing on data it was not fitted on. With seed_distance (and the eval on the default 3 iterations, not
# 2) Fashion-MNIST 1/class precision at 0.9 went from 0.935 to 0.970 (test, 3 seeds; 0.956 from seed_distance
# alone) and CIFAR-10's coverage at 5 and 10/class from 0.2/0.9 % to 0.5/2.3 % at 0.963 and 0.971 precision
# (bench/results/eval_labeling.md). Round-level evidence (the round's mean neighbour consistency, margin or
# agreement as extra inputs, fitted on dev) left CIFAR-10 1/class precision at 0.9 where it was on test
# (0.81-0.82 against 0.82): its committed points are wrong between confusable classes (cat/dog, automobile/truck,
# airplane/ship) on evidence that looks like the right ones'.
CALIBRATION = {
    "log_raw": 0.125,  # log of (geometric mean of the soft members' probability x agreement)
    "neighbour_consistency": 1.269,  # share of the point's kNN neighbours predicted the same class
    "log_support": 0.318,  # log(1 + human labels of the predicted class)
    "margin": 3.644,  # top-1 minus top-2 ensemble probability
    "agreement": 0.102,  # (also inside log_raw)
    "seed_distance": -0.383,  # log(distance to the nearest human label of the class / typical neighbour distance)
    "intercept": -1.791,
}
# Members whose probabilities enter the confidence (the others only vote).
SOFT_MEMBERS = ("label_spreading", "self_training")
# Power transform of non-negative embeddings before anything else (x -> x^p, then L2; PT-MAP, Hu et al. 2021):
# pooled CNN features are heavy-tailed, and the square root evens out their dimensions. Measured on the dev split
# (label spreading alone, 1/5/10 labels per class, 3 seeds): Fashion-MNIST +1.0/+0.9/+0.8 points, CIFAR-10
# +0.8/+1.6/+2.3 (p = 0.25 about the same). Embeddings with negative values (CLIP) are left as they are.
FEATURE_POWER = 0.5
# A machine label whose pseudo-label score is below this never trains the classifier.
MIN_PSEUDO_CONFIDENCE = 0.6


@dataclass(frozen=True)
class RoundParams:
    """Resolved settings of a round (the proto's zero values already replaced by defaults)."""

    pca_variance: float = 0.95
    pca_components: int = 0
    max_pca_components: int = 256
    feature_power: float = FEATURE_POWER  # applied to non-negative embeddings only; 1 = off
    k: int = 0
    k_min: int = 0  # 0: max(2, number of classes)
    k_max: int = 0  # 0: a bound derived from the number of classes and points
    confidence_threshold: float = 0.9
    max_iterations: int = 3
    review_batch_size: int = 50
    diversity: float = 0.5
    seed: int = 0
    label_spreading: bool = True
    self_training: bool = True
    recluster: bool = True  # refinement splits clusters whose labels disagree (see split_impure_clusters)
    knn_k: int = 10
    spreading_alpha: float = 0.99
    spreading_iterations: int = 40
    classifier_max_rows: int = 20_000
    settle_fraction: float = 0.005  # stop refining when fewer than this share of labels change
    zero_shot_temperature: float = 0.01

    def validate(self) -> None:
        if not 0.0 < self.pca_variance <= 1.0:
            raise InvalidArgument(f"pca_variance must be in (0, 1], got {self.pca_variance}")
        if not 0.0 < self.feature_power <= 1.0:
            raise InvalidArgument(f"feature_power must be in (0, 1], got {self.feature_power}")
        if not 0.0 < self.confidence_threshold <= 1.0:
            raise InvalidArgument(f"confidence_threshold must be in (0, 1], got {self.confidence_threshold}")
        if not 0.0 <= self.diversity <= 1.0:
            raise InvalidArgument(f"diversity must be in [0, 1], got {self.diversity}")
        if self.k_min and self.k_max and self.k_min > self.k_max:
            raise InvalidArgument(f"k_min ({self.k_min}) exceeds k_max ({self.k_max})")


@dataclass(frozen=True)
class IterationStats:
    iteration: int
    method: str
    labeled: int
    changed: int
    mean_confidence: float
    agreement: float
    clusters: int = 0  # clusters after the iteration (grows when refinement splits impure ones)
    clusters_split: int = 0


@dataclass(frozen=True)
class ClusterInfo:
    cluster_id: int
    size: int
    majority_label: str
    purity: float
    human_labeled: int


@dataclass
class RoundOutput:
    """Everything a round produces, indexed like the input rows."""

    class_names: list[str]
    label: np.ndarray  # (n,) class index of the committed label (human or machine), -1 when none
    predicted: np.ndarray  # (n,) best guess for every row, -1 when there is no guess at all
    confidence: np.ndarray  # (n,) confidence of `predicted` (1 for human rows)
    source: np.ndarray  # (n,) SOURCE_NONE / SOURCE_HUMAN / SOURCE_PROPAGATED
    probs: np.ndarray  # (n, K) ensemble class probabilities
    cluster: np.ndarray  # (n,) cluster id
    uncertainty: Uncertainty
    agreement: np.ndarray  # (n,) share of ensemble members agreeing with `predicted`
    review: list[ReviewPick]
    iterations: list[IterationStats]
    clusters: list[ClusterInfo]
    method: str
    pca: PCABasis
    kmeans: KMeansResult
    classifier: LinearClassifier | None
    timings: dict[str, float] = field(default_factory=dict)
    pca_reused: bool = False
    evidence: np.ndarray | None = None  # (n, len(EVIDENCE)) what the confidence was computed from
    feature_power: float = 1.0  # the power transform applied before PCA (1: none; see power_transform)

    @property
    def n_committed_machine(self) -> int:
        return int((self.source == SOURCE_PROPAGATED).sum())

    def class_counts(self) -> dict[str, int]:
        committed = self.label[self.label >= 0]
        counts = np.bincount(committed, minlength=len(self.class_names))
        return {name: int(c) for name, c in zip(self.class_names, counts, strict=True) if c > 0}


def encode_labels(
    labels: Sequence[str] | np.ndarray, extra_classes: Sequence[str] = ()
) -> tuple[np.ndarray, list[str]]:
    """String labels ("" = none) -> class indices (-1 = none) and the sorted class names."""
    arr = np.asarray(labels, dtype=object)
    names = sorted({str(v) for v in arr if v} | {str(c) for c in extra_classes})
    lookup = {name: i for i, name in enumerate(names)}
    y = np.fromiter((lookup[str(v)] if v else -1 for v in arr), dtype=np.int64, count=arr.shape[0])
    return y, names


def _normalize_rows(p: np.ndarray) -> np.ndarray:
    s = p.sum(axis=1, keepdims=True)
    return np.where(s > 0, p / np.where(s > 0, s, 1.0), 0.0).astype(np.float32)


def _ensemble(members: list[tuple[str, np.ndarray, np.ndarray, float]], n: int, k: int) -> tuple[np.ndarray, ...]:
    """Weighted average of member distributions; agreement = weighted share of voting members whose argmax
    matches the ensemble's. Members are (name, probs, has_vote, weight)."""
    total = np.zeros((n, k), dtype=np.float32)
    wsum = np.zeros(n, dtype=np.float32)
    for _, p, vote, w in members:
        total += (w * vote)[:, None] * p
        wsum += w * vote
    probs = np.where(wsum[:, None] > 0, total / np.maximum(wsum, 1e-12)[:, None], 0.0)
    pred = np.where(wsum > 0, probs.argmax(axis=1), -1)
    agree = np.zeros(n, dtype=np.float32)
    for _, p, vote, w in members:
        agree += w * vote * (p.argmax(axis=1) == pred)
    agreement = np.where(wsum > 0, agree / np.maximum(wsum, 1e-12), 0.0).astype(np.float32)
    return probs.astype(np.float32), pred, agreement


EVIDENCE = ("log_raw", "neighbour_consistency", "log_support", "margin", "agreement", "seed_distance")
# Human labels per class compared with every point for seed_distance (a random subset above this: a class with
# more than this many labels is not short of nearby examples; the cost stays n x 512 x d per pass: 0.08 s at
# 100k points x 49 components with 20k human labels, one core; a subset only errs on the far, cautious side).
SEED_DISTANCE_MAX_SEEDS = 512


def seed_distance(
    z: np.ndarray, pred: np.ndarray, seeds: np.ndarray, typical: float, rng: np.random.Generator,
    batch: int = 8192,
) -> np.ndarray:
    """log(cosine distance from each point to the nearest seed of its predicted class / `typical`), clipped to
    [log 0.1, log 10]: how far a label extrapolates from any human example of it, in units of the typical
    distance between neighbours (so it reads the same on embeddings whose similarities sit at different levels).
    With one label per class a whole mode of another class can be reached through the graph and look consistent
    (Fashion-MNIST, test split, seed 2: 314 bags labelled "shirt" at confidence >= 0.9); those points lie far
    from the shirt example. Points without a prediction or whose class has no seed get the maximum."""
    n = z.shape[0]
    best = np.full(n, -np.inf, dtype=np.float32)
    for c in np.unique(pred[pred >= 0]):
        cls_seeds = np.flatnonzero(seeds == c)
        if cls_seeds.size == 0:
            continue
        if cls_seeds.size > SEED_DISTANCE_MAX_SEEDS:
            cls_seeds = rng.choice(cls_seeds, SEED_DISTANCE_MAX_SEEDS, replace=False)
        ref = z[cls_seeds].T
        rows = np.flatnonzero(pred == c)
        for start in range(0, rows.size, batch):
            part = rows[start : start + batch]
            best[part] = (z[part] @ ref).max(axis=1)
    ratio = np.maximum(1.0 - best.astype(np.float64), 1e-6) / max(1.0 - typical, 1e-6)
    return np.log(np.clip(ratio, 0.1, 10.0)).astype(np.float32)


def _evidence(
    members: list[tuple[str, np.ndarray, np.ndarray, float]], probs: np.ndarray, pred: np.ndarray,
    agreement: np.ndarray, neighbours: np.ndarray | None, support: np.ndarray, distance: np.ndarray,
) -> np.ndarray:
    """Per-point evidence that `pred` is right, (n, len(EVIDENCE)), from signals that transfer across data sets:
    the soft members' (label spreading, self-training; cluster majority when neither runs) geometric-mean
    probability of the predicted class times the members' agreement; how many of the point's nearest neighbours
    got the same class (a wrong label usually sits where its neighbourhood disagrees); how many human labels the
    class has (one example cannot vouch for a whole region); the ensemble margin; the agreement itself; how far
    the point is from the nearest human example of the class (`seed_distance`)."""
    rows = np.arange(pred.shape[0])
    safe = np.maximum(pred, 0)
    soft = [m for m in members if m[0] in SOFT_MEMBERS] or members
    log_sum = np.zeros(pred.shape[0], dtype=np.float64)
    w_sum = np.zeros(pred.shape[0], dtype=np.float64)
    for _, p, vote, _w in soft:
        log_sum += vote * np.log(np.clip(p[rows, safe], 1e-12, 1.0))
        w_sum += vote
    geo = np.where(w_sum > 0, np.exp(log_sum / np.maximum(w_sum, 1e-12)), 0.0)
    if neighbours is not None and neighbours.shape[1] > 0:
        valid = neighbours >= 0
        same = (pred[np.maximum(neighbours, 0)] == pred[:, None]) & valid
        consistency = same.sum(axis=1) / np.maximum(valid.sum(axis=1), 1)
    else:
        consistency = np.zeros(pred.shape[0])
    top2 = np.sort(probs, axis=1)[:, -2:] if probs.shape[1] > 1 else np.hstack([np.zeros_like(probs), probs])
    return np.column_stack([
        np.log(np.clip(geo * agreement, 1e-6, 1.0)), consistency, np.log1p(support[safe]), top2[:, 1] - top2[:, 0],
        agreement, distance,
    ]).astype(np.float32)


def _confidence(evidence: np.ndarray, pred: np.ndarray, n_members: np.ndarray) -> np.ndarray:
    """Estimated probability that `pred` is right: the logistic model in CALIBRATION over the evidence.
    A point voted on by a single member is capped below any sensible threshold: nothing corroborates it."""
    weights = np.array([CALIBRATION[name] for name in EVIDENCE], dtype=np.float64)
    logit = evidence.astype(np.float64) @ weights + CALIBRATION["intercept"]
    conf = np.where(pred >= 0, 1.0 / (1.0 + np.exp(-logit)), 0.0).astype(np.float32)
    return np.where(n_members >= 2, conf, np.minimum(conf, 0.5)).astype(np.float32)


def _pseudo_label_score(probs: np.ndarray, pred: np.ndarray, agreement: np.ndarray) -> np.ndarray:
    """How fit a machine label is to train the classifier: the sharpened ensemble probability times agreement
    (looser than the commit confidence: self-training needs many labels per class, not only certain ones)."""
    sharp = probs.astype(np.float64) ** 3
    sharp /= np.maximum(sharp.sum(axis=1, keepdims=True), 1e-12)
    top = np.where(pred >= 0, sharp[np.arange(pred.shape[0]), np.maximum(pred, 0)], 0.0)
    return (top * agreement).astype(np.float32)


def power_transform(x: np.ndarray, power: float) -> tuple[np.ndarray, float]:
    """x^power when every value is non-negative (see FEATURE_POWER), else x unchanged; returns the power used."""
    if power == 1.0 or x.size == 0 or float(x.min()) < 0.0:
        return x, 1.0
    return np.power(x, np.float32(power)).astype(np.float32), power


def _default_k_bounds(params: RoundParams, n: int, n_classes: int) -> tuple[int, int]:
    k_min = params.k_min or max(2, n_classes)
    k_max = params.k_max or max(k_min, min(4 * max(n_classes, 5), 100, n // 20 or 2))
    k_max = max(k_min, k_max)
    return min(k_min, max(2, n - 1)), min(k_max, max(2, n - 1))


def run_round_core(
    x: np.ndarray,
    labels: Sequence[str] | np.ndarray,
    is_human: np.ndarray | None = None,
    params: RoundParams | None = None,
    *,
    class_names: Sequence[str] | None = None,
    zero_shot_prior: Mapping[str, np.ndarray] | None = None,
    progress: Progress | None = None,
    threads: int = 0,
    pca: PCABasis | None = None,
) -> RoundOutput:
    """Run one round on raw embeddings (see _run_round); `threads` caps BLAS/faiss threads (0: defaults).

    pca: a basis fitted earlier on this dataset (reused when its input dimension matches, else refitted)."""
    with limited_threads(threads):
        return _run_round(x, labels, is_human, params, class_names, zero_shot_prior, progress, pca)


def _run_round(
    x: np.ndarray,
    labels: Sequence[str] | np.ndarray,
    is_human: np.ndarray | None,
    params: RoundParams | None,
    class_names: Sequence[str] | None,
    zero_shot_prior: Mapping[str, np.ndarray] | None,
    progress: Progress | None,
    saved_pca: PCABasis | None = None,
) -> RoundOutput:
    """Run one round on raw embeddings.

    labels: strings ("" for unlabelled), or int class indices (-1 for unlabelled) with `class_names`.
    is_human: which labels are human (default: every given label). Non-human input labels are ignored:
    a round recomputes every machine label from the human ones.
    zero_shot_prior: class name -> (p, d) prompt embeddings, used for classes with no human label.
    """
    params = params or RoundParams()
    params.validate()
    report = progress or (lambda _s, _f, _m: None)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2 or x.shape[0] < 3:
        raise InvalidArgument(f"a round needs at least 3 vectors, got {x.shape[0] if x.ndim == 2 else 0}")
    if not np.isfinite(x).all():
        raise InvalidArgument("embeddings contain NaN or infinity")
    n = x.shape[0]
    prior_names = list(zero_shot_prior or {})
    if class_names is None:
        y, names = encode_labels(labels, prior_names)
    else:
        names = list(class_names)
        y = np.asarray(labels, dtype=np.int64).copy()
        for extra in prior_names:
            if extra not in names:
                names.append(extra)
    if y.shape[0] != n:
        raise InvalidArgument(f"{y.shape[0]} labels for {n} vectors")
    human = (y >= 0) if is_human is None else (np.asarray(is_human, dtype=bool) & (y >= 0))
    y = np.where(human, y, -1)
    k_cls = max(len(names), 1)

    # Zero-shot below compares the raw embeddings with text embeddings; everything else sees the transformed ones.
    xp, power = power_transform(x, params.feature_power)
    xn = l2_normalize(xp)
    del xp
    pca_reused = saved_pca is not None and saved_pca.mean.shape[0] == x.shape[1]
    if pca_reused:
        assert saved_pca is not None
        report("pca", 0.05, f"reusing the dataset's PCA basis ({saved_pca.n_components} components)")
        pca = saved_pca
    else:
        report("pca", 0.05, f"fitting PCA on {n} x {x.shape[1]}")
        pca = fit_pca(
            xn, variance=params.pca_variance, n_components=min(params.pca_components, x.shape[1]),
            max_components=params.max_pca_components,
        )
    z = l2_normalize(pca.transform(xn))
    timings["pca"] = time.perf_counter() - t0

    t = time.perf_counter()
    k_min, k_max = _default_k_bounds(params, n, k_cls)
    report("kmeans", 0.2, f"{pca.n_components} components ({pca.explained_variance:.0%} variance); choosing k")
    km = fit_kmeans(z, k=min(params.k, n) if params.k else 0, k_min=k_min, k_max=k_max, seed=params.seed)
    timings["kmeans"] = time.perf_counter() - t

    # Seeds: human labels, plus zero-shot picks for prior classes nobody has labelled yet.
    seeds = y.copy()
    seed_w = human.astype(np.float32)
    zs_probs: np.ndarray | None = None
    if zero_shot_prior:
        missing = [c for c in prior_names if not np.any(y == names.index(c))]
        vecs = class_embeddings([zero_shot_prior[c] for c in prior_names], x.shape[1])
        zp = zero_shot_probs(x, vecs, params.zero_shot_temperature)
        zs_probs = np.zeros((n, k_cls), dtype=np.float32)
        zs_probs[:, [names.index(c) for c in prior_names]] = zp
        per_class = max(3, n // (200 * k_cls))
        for c in missing:
            ci = names.index(c)
            cand = np.flatnonzero((zs_probs.argmax(axis=1) == ci) & (seeds < 0))
            top = cand[np.argsort(-zs_probs[cand, ci])[:per_class]]
            seeds[top] = ci
            seed_w[top] = 0.5

    has_seeds = bool((seeds >= 0).any())
    t = time.perf_counter()
    s_graph = None
    neighbours: np.ndarray | None = None
    typical = 0.0  # median similarity of a point to its 10th neighbour (the unit of seed_distance)
    if has_seeds:
        report("propagate", 0.4, f"k={km.k}; building the {params.knn_k}-NN graph")
        sims, neighbours = knn_search(z, min(params.knn_k, n - 1), seed=params.seed)
        typical = float(np.median(sims[:, min(10, sims.shape[1]) - 1]))
        if params.label_spreading:
            s_graph = normalized_graph(affinity_graph(sims, neighbours))
        del sims
    timings["knn_graph"] = time.perf_counter() - t

    t = time.perf_counter()
    report("propagate", 0.5, "cluster majority and label spreading")
    members: list[tuple[str, np.ndarray, np.ndarray, float]] = []
    cm = cluster_majority(km.assignment, km.dist1, seeds, k_cls, km.k, weights=seed_w)
    cm_vote = cm.has_vote.astype(np.float32)
    members.append(("cluster_majority", _normalize_rows(cm.probs), cm_vote, MEMBER_WEIGHTS["cluster_majority"]))
    ls_probs = None
    if s_graph is not None:
        ls_probs = label_spreading(
            s_graph, seeds, k_cls, weights=seed_w, alpha=params.spreading_alpha, iterations=params.spreading_iterations
        )
        members.append(("label_spreading", ls_probs, np.ones(n, dtype=np.float32), MEMBER_WEIGHTS["label_spreading"]))
    if zs_probs is not None:
        members.append(("zero_shot", zs_probs, np.ones(n, dtype=np.float32), MEMBER_WEIGHTS["zero_shot"]))
    timings["propagate"] = time.perf_counter() - t

    support = np.bincount(seeds[seeds >= 0], minlength=k_cls).astype(np.float64)
    distance_rng = np.random.default_rng(params.seed)

    def combine(ms: list[tuple[str, np.ndarray, np.ndarray, float]]) -> tuple[np.ndarray, ...]:
        probs, pred, agreement = _ensemble(ms, n, k_cls)
        n_members = sum((vote > 0).astype(np.int32) for _, _, vote, _ in ms)
        distance = seed_distance(z, pred, seeds, typical, distance_rng)
        evidence = _evidence(ms, probs, pred, agreement, neighbours, support, distance)
        conf = _confidence(evidence, pred, n_members)
        return probs, pred, agreement, conf, _pseudo_label_score(probs, pred, agreement), evidence

    probs, pred, agreement, conf, pseudo_score, evidence = combine(members)
    machine = ~human
    committed = machine & (conf >= params.confidence_threshold) & (pred >= 0)
    iterations = [
        _iteration_stats(0, "+".join(m[0] for m in members), committed, pred, None, conf, agreement, machine, km.k)
    ]
    # Re-clustering may split clusters up to twice the fitted k, or one more cluster per class when that is more.
    max_clusters = max(2 * km.k, km.k + k_cls)

    # Refinement: classifier on human + confident machine labels, cluster votes recounted, until settled.
    # The classifier is cross-fitted (two halves, each predicts the other) so that its vote on a point never
    # comes from that point's own pseudo-label: its agreement with the other members stays real evidence.
    classifier: LinearClassifier | None = None
    clf_probs: np.ndarray | None = None
    t = time.perf_counter()
    if params.self_training and has_seeds:
        rng = np.random.default_rng(params.seed)
        fold = rng.integers(0, 2, n)
        train_idx = train_y = train_w = None
        for it in range(1, params.max_iterations + 1):
            report("refine", 0.6 + 0.25 * it / max(params.max_iterations, 1), f"self-training iteration {it}")
            train_idx, train_y, train_w = _training_set(
                seeds, seed_w, pred, pseudo_score, committed, k_cls, params, rng
            )
            clf_probs = _cross_fitted_probs(z, train_idx, train_y, train_w, seeds, fold, k_cls, params.seed)
            if clf_probs is None:
                break
            pseudo = np.where(committed, pred, seeds)
            pseudo_w = np.where(seeds >= 0, seed_w, np.where(committed, 0.3 * conf, 0.0)).astype(np.float32)
            n_split = 0
            if params.recluster:
                km, n_split = split_impure_clusters(z, km, pseudo, pseudo_w, k_cls, max_k=max_clusters)
            cm_it = cluster_majority(km.assignment, km.dist1, pseudo, k_cls, km.k, weights=pseudo_w)
            ms = [(
                "cluster_majority", _normalize_rows(cm_it.probs), cm_it.has_vote.astype(np.float32),
                MEMBER_WEIGHTS["cluster_majority"],
            )]
            ms += [m for m in members if m[0] not in ("cluster_majority", "self_training")]
            ms.append(("self_training", clf_probs, np.ones(n, dtype=np.float32), MEMBER_WEIGHTS["self_training"]))
            members = ms
            prev_pred = pred
            probs, pred, agreement, conf, pseudo_score, evidence = combine(ms)
            committed = machine & (conf >= params.confidence_threshold) & (pred >= 0)
            stats = _iteration_stats(
                it, "self_training", committed, pred, prev_pred, conf, agreement, machine, km.k, n_split
            )
            iterations.append(stats)
            if stats.changed <= params.settle_fraction * max(int(machine.sum()), 1):
                break
        if train_idx is not None and clf_probs is not None:
            # The saved artifact: one classifier on the last training set, for scoring new items later.
            classifier = train_classifier(z[train_idx], train_y, train_w, seed=params.seed)
    timings["refine"] = time.perf_counter() - t

    t = time.perf_counter()
    report("uncertainty", 0.9, "scoring uncertainty and choosing the review batch")
    unc = uncertainty_scores(km.dist1, km.dist2, clf_probs, agreement, probs)
    cluster_has_human = np.bincount(km.assignment[human], minlength=km.k) > 0
    review = select_review(
        z, is_human=human, assignment=km.assignment, cluster_has_human=cluster_has_human,
        probs=probs, unc=unc, class_names=names, batch_size=params.review_batch_size, diversity=params.diversity,
        seed=params.seed,
    )
    timings["review"] = time.perf_counter() - t

    label = np.where(human, y, np.where(committed, pred, -1))
    source = np.where(human, SOURCE_HUMAN, np.where(committed, SOURCE_PROPAGATED, SOURCE_NONE)).astype(np.int8)
    predicted = np.where(human, y, pred)
    confidence = np.where(human, 1.0, conf).astype(np.float32)
    timings["total"] = time.perf_counter() - t0
    return RoundOutput(
        class_names=names, label=label, predicted=predicted, confidence=confidence, source=source, probs=probs,
        cluster=km.assignment, uncertainty=unc, agreement=agreement, review=review, iterations=iterations,
        clusters=_cluster_infos(km, y, names), method="ensemble:" + "+".join(m[0] for m in members), pca=pca,
        kmeans=km, classifier=classifier, timings=timings, pca_reused=pca_reused,
        evidence=evidence, feature_power=power,
    )


def _cross_fitted_probs(
    z: np.ndarray, idx: np.ndarray, yy: np.ndarray, ww: np.ndarray, seeds: np.ndarray, fold: np.ndarray,
    k_cls: int, seed: int,
) -> np.ndarray | None:
    """Class probabilities where each half of the points is scored by a classifier fitted on the other half
    (seed labels train both halves). None when there are not two classes to learn."""
    out = np.zeros((z.shape[0], k_cls), dtype=np.float32)
    is_seed = seeds[idx] >= 0
    for f in (0, 1):
        rows = is_seed | (fold[idx] != f)
        clf = train_classifier(z[idx[rows]], yy[rows], ww[rows], seed=seed)
        if clf is None:
            return None
        target = np.flatnonzero(fold == f)
        out[target] = clf.predict_proba(z[target], k_cls)
    return out


def _training_set(
    seeds: np.ndarray, seed_w: np.ndarray, pred: np.ndarray, conf: np.ndarray, committed: np.ndarray,
    k_cls: int, params: RoundParams, rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Seeds plus confident machine labels: committed ones, and each class's most confident 20 % when their
    pseudo-label score is at least MIN_PSEUDO_CONFIDENCE (so a class whose confidences all sit below the
    threshold still trains the classifier, but a tied cluster does not). Weighted by confidence."""
    machine_pool = np.zeros(seeds.shape[0], dtype=bool)
    machine_pool |= committed
    for c in range(k_cls):
        members = np.flatnonzero((pred == c) & (seeds < 0))
        if members.size:
            cut = np.quantile(conf[members], 0.8)
            machine_pool[members[(conf[members] >= cut) & (conf[members] >= MIN_PSEUDO_CONFIDENCE)]] = True
    machine_pool &= seeds < 0
    machine_idx = np.flatnonzero(machine_pool)
    seed_idx = np.flatnonzero(seeds >= 0)
    budget = max(params.classifier_max_rows - seed_idx.size, 0)
    if machine_idx.size > budget:
        machine_idx = np.sort(rng.choice(machine_idx, budget, replace=False))
    machine_w = np.maximum(conf[machine_idx], 0.05)
    # Human labels weigh as much as a quarter of all machine labels together (never less than 1 each).
    human_w = max(1.0, 0.25 * float(machine_w.sum()) / max(seed_idx.size, 1))
    idx = np.concatenate([seed_idx, machine_idx])
    yy = np.concatenate([seeds[seed_idx], pred[machine_idx]])
    ww = np.concatenate([seed_w[seed_idx] * human_w, machine_w]).astype(np.float64)
    return idx, yy, ww


def _iteration_stats(
    it: int, method: str, committed: np.ndarray, pred: np.ndarray, prev: np.ndarray | None, conf: np.ndarray,
    agreement: np.ndarray, machine: np.ndarray, clusters: int = 0, clusters_split: int = 0,
) -> IterationStats:
    changed = 0 if prev is None else int(((pred != prev) & machine).sum())
    return IterationStats(
        iteration=it, method=method, labeled=int(committed.sum()), changed=changed,
        mean_confidence=float(conf[committed].mean()) if committed.any() else 0.0,
        agreement=float(agreement[committed].mean()) if committed.any() else 0.0,
        clusters=clusters, clusters_split=clusters_split,
    )


def _cluster_infos(km: KMeansResult, y: np.ndarray, names: Sequence[str]) -> list[ClusterInfo]:
    out = []
    sizes = np.bincount(km.assignment, minlength=km.k)
    for c in range(km.k):
        yc = y[(km.assignment == c) & (y >= 0)]
        if yc.size:
            counts = np.bincount(yc, minlength=len(names))
            maj = int(counts.argmax())
            out.append(ClusterInfo(c, int(sizes[c]), names[maj], float(counts[maj] / yc.size), int(yc.size)))
        else:
            out.append(ClusterInfo(c, int(sizes[c]), "", 0.0, 0))
    return out
