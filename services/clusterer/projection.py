"""2D/3D projections of embeddings for display: PCA, t-SNE, or UMAP when umap-learn is installed."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

import numpy as np

from services.clusterer.pca import fit_pca
from tagalong.runtime.errors import FailedPrecondition, InvalidArgument

METHODS = ("pca", "tsne", "umap")


@dataclass(frozen=True)
class Projection:
    coords: np.ndarray  # (n, dims)
    explained_variance: list[float]  # PCA only


def project(x: np.ndarray, method: str = "pca", dims: int = 2, seed: int = 0) -> Projection:
    """Project rows of x to `dims` (2 or 3) dimensions."""
    if dims not in (2, 3):
        raise InvalidArgument(f"dims must be 2 or 3, got {dims}")
    if method not in METHODS:
        raise InvalidArgument(f"unknown projection method {method!r}")
    if x.shape[0] < dims + 1:
        raise FailedPrecondition(f"need more than {dims} items to project, dataset has {x.shape[0]}")
    if method == "umap" and importlib.util.find_spec("umap") is None:
        raise FailedPrecondition("UMAP projection needs umap-learn, which is not installed on this clusterer")
    basis = fit_pca(x, n_components=dims)
    if method == "pca":
        return Projection(basis.transform(x), [float(v) for v in basis.explained_variance_ratio])
    # Non-linear methods run on a 50-component PCA first (standard practice; faster, less noise).
    pre = fit_pca(x, n_components=min(50, x.shape[1])).transform(x) if x.shape[1] > 50 else x.astype(np.float32)
    if method == "tsne":
        from sklearn.manifold import TSNE

        perplexity = float(min(30.0, max(2.0, (x.shape[0] - 1) / 3)))
        coords = TSNE(n_components=dims, perplexity=perplexity, init="pca", random_state=seed).fit_transform(pre)
        return Projection(coords.astype(np.float32), [])
    import umap  # pragma: no cover - only where umap-learn is installed

    coords = umap.UMAP(n_components=dims, random_state=seed).fit_transform(pre)  # pragma: no cover
    return Projection(np.asarray(coords, dtype=np.float32), [])  # pragma: no cover
