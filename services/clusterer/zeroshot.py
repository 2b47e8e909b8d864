"""Zero-shot classification: image embeddings against averaged text-prompt embeddings, softmax over cosine."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from tagalong.runtime.errors import InvalidArgument
from tagalong.runtime.vectors import l2_normalize


def class_embeddings(prompts: Sequence[np.ndarray], dim: int) -> np.ndarray:
    """One unit vector per class: the mean of its unit-normalised prompt embeddings (prompt ensembling)."""
    if len(prompts) < 2:
        raise InvalidArgument("zero-shot needs at least two classes")
    rows = []
    for i, p in enumerate(prompts):
        p = np.atleast_2d(np.asarray(p, dtype=np.float32))
        if p.shape[0] == 0:
            raise InvalidArgument(f"classes[{i}]: no prompt embeddings")
        if p.shape[1] != dim:
            raise InvalidArgument(f"classes[{i}]: prompt dimension {p.shape[1]}, dataset dimension {dim}")
        rows.append(l2_normalize(p).mean(axis=0))
    return l2_normalize(np.stack(rows))


def zero_shot_probs(x: np.ndarray, class_vecs: np.ndarray, temperature: float = 0.01, batch: int = 65536) -> np.ndarray:
    """(n, K) class probabilities: softmax(cos(x, class) / temperature)."""
    if temperature <= 0:
        raise InvalidArgument(f"temperature must be > 0, got {temperature}")
    out = np.empty((x.shape[0], class_vecs.shape[0]), dtype=np.float32)
    for start in range(0, x.shape[0], batch):
        logits = l2_normalize(x[start : start + batch]) @ class_vecs.T / temperature
        logits -= logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        out[start : start + batch] = p / p.sum(axis=1, keepdims=True)
    return out
