"""`python -m bench.fit_calibration`: refit the clusterer's confidence model (core.CALIBRATION) on the dev split.

Rounds run on the dev split (1,000 training images per class of CIFAR-10 and Fashion-MNIST, EfficientNet-Lite0
features; see bench.eval_labeling) with 1, 2, 5, 10 and 20 random human labels per class and 2 seeds; each
machine-labelled point's evidence (core.EVIDENCE) and whether its label is right train a logistic regression.
Prints the coefficients to paste into core.CALIBRATION, and precision/coverage at 0.9 on dev and on test with
the new coefficients, so a change can be checked on data it was not fitted on. Never reads test labels for
the fit.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from bench.eval_labeling import _human_labels, load_embedded
from services.clusterer import core
from tagalong.runtime.vectors import l2_normalize

DATASETS = ("cifar10", "fashion-mnist")


def evidence(
    split: str, per_class: tuple[int, ...], seeds: tuple[int, ...]
) -> list[tuple[str, int, np.ndarray, np.ndarray]]:
    """(dataset, labels per class, evidence of the machine-labelled rows, whether each is right)."""
    out = []
    for name in DATASETS:
        ds = load_embedded(name, split=split)
        x = l2_normalize(ds.x)
        for per in per_class:
            for seed in seeds:
                lab = _human_labels(ds.y, per, seed)
                res = core.run_round_core(
                    x, lab, lab >= 0, core.RoundParams(seed=seed, review_batch_size=0),
                    class_names=ds.class_names, threads=1,
                )
                machine = lab < 0
                assert res.evidence is not None
                out.append((name, per, res.evidence[machine], (res.predicted == ds.y)[machine]))
                print(f"  {split} {name} {per}/class seed {seed}", file=sys.stderr, flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.fit_calibration", description=__doc__)
    parser.add_argument("--c", type=float, default=1.0, help="inverse regularisation of the logistic fit")
    args = parser.parse_args(argv)
    from sklearn.linear_model import LogisticRegression

    dev = evidence("dev", (1, 2, 5, 10, 20), (0, 1))
    x = np.vstack([f for _, _, f, _ in dev]).astype(np.float64)
    y = np.concatenate([r for _, _, _, r in dev])
    model = LogisticRegression(C=args.c, max_iter=2000).fit(x, y)
    coef = dict(zip(core.EVIDENCE, model.coef_[0].round(3).tolist(), strict=True))
    print("CALIBRATION =", {**coef, "intercept": round(float(model.intercept_[0]), 3)})
    test = evidence("test", (1, 5, 10), (0, 1))
    for split, rows in (("dev", dev), ("test", test)):
        for name in DATASETS:
            for per in sorted({p for n, p, _, _ in rows if n == name}):
                sel = [(f, r) for n, p, f, r in rows if n == name and p == per]
                q = np.concatenate([model.predict_proba(f)[:, 1] for f, _ in sel])
                right = np.concatenate([r for _, r in sel])
                commit = q >= 0.9
                prec = f"{right[commit].mean():.3f}" if commit.any() else "n/a"
                print(f"{split:4} {name:13} {per:2}/class: coverage {commit.mean():.3f} ({int(commit.sum())} items), "
                      f"precision {prec}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
