"""PCA fitted from streamed covariance (memory O(d^2)), kept to a target explained variance or a fixed size."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tagalong.runtime.errors import InvalidArgument


@dataclass(frozen=True)
class PCABasis:
    """A fitted PCA: x -> (x - mean) @ components.T."""

    mean: np.ndarray  # (d,)
    components: np.ndarray  # (m, d), rows orthonormal, by decreasing variance
    explained_variance_ratio: np.ndarray  # (m,)

    @property
    def n_components(self) -> int:
        return int(self.components.shape[0])

    @property
    def explained_variance(self) -> float:
        return float(self.explained_variance_ratio.sum())

    def transform(self, x: np.ndarray, batch: int = 65536) -> np.ndarray:
        """Project rows in batches (float32 out)."""
        out = np.empty((x.shape[0], self.n_components), dtype=np.float32)
        comps = self.components.T.astype(np.float32)
        mean = self.mean.astype(np.float32)
        for start in range(0, x.shape[0], batch):
            out[start : start + batch] = (x[start : start + batch] - mean) @ comps
        return out

    def save(self, path: Path) -> None:
        np.savez(
            path, mean=self.mean, components=self.components, explained_variance_ratio=self.explained_variance_ratio
        )

    @classmethod
    def load(cls, path: Path) -> PCABasis:
        with np.load(path, allow_pickle=False) as z:
            return cls(z["mean"], z["components"], z["explained_variance_ratio"])


def fit_pca(
    x: np.ndarray,
    *,
    variance: float = 0.95,
    n_components: int = 0,
    max_components: int = 256,
    batch: int = 65536,
) -> PCABasis:
    """Fit PCA on all rows through a d x d covariance accumulated in batches (exact, bounded memory).

    n_components > 0 wins over `variance`; otherwise keep the fewest components whose cumulative
    explained variance reaches `variance` (capped at max_components).
    """
    if x.ndim != 2 or x.shape[0] < 2:
        raise InvalidArgument("PCA needs at least two vectors")
    if not 0.0 < variance <= 1.0:
        raise InvalidArgument(f"pca_variance must be in (0, 1], got {variance}")
    n, d = x.shape
    if n_components > d:
        raise InvalidArgument(f"pca_components={n_components} exceeds the embedding dimension {d}")
    mean = np.zeros(d, dtype=np.float64)
    for start in range(0, n, batch):
        mean += x[start : start + batch].sum(axis=0, dtype=np.float64)
    mean /= n
    cov = np.zeros((d, d), dtype=np.float64)
    mean32 = mean.astype(np.float32)
    for start in range(0, n, batch):
        centred = x[start : start + batch] - mean32
        cov += (centred.T @ centred).astype(np.float64)
    cov /= max(n - 1, 1)
    eigvals, eigvecs = np.linalg.eigh(cov)
    order = np.argsort(eigvals)[::-1]
    eigvals = np.clip(eigvals[order], 0.0, None)
    eigvecs = eigvecs[:, order]
    total = float(eigvals.sum()) or 1.0
    ratio = eigvals / total
    if n_components > 0:
        m = n_components
    else:
        m = int(np.searchsorted(np.cumsum(ratio), variance - 1e-9) + 1)
        m = max(2, min(m, max_components, d, n - 1))
    return PCABasis(mean=mean, components=eigvecs[:, :m].T.copy(), explained_variance_ratio=ratio[:m].copy())
