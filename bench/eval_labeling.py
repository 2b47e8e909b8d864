"""Evaluation of the clusterer on real photos: our round vs LabelSpreading and KMeans-majority, active learning.

CIFAR-10 test JPEGs and Fashion-MNIST test images, embedded with the real EfficientNet-Lite0 through the
embedder's offline path (cached under var/cache/). `python -m bench.eval_labeling [--quick]`; results in
bench/results/eval_labeling.md and PNG plots beside it.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / "var" / "cache"
MODEL_NAME = "efficientnet-lite0"
MODEL_DIR = ROOT / "var" / "models" / MODEL_NAME
CIFAR_ARCHIVE = ROOT.parent / "shared" / "datasets" / "cifar10-{split}-jpg.tar.gz"
# BLAS/faiss threads for every method (set by --threads); 1 avoids spin-waiting threads on a shared machine.
THREADS = 1


@dataclass
class LabelledSet:
    """Embedded images with their true classes."""

    name: str
    x: np.ndarray  # (n, d) float32
    y: np.ndarray  # (n,) int
    class_names: list[str]


def _cifar_images(per_class: int | None, split: str = "test") -> tuple[list[bytes], list[int], list[str]]:
    from tagalong.datasets import cifar10

    archive = Path(str(CIFAR_ARCHIVE).format(split=split))
    if not archive.exists():
        raise FileNotFoundError(f"missing {archive}")
    items = cifar10(archive, per_class)  # sorted by path: class by class
    names = sorted({item.label for item in items})
    return [item.data for item in items], [names.index(item.label) for item in items], names


def _fashion_images(per_class: int | None, split: str = "test") -> tuple[list[bytes], list[int], list[str]]:
    from tagalong.datasets import FASHION_CLASSES, fashion_mnist

    items = fashion_mnist(split, per_class)
    if per_class is not None:  # class by class, file order within (the order the embedding caches hold)
        items.sort(key=lambda item: FASHION_CLASSES.index(item.label))
    return [item.data for item in items], [FASHION_CLASSES.index(item.label) for item in items], FASHION_CLASSES


LOADERS: dict[str, Callable[[int | None, str], tuple[list[bytes], list[int], list[str]]]] = {
    "cifar10": _cifar_images,
    "fashion-mnist": _fashion_images,
}


def load_embedded(name: str, per_class: int | None = None, split: str = "test") -> LabelledSet:
    """The dataset embedded with EfficientNet-Lite0, from var/cache/ or computed (and cached) now.

    split "test" is what results are reported on; "dev" is 1,000 images per class of the training split,
    used only to choose defaults (thresholds, weights), so that reported figures are not tuned on themselves.
    """
    if split == "dev":
        per_class = per_class or 1000
    suffix = ("all" if per_class is None else f"{per_class}pc") + ("" if split == "test" else f"_{split}")
    cache = CACHE / f"eval_{name}_{MODEL_NAME}_{suffix}.npz"
    if split == "test" and per_class is not None and not cache.exists():
        full = CACHE / f"eval_{name}_{MODEL_NAME}_all.npz"
        if full.exists():  # a per-class subset of the full cache, no embedding needed
            ds = load_embedded(name)
            keep = np.concatenate([np.flatnonzero(ds.y == c)[:per_class] for c in range(len(ds.class_names))])
            return LabelledSet(name, ds.x[keep], ds.y[keep], ds.class_names)
    if cache.exists():
        with np.load(cache, allow_pickle=False) as z:
            return LabelledSet(name, z["x"], z["y"], [str(c) for c in z["class_names"]])
    from services.embedder.export import ensure_model
    from services.embedder.offline import embed_images

    started = time.perf_counter()
    images, labels, names = LOADERS[name](per_class, "train" if split == "dev" else split)
    model_dir = ensure_model(MODEL_NAME, MODEL_DIR)
    x = embed_images(model_dir, images)
    print(f"embedded {len(images)} {name} images in {time.perf_counter() - started:.0f}s", file=sys.stderr)
    CACHE.mkdir(parents=True, exist_ok=True)
    np.savez(cache, x=x, y=np.asarray(labels), class_names=np.asarray(names))
    return LabelledSet(name, x, np.asarray(labels), names)


# ---------------------------------------------------------------------------------------------------------
# Methods compared on the same features (the L2-normalised embeddings every method receives).


def _human_labels(y: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    lab = np.full(y.shape[0], -1)
    for c in np.unique(y):
        members = np.flatnonzero(y == c)
        lab[rng.choice(members, min(per_class, members.size), replace=False)] = c
    return lab


def _ours(x: np.ndarray, lab: np.ndarray, names: list[str], seed: int, review: int = 0) -> Any:
    from services.clusterer.core import RoundParams, run_round_core

    params = RoundParams(seed=seed, review_batch_size=review)  # the service defaults otherwise
    return run_round_core(x, lab, lab >= 0, params, class_names=names, threads=THREADS)


def _label_spreading(x: np.ndarray, lab: np.ndarray) -> np.ndarray:
    from sklearn.semi_supervised import LabelSpreading

    return LabelSpreading(kernel="knn", n_neighbors=7).fit(x, lab).transduction_


def _supervised(x: np.ndarray, lab: np.ndarray, seed: int) -> np.ndarray:
    """Logistic regression on the human labels alone: what the labels give without the unlabelled items."""
    from sklearn.linear_model import LogisticRegression

    known = lab >= 0
    return LogisticRegression(C=10.0, max_iter=2000, random_state=seed).fit(x[known], lab[known]).predict(x)


def ceiling(ds: LabelledSet, seed: int = 0) -> float:
    """Accuracy of a logistic regression trained on the true labels of a random half of the items, on the other
    half: roughly the most these features can give, for reading the figures at 1-10 labels per class."""
    from sklearn.linear_model import LogisticRegression

    from tagalong.runtime.vectors import l2_normalize

    x = l2_normalize(ds.x)
    order = np.random.default_rng(seed).permutation(x.shape[0])
    train, held = order[: x.shape[0] // 2], order[x.shape[0] // 2 :]
    model = LogisticRegression(C=1.0, max_iter=2000, random_state=seed).fit(x[train], ds.y[train])
    return float(model.score(x[held], ds.y[held]))


def _kmeans_majority(x: np.ndarray, lab: np.ndarray, n_classes: int, seed: int) -> np.ndarray:
    """Plain KMeans (k = number of classes) and each cluster's majority human label; -1 where a cluster has none."""
    from sklearn.cluster import KMeans

    assignment = KMeans(n_clusters=n_classes, n_init=3, random_state=seed).fit_predict(x)
    pred = np.full(x.shape[0], -1)
    for c in range(n_classes):
        votes = lab[(assignment == c) & (lab >= 0)]
        if votes.size:
            pred[assignment == c] = np.bincount(votes).argmax()
    return pred


