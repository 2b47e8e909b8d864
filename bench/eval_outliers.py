"""Which outlier score ranks planted odd images first? Candidates compared on real EfficientNet-Lite0 embeddings.

Scenarios (all real photos, embedded offline through services.embedder.offline, cached under var/cache/):
- fashion+trucks: Fashion-MNIST (10 classes) with N CIFAR-10 "truck" photos planted among them;
- cifar-holdout: 9 CIFAR-10 classes with N photos of the held-out 10th class (rotated over classes);
- line: "production line": many items of ONE class with N "defects" drawn from the other classes.
Each candidate score ranks every item; we report precision@N (N = planted count), ROC AUC and average precision,
mean over repetitions. `python -m bench.eval_outliers [--quick]` writes bench/results/eval_outliers.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from sklearn.ensemble import IsolationForest
from sklearn.metrics import average_precision_score, roc_auc_score
from sklearn.neighbors import LocalOutlierFactor

from bench import common
from bench.eval_labeling import LabelledSet, load_embedded
from services.clusterer.kmeans import fit_kmeans
from services.clusterer.knn import knn_search
from services.clusterer.pca import fit_pca
from services.clusterer.quality import outlier_scores
from tagalong.runtime.vectors import l2_normalize


@dataclass
class Case:
    """One scored set: embeddings and which rows were planted."""

    scenario: str
    x: np.ndarray
    planted: np.ndarray  # bool (n,)
    n_classes: int  # inlier classes (what a round would look for)


@dataclass
class Reduced:
    """What a labelling round computes before any outlier score: PCA space and KMeans clusters."""

    z: np.ndarray  # PCA-reduced, L2-normalised rows
    assignment: np.ndarray
    dist1: np.ndarray  # squared distance to the own centroid (in z)
    k: int


def reduce(x: np.ndarray, n_classes: int, seed: int) -> Reduced:
    """PCA (95% variance) then KMeans with k chosen by silhouette, as services.clusterer.core does it."""
    xn = l2_normalize(x)
    pca = fit_pca(xn, variance=0.95, max_components=256)
    z = l2_normalize(pca.transform(xn))
    n = x.shape[0]
    k_min = max(2, n_classes)
    k_max = max(k_min, min(4 * max(n_classes, 5), 100, n // 20 or 2))
    km = fit_kmeans(z, k_min=k_min, k_max=k_max, seed=seed)
    return Reduced(z, km.assignment, km.dist1, km.k)


def _relative_to_cluster(value: np.ndarray, assignment: np.ndarray) -> np.ndarray:
    ref = np.zeros(value.shape[0])
    for c in np.unique(assignment):
        members = assignment == c
        ref[members] = np.median(value[members])
    return value / np.maximum(ref, 1e-6)


def knn_mean_dist(x: np.ndarray, k: int) -> np.ndarray:
    sims, idx = knn_search(l2_normalize(x), k)
    return np.maximum(np.nanmean(np.where(idx >= 0, 1.0 - sims, np.nan), axis=1), 0.0)


def small_clusters_global(x: np.ndarray, assignment: np.ndarray, k: int = 10, min_share: float = 0.05) -> np.ndarray:
    """The clusterer's score, but clusters holding < min_share of the items use the global median: a tight
    group of odd items that got its own cluster must not become its own 'normal'."""
    dist = knn_mean_dist(x, k)
    ref = np.full(dist.size, np.median(dist))
    sizes = np.bincount(assignment)
    for c in np.flatnonzero(sizes >= min_share * assignment.size):
        members = assignment == c
        ref[members] = np.median(dist[members])
    return dist / np.maximum(ref, 1e-6)


def knn_kth(x: np.ndarray, k: int = 10) -> np.ndarray:
    sims, _ = knn_search(l2_normalize(x), k)
    return 1.0 - sims[:, -1]


def lof(z: np.ndarray, k: int = 20) -> np.ndarray:
    model = LocalOutlierFactor(n_neighbors=min(k, z.shape[0] - 1))
    model.fit(z)
    return -model.negative_outlier_factor_


def iforest(z: np.ndarray, seed: int) -> np.ndarray:
    model = IsolationForest(n_estimators=200, random_state=seed, n_jobs=1)
    model.fit(z)
    return -model.score_samples(z)


# name -> score(case, reduced, seed); higher = more unusual.
METHODS: dict[str, Callable[[Case, Reduced, int], np.ndarray]] = {
    "clusterer now: kNN mean dist / cluster median (k=10)":
        lambda c, r, s: outlier_scores(c.x, k=10, assignment=r.assignment),
    "clusterer, no round: kNN mean dist (k=10)": lambda c, r, s: outlier_scores(c.x, k=10),
    "clusterer, clusters < 5% use the global median": lambda c, r, s: small_clusters_global(c.x, r.assignment),
    "kNN mean dist (k=5)": lambda c, r, s: outlier_scores(c.x, k=5),
    "kNN mean dist (k=30)": lambda c, r, s: outlier_scores(c.x, k=30),
    "kNN 10th-neighbour dist": lambda c, r, s: knn_kth(c.x, 10),
    "kNN mean dist in PCA space (k=10)": lambda c, r, s: outlier_scores(r.z, k=10),
    "LOF (k=20, PCA space)": lambda c, r, s: lof(r.z, 20),
    "isolation forest (PCA space)": lambda c, r, s: iforest(r.z, s),
    "centroid dist / cluster median": lambda c, r, s: _relative_to_cluster(r.dist1, r.assignment),
}


def metrics(score: np.ndarray, planted: np.ndarray) -> tuple[float, float, float]:
    n = int(planted.sum())
    top = np.argsort(-score, kind="stable")[:n]
    return float(planted[top].mean()), float(roc_auc_score(planted, score)), float(
        average_precision_score(planted, score)
    )


def _take(ds: LabelledSet, cls: int, count: int, rng: np.random.Generator) -> np.ndarray:
    rows = np.flatnonzero(ds.y == cls)
    return rng.choice(rows, min(count, rows.size), replace=False)


def cases(fashion: LabelledSet, cifar: LabelledSet, *, inliers_per_class: int, line_size: int, planted: int,
          holdouts: list[int], line_classes: list[int], seed: int) -> list[Case]:
    rng = np.random.default_rng(seed)
    out: list[Case] = []
    truck = cifar.class_names.index("truck")
    rows = np.concatenate([_take(fashion, c, inliers_per_class, rng) for c in range(len(fashion.class_names))])
    trucks = _take(cifar, truck, planted, rng)
    x = np.concatenate([fashion.x[rows], cifar.x[trucks]])
    out.append(Case("fashion+trucks", x, np.r_[np.zeros(rows.size, bool), np.ones(trucks.size, bool)], 10))
    for held in holdouts:
        keep = [c for c in range(len(cifar.class_names)) if c != held]
        rows = np.concatenate([_take(cifar, c, inliers_per_class, rng) for c in keep])
        odd = _take(cifar, held, planted, rng)
        x = np.concatenate([cifar.x[rows], cifar.x[odd]])
        out.append(Case(f"cifar-holdout ({cifar.class_names[held]})", x,
                        np.r_[np.zeros(rows.size, bool), np.ones(odd.size, bool)], 9))
    for ds in (fashion, cifar):
        for cls in line_classes:
            normal = _take(ds, cls, line_size, rng)
            others = np.flatnonzero(ds.y != cls)
            defects = rng.choice(others, max(2, planted // 2), replace=False)
            x = np.concatenate([ds.x[normal], ds.x[defects]])
            out.append(Case(f"line {ds.name} ({ds.class_names[cls]})", x,
                            np.r_[np.zeros(normal.size, bool), np.ones(defects.size, bool)], 1))
    return out


def family(scenario: str) -> str:
    return scenario.split(" ")[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.eval_outliers", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller sets, fewer scenarios (< 3 minutes)")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    if args.quick:
        per_class, line_size, planted, holdouts, line_classes = 150, 400, 20, [9, 3], [7, 1]
        fashion = load_embedded("fashion-mnist", 200)
    else:
        per_class, line_size, planted, holdouts, line_classes = 250, 900, 25, list(range(10)), [0, 3, 7]
        fashion = load_embedded("fashion-mnist", 1000)
    cifar = load_embedded("cifar10")  # the full 10k test set: cached by bench.eval_labeling
    all_cases = cases(fashion, cifar, inliers_per_class=per_class, line_size=line_size, planted=planted,
                      holdouts=holdouts, line_classes=line_classes, seed=0)
    # results[method][family] -> list of (p@N, auc, ap); seconds per method
    results: dict[str, dict[str, list[tuple[float, float, float]]]] = {m: {} for m in METHODS}
    seconds: dict[str, float] = dict.fromkeys(METHODS, 0.0)
    per_case_rows: list[list[object]] = []
    for case in all_cases:
        reduced = reduce(case.x, case.n_classes, seed=0)
        row: list[object] = [case.scenario, case.x.shape[0], int(case.planted.sum()), reduced.k]
        for name, fn in METHODS.items():
            t = time.perf_counter()
            score = np.asarray(fn(case, reduced, 0), dtype=np.float64)
            seconds[name] += time.perf_counter() - t
            m = metrics(score, case.planted)
            results[name].setdefault(family(case.scenario), []).append(m)
            row.append(f"{m[0]:.2f} / {m[1]:.3f}")
        per_case_rows.append(row)
        print(f"{case.scenario}: done ({time.perf_counter() - started:.0f}s)", file=sys.stderr)

    families = list(dict.fromkeys(family(c.scenario) for c in all_cases))
    summary: list[list[object]] = []
    for name in METHODS:
        cells: list[object] = [name]
        fam_p, fam_auc = [], []
        for fam in families:
            vals = np.asarray(results[name][fam])
            fam_p.append(float(vals[:, 0].mean()))
            fam_auc.append(float(vals[:, 1].mean()))
            cells += [fam_p[-1], fam_auc[-1]]
        # Each scenario weighs the same, however many cases it has.
        cells += [float(np.mean(fam_p)), float(np.mean(fam_auc)), seconds[name] / len(all_cases)]
        summary.append(cells)
    best = max(summary, key=lambda r: (r[-3], r[-2]))
    now = summary[0]
    headers = ["method"]
    for fam in families:
        headers += [f"{fam} P@N", f"{fam} AUC"]
    headers += ["mean P@N", "mean AUC", "s / case"]
    text = common.header("Outlier scores on planted odd images (EfficientNet-Lite0 embeddings)")
    text += (
        f"- command: `python -m bench.eval_outliers{' --quick' if args.quick else ''}`\n"
        f"- mode: {'quick' if args.quick else 'full'}; planted N per case: {planted} (line: {max(2, planted // 2)}); "
        f"inliers per class {per_class}; line size {line_size}; CIFAR-10 test + Fashion-MNIST test\n"
        "- P@N = share of planted items among the N top-scored; AUC = ROC AUC over all items; per scenario the "
        "mean over its cases; 'mean' columns: the mean of the scenario means\n"
        f"- winner by mean P@N (then AUC): **{best[0]}** ({best[-3]:.3f} / {best[-2]:.3f}); "
        f"the clusterer's current score: {now[-3]:.3f} / {now[-2]:.3f}\n\n"
    )
    text += "## Summary\n\n" + common.table(headers, summary)
    text += "\n## Per case (P@N / AUC)\n\n" + common.table(
        ["case", "items", "planted", "round k", *METHODS], per_case_rows
    )
    text += f"\nTotal time {time.perf_counter() - started:.0f}s.\n"
    common.write("eval_outliers", text)
    print(common.table(headers, summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
