"""Benchmark of a full labelling round (the pure core, no gRPC) on synthetic clustered embeddings.

`python -m bench.bench_clusterer [--quick]`: times run_round_core on n x 512 points (100k; --quick: 20k) with
10 human labels per class, stage by stage, beside sklearn's LabelSpreading(knn) on the same 20k points.
Results in bench/results/bench_clusterer.md. Target: a 100k x 512 round in <= 60 s.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

from bench.common import header, table, write

# BLAS/faiss threads (set by --threads; 0: the libraries' defaults, all cores).
THREADS = 1


def clustered(n: int, dim: int = 512, n_classes: int = 20, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors around class centres living in a 64-dim subspace, plus isotropic noise (like embeddings:
    a few strong directions, a long tail of weak ones)."""
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(rng.normal(size=(dim, 64)))[0].T  # (64, dim)
    centres = rng.normal(size=(n_classes, 64)) @ basis
    y = rng.integers(0, n_classes, n)
    x = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, 50_000):
        yy = y[start : start + 50_000]
        within = rng.normal(size=(yy.size, 64)) @ basis * 0.45
        x[start : start + 50_000] = centres[yy] + within + 0.04 * rng.normal(size=(yy.size, dim))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x, y


def human_labels(y: np.ndarray, per_class: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    lab = np.full(y.size, -1)
    for c in np.unique(y):
        lab[rng.choice(np.flatnonzero(y == c), per_class, replace=False)] = c
    return lab


def time_round(x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    from services.clusterer.core import RoundParams, run_round_core

    lab = human_labels(y, 10)
    names = [f"c{i}" for i in range(int(y.max()) + 1)]
    started = time.perf_counter()
    out = run_round_core(x, lab, lab >= 0, RoundParams(seed=0), class_names=names, threads=THREADS)
    total = time.perf_counter() - started
    machine = lab < 0
    committed = machine & (out.source == 2)
    return {
        **{f"t_{k}": v for k, v in out.timings.items()}, "total": total, "k": out.kmeans.k,
        "pca": out.pca.n_components, "accuracy": float((out.predicted[machine] == y[machine]).mean()),
        "coverage": float(committed.sum() / machine.sum()),
        "precision": float((out.label[committed] == y[committed]).mean()) if committed.any() else float("nan"),
    }


def time_label_spreading(x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    from sklearn.semi_supervised import LabelSpreading

    from services.clusterer.threads import limited_threads

    lab = human_labels(y, 10)
    started = time.perf_counter()
    with limited_threads(THREADS):
        pred = LabelSpreading(kernel="knn", n_neighbors=7).fit(x, lab).transduction_
    machine = lab < 0
    return {"total": time.perf_counter() - started, "accuracy": float((pred[machine] == y[machine]).mean())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_clusterer", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="20k points only (about a minute on 2 cores)")
    parser.add_argument("--threads", type=int, default=1, help="BLAS/faiss threads (0: all cores)")
    args = parser.parse_args(argv)
    global THREADS
    THREADS = args.threads
    sizes = [20_000] if args.quick else [20_000, 100_000]
    rows = []
    results = {}
    for n in sizes:
        x, y = clustered(n)
        r = time_round(x, y)
        results[n] = r
        print(f"{n} x 512: {r['total']:.1f}s accuracy {r['accuracy']:.3f}", file=sys.stderr, flush=True)
        rows.append([
            f"{n} x 512", f"{r['total']:.1f}", f"{r['t_pca']:.1f}", f"{r['t_kmeans']:.1f}", f"{r['t_knn_graph']:.1f}",
            f"{r['t_propagate']:.1f}", f"{r['t_refine']:.1f}", f"{r['t_review']:.1f}", int(r["k"]), int(r["pca"]),
            f"{r['accuracy']:.3f}", f"{r['coverage']:.3f}", f"{r['precision']:.3f}",
        ])
    x, y = clustered(20_000)
    ls = time_label_spreading(x, y)
    ours20 = results[20_000]
    text = header("Clusterer: one labelling round (core, no gRPC)")
    load = os.getloadavg()
    text += (f"- load average at the end of the run: {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} (1/5/15 min; "
             f"the machine is shared, so timings above a load of {os.cpu_count()} are inflated)\n\n")
    text += (
        "Synthetic embeddings: 20 classes, unit vectors in 512 dimensions (class structure in a 64-dim subspace "
        "plus isotropic noise), 10 human labels per class, default RoundConfig (auto k, PCA to 95 % variance "
        "capped at 256 components, label spreading + self-training, review batch 50). Wall-clock seconds, "
        f"{THREADS or 'all'} BLAS/faiss thread(s).\n\n"
    )
    text += table(
        ["points", "total s", "pca", "kmeans (auto k)", "kNN graph", "propagate", "refine", "review", "k",
         "PCA comps", "accuracy", "coverage", "precision"],
        rows,
    )
    text += (
        f"\nSide by side on the same 20k points: sklearn LabelSpreading(knn) {ls['total']:.1f}s, accuracy "
        f"{ls['accuracy']:.3f}; our full round {ours20['total']:.1f}s, accuracy {ours20['accuracy']:.3f} "
        f"(ratio of times ours/sklearn {ours20['total'] / max(ls['total'], 1e-9):.2f}).\n"
    )
    if 100_000 in results:
        t = results[100_000]["total"]
        text += f"\nTarget: 100k x 512 round <= 60 s: {t:.1f}s ({'met' if t <= 60 else 'MISSED'}).\n"
    else:
        text += "\nQuick mode: the 100k x 512 target is measured by the full run only.\n"
    write("bench_clusterer", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