@dataclass
class Row:
    dataset: str
    per_class: int
    seed: int
    method: str
    accuracy: float  # on all non-human items (a forced guess for each; none counts as wrong)
    coverage: float  # share of non-human items given a label (ours: committed at the threshold)
    precision: float  # accuracy of the given labels (ours: committed ones)
    seconds: float
    given: int = 0  # items given a label (ours: committed)
    correct: int = 0  # of those, correct


def compare(ds: LabelledSet, per_class_list: list[int], seeds: list[int]) -> tuple[list[Row], dict[str, Any]]:
    from services.clusterer.threads import limited_threads
    from tagalong.runtime.vectors import l2_normalize

    x = l2_normalize(ds.x)
    rows: list[Row] = []
    curves: dict[str, Any] = {}
    for per in per_class_list:
        for seed in seeds:
            lab = _human_labels(ds.y, per, seed)
            machine = lab < 0
            t = time.perf_counter()
            out = _ours(x, lab, ds.class_names, seed)
            secs = time.perf_counter() - t
            committed = machine & (out.source == 2)
            rows.append(Row(
                ds.name, per, seed, "tagalong (ours)", float((out.predicted[machine] == ds.y[machine]).mean()),
                float(committed.sum() / machine.sum()),
                float((out.label[committed] == ds.y[committed]).mean()) if committed.any() else float("nan"), secs,
                int(committed.sum()), int((out.label[committed] == ds.y[committed]).sum()),
            ))
            curves[f"{per}/{seed}"] = [_at_threshold(out, ds.y, machine, th) for th in THRESHOLDS]
            t = time.perf_counter()
            with limited_threads(THREADS):
                pred = _label_spreading(x, lab)
            rows.append(Row(ds.name, per, seed, "sklearn LabelSpreading(knn)",
                            float((pred[machine] == ds.y[machine]).mean()), 1.0,
                            float((pred[machine] == ds.y[machine]).mean()), time.perf_counter() - t))
            t = time.perf_counter()
            with limited_threads(THREADS):
                pred = _supervised(x, lab, seed)
            rows.append(Row(ds.name, per, seed, "logistic regression (human labels only)",
                            float((pred[machine] == ds.y[machine]).mean()), 1.0,
                            float((pred[machine] == ds.y[machine]).mean()), time.perf_counter() - t))
            t = time.perf_counter()
            with limited_threads(THREADS):
                pred = _kmeans_majority(x, lab, len(ds.class_names), seed)
            given = machine & (pred >= 0)
            rows.append(Row(ds.name, per, seed, "KMeans majority", float((pred[machine] == ds.y[machine]).mean()),
                            float(given.sum() / machine.sum()),
                            float((pred[given] == ds.y[given]).mean()) if given.any() else float("nan"),
                            time.perf_counter() - t))
            print(f"  {ds.name} {per}/class seed {seed}: " + ", ".join(
                f"{r.method} {r.accuracy:.3f}" for r in rows[-4:]), file=sys.stderr, flush=True)
    return rows, curves


