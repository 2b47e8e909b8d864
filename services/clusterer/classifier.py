"""The refinement classifier: multinomial logistic regression on reduced features, saved as plain arrays."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression


@dataclass(frozen=True)
class LinearClassifier:
    """Softmax(x @ coef.T + intercept) over `classes` (indices into the round's class list)."""

    coef: np.ndarray  # (c, m)
    intercept: np.ndarray  # (c,)
    classes: np.ndarray  # (c,) int class indices

    def predict_proba(self, x: np.ndarray, n_classes: int, batch: int = 65536) -> np.ndarray:
        """(n, n_classes) probabilities; classes the model never saw get 0."""
        out = np.zeros((x.shape[0], n_classes), dtype=np.float32)
        coef = self.coef.astype(np.float32)
        for start in range(0, x.shape[0], batch):
            logits = x[start : start + batch] @ coef.T + self.intercept.astype(np.float32)
            logits -= logits.max(axis=1, keepdims=True)
            p = np.exp(logits)
            p /= p.sum(axis=1, keepdims=True)
            out[start : start + batch, self.classes] = p
        return out

    def save(self, path: Path) -> None:
        np.savez(path, coef=self.coef, intercept=self.intercept, classes=self.classes)

    @classmethod
    def load(cls, path: Path) -> LinearClassifier:
        with np.load(path, allow_pickle=False) as z:
            return cls(z["coef"], z["intercept"], z["classes"])


def train_classifier(
    x: np.ndarray,
    y: np.ndarray,
    sample_weight: np.ndarray,
    *,
    c: float = 10.0,
    max_iter: int = 200,
    seed: int = 0,
) -> LinearClassifier | None:
    """Fit on the given rows; None when fewer than two classes are present."""
    classes = np.unique(y)
    if classes.size < 2:
        return None
    model = LogisticRegression(C=c, max_iter=max_iter, random_state=seed)
    model.fit(x, y, sample_weight=sample_weight)
    coef, intercept = model.coef_, model.intercept_
    if classes.size == 2:  # sklearn's binary form: one row for the positive class
        coef = np.vstack([-coef[0] / 2, coef[0] / 2])
        intercept = np.array([-intercept[0] / 2, intercept[0] / 2])
    return LinearClassifier(coef=coef.astype(np.float32), intercept=intercept.astype(np.float32), classes=classes)