THRESHOLDS = [0.5, 0.6, 0.7, 0.8, 0.9, 0.95]


def _row_precision(rows: list[Row]) -> float:
    """Precision over every seed's labelled items together (our committed counts when kept, else the mean)."""
    given = sum(r.given for r in rows)
    if given:
        return sum(r.correct for r in rows) / given
    finite = [r.precision for r in rows if np.isfinite(r.precision)]
    return float(np.mean(finite)) if finite else float("nan")


def _at_threshold(out: Any, y: np.ndarray, machine: np.ndarray, th: float) -> tuple[float, float, float, int, int]:
    """(threshold, coverage, precision, items labelled, of those right) of our guesses with confidence >= th."""
    sel = machine & (out.confidence >= th)
    right = int((out.predicted[sel] == y[sel]).sum())
    precision = right / int(sel.sum()) if sel.any() else float("nan")
    return th, float(sel.sum() / machine.sum()), precision, int(sel.sum()), right


def active_learning(ds: LabelledSet, budget: int, step: int, seeds: list[int]) -> dict[str, np.ndarray]:
    """Accuracy after each batch of `step` human labels: our review batches vs uniformly random picks."""
    from tagalong.runtime.vectors import l2_normalize

    x = l2_normalize(ds.x)
    budgets = list(range(step, budget + 1, step))
    ours = np.zeros((len(seeds), len(budgets)))
    rand = np.zeros((len(seeds), len(budgets)))
    for si, seed in enumerate(seeds):
        rng = np.random.default_rng(seed)
        lab = np.full(ds.y.shape[0], -1)
        out = _ours(x, lab, ds.class_names, seed, review=step)  # cold start: nothing labelled yet
        for bi, _ in enumerate(budgets):
            picks = [p.index for p in out.review][:step]
            lab[picks] = ds.y[picks]
            out = _ours(x, lab, ds.class_names, seed, review=step)
            m = lab < 0
            ours[si, bi] = (out.predicted[m] == ds.y[m]).mean()
        lab_r = np.full(ds.y.shape[0], -1)
        order = rng.permutation(ds.y.shape[0])
        for bi, b in enumerate(budgets):
            lab_r[order[:b]] = ds.y[order[:b]]
            out = _ours(x, lab_r, ds.class_names, seed)
            m = lab_r < 0
            rand[si, bi] = (out.predicted[m] == ds.y[m]).mean()
        print(f"  {ds.name} active learning seed {seed}: ours {ours[si].round(3)}, random {rand[si].round(3)}",
              file=sys.stderr, flush=True)
    return {"budgets": np.asarray(budgets), "ours": ours, "random": rand}


def labels_to_match(curve: dict[str, np.ndarray]) -> tuple[float, int | None]:
    """Random selection's accuracy at the full budget, and the fewest labels our selection needs to reach it."""
    target = float(curve["random"].mean(axis=0)[-1])
    ours = curve["ours"].mean(axis=0)
    hit = np.flatnonzero(ours >= target)
    return target, (int(curve["budgets"][hit[0]]) if hit.size else None)


def _plots(results: dict[str, Any], out_dir: Path, suffix: str = "") -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for name, res in results.items():
        fig, axes = plt.subplots(1, 3, figsize=(15, 4))
        rows: list[Row] = res["rows"]
        for method in dict.fromkeys(r.method for r in rows):
            pers = sorted({r.per_class for r in rows})
            acc = [np.mean([r.accuracy for r in rows if r.method == method and r.per_class == p]) for p in pers]
            axes[0].plot(pers, acc, marker="o", label=method)
        axes[0].set(title=f"{name}: accuracy vs human labels per class", xlabel="labels per class", ylabel="accuracy")
        axes[0].legend()
        curve = res["active"]
        axes[1].plot(curve["budgets"], curve["ours"].mean(0), marker="o", label="our review batches")
        axes[1].plot(curve["budgets"], curve["random"].mean(0), marker="o", label="random selection")
        axes[1].set(title=f"{name}: active learning", xlabel="human labels", ylabel="accuracy")
        axes[1].legend()
        for key, pts in res["curves"].items():
            per, seed = key.split("/")
            axes[2].plot([p[1] for p in pts], [p[2] for p in pts], marker=".", label=f"{per}/class, seed {seed}")
        axes[2].axhline(0.95, color="grey", linestyle=":")
        axes[2].legend(fontsize=7)
        axes[2].set(title=f"{name}: precision vs coverage (thresholds)", xlabel="coverage", ylabel="precision")
        fig.tight_layout()
        path = out_dir / f"eval_labeling_{name}{suffix}.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        paths.append(path)
    return paths


def _report(results: dict[str, Any], args: argparse.Namespace, plots: list[Path], seconds: float) -> str:
    import warnings

    from bench.common import header, table

    warnings.filterwarnings("ignore", message="Mean of empty slice")

    text = header("Labelling evaluation: few human labels in, many labels out")
    load = os.getloadavg()
    text += (f"- load average at the end of the run: {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} (1/5/15 min; "
             f"the machine is shared, so timings above a load of {os.cpu_count()} are inflated)\n\n")
    text += (
        f"Mode: {'quick' if args.quick else 'full'} ({seconds:.0f}s, {args.threads or 'all'} BLAS/faiss threads). "
        f"Features: {MODEL_NAME} embeddings of real photos "
        "(CIFAR-10 test JPEGs, Fashion-MNIST test images), L2-normalised; every method gets the same features and "
        "the same randomly drawn human labels (seeds listed). Accuracy is over every item without a human label "
        "(an item a method leaves unlabelled counts as wrong); coverage is the share it labels (ours: committed at "
        "the default confidence threshold 0.9); precision is the accuracy of what it labels (pooled over seeds). "
        "sklearn LabelSpreading uses its defaults (kernel='knn', n_neighbors=7, alpha=0.2); the logistic "
        "regression (C=10) learns from the human labels alone, without the unlabelled items. Our confidence is a "
        "probability from a logistic model fitted on the dev split (training images, "
        "`python -m bench.fit_calibration`), never on the images reported here.\n\n"
    )
    for name, res in results.items():
        rows: list[Row] = res["rows"]
        n = res["n"]
        text += f"## {name} ({n} images, {len(res['seeds'])} seeds)\n\n"
        table_rows = []
        for per in sorted({r.per_class for r in rows}):
            ref = np.mean([r.accuracy for r in rows if r.per_class == per and r.method.startswith("sklearn")])
            for method in dict.fromkeys(r.method for r in rows):
                sel = [r for r in rows if r.per_class == per and r.method == method]
                acc = np.mean([r.accuracy for r in sel])
                table_rows.append([
                    per, method, f"{acc:.3f} ± {np.std([r.accuracy for r in sel]):.3f}", f"{100 * (acc - ref):+.1f}",
                    f"{np.mean([r.coverage for r in sel]):.3f}", f"{_row_precision(sel):.3f}",
                    f"{np.mean([r.seconds for r in sel]):.1f}",
                ])
        text += table(
            ["labels/class", "method", "accuracy", "vs LabelSpreading (points)", "coverage", "precision", "seconds"],
            table_rows,
        )
        text += (f"\nFor scale: a logistic regression trained on the true labels of half the items ({n // 2}) "
                 f"reaches {res['ceiling']:.3f} on the other half.\n")
        text += ("\nPrecision and coverage of our labels by confidence threshold (coverage: mean over seeds; "
                 "precision: pooled over seeds, right / labelled):\n\n")
        th_rows = []
        for per in sorted({r.per_class for r in rows}):
            pts = [v for k, v in res["curves"].items() if k.startswith(f"{per}/")]
            for ti, th in enumerate(THRESHOLDS):
                labelled, right = sum(p[ti][3] for p in pts), sum(p[ti][4] for p in pts)
                th_rows.append([per, th, f"{np.mean([p[ti][1] for p in pts]):.3f}",
                                f"{right / labelled:.3f}" if labelled else "nan"])
        text += table(["labels/class", "threshold", "coverage", "precision"], th_rows)
        curve = res["active"]
        target, needed = labels_to_match(curve)
        text += "\nActive learning (batches of human labels; accuracy of the next round, mean over seeds):\n\n"
        text += table(
            ["human labels", "our review batches", "random selection"],
            [[int(b), f"{o:.3f}", f"{r:.3f}"] for b, o, r in
             zip(curve["budgets"], curve["ours"].mean(0), curve["random"].mean(0), strict=True)],
        )
        budget = int(curve["budgets"][-1])
        verdict = (f"our selection reaches it with {needed} labels ({needed / budget:.0%} of {budget})" if needed
                   else f"our selection does not reach it within {budget} labels")
        text += f"\nRandom selection with {budget} labels: accuracy {target:.3f}; {verdict} (target <= 50 %).\n\n"
    text += "## Targets\n\n"
    for name, res in results.items():
        rows = res["rows"]
        for per in sorted({r.per_class for r in rows}):
            ours = np.mean([r.accuracy for r in rows if r.per_class == per and r.method.startswith("tagalong")])
            ref = np.mean([r.accuracy for r in rows if r.per_class == per and r.method.startswith("sklearn")])
            mine = [r for r in rows if r.per_class == per and r.method.startswith("tagalong")]
            given, correct = sum(r.given for r in mine), sum(r.correct for r in mine)
            cov = np.mean([r.coverage for r in mine])
            if given:
                prec = correct / given
                verdict = "met" if prec >= 0.95 else "MISSED"
                commit = (f"precision of committed labels {prec:.3f} ({correct} of {given} committed items over "
                          f"{len(mine)} seeds, coverage {cov:.3f}; {verdict}, target 0.95)")
            else:
                commit = "nothing committed at the threshold (precision undefined; coverage 0)"
            text += (f"- {name}, {per}/class: +{100 * (ours - ref):.1f} points over LabelSpreading "
                     f"({'met' if ours - ref >= 0.10 else 'MISSED'}, target +10); {commit}\n")
    text += "\nPlots: " + ", ".join(f"`{p.name}`" for p in plots) + "\n"
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.eval_labeling", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="subsets and fewer seeds (a few minutes on 2 cores)")
    parser.add_argument("--embed-only", action="store_true", help="only fill the embedding cache")
    parser.add_argument("--datasets", nargs="*", default=list(LOADERS), choices=list(LOADERS))
    parser.add_argument("--split", default="test", choices=["test", "dev"],
                        help="dev: 1,000/class of the training split, for tuning defaults (eval_labeling_dev.md)")
    parser.add_argument("--seeds", type=int, default=None, help="number of seeds (default: 3, quick: 2)")
    parser.add_argument("--threads", type=int, default=1, help="BLAS/faiss threads for every method (0: all)")
    args = parser.parse_args(argv)
    from services.clusterer.threads import limited_threads

    global THREADS
    THREADS = args.threads
    per_class = 200 if args.quick else None
    seeds = list(range(args.seeds or (2 if args.quick else 3)))
    started = time.perf_counter()
    results: dict[str, Any] = {}
    for name in args.datasets:
        ds = load_embedded(name, per_class, args.split)
        print(f"{name}: {ds.x.shape[0]} x {ds.x.shape[1]}", file=sys.stderr, flush=True)
        if args.embed_only:
            continue
        rows, curves = compare(ds, [1, 5, 10], seeds)
        budget, step = (60, 10) if args.quick else (100, 10)
        active = active_learning(ds, budget, step, seeds[:1] if args.quick else seeds)
        with limited_threads(THREADS):
            top = ceiling(ds)
        results[name] = {
            "rows": rows, "curves": curves, "active": active, "n": ds.x.shape[0], "seeds": seeds, "ceiling": top,
        }
    if args.embed_only:
        return 0
    from bench.common import RESULTS, write

    RESULTS.mkdir(parents=True, exist_ok=True)
    plots = _plots(results, RESULTS, "" if args.split == "test" else f"_{args.split}")
    report = _report(results, args, plots, time.perf_counter() - started)
    write("eval_labeling" + ("" if args.split == "test" else f"_{args.split}"), report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
