"""Sparse k-nearest-neighbour graphs on unit vectors with faiss: exact for small sets, IVF for large ones."""

from __future__ import annotations

import faiss
import numpy as np
import scipy.sparse as sp

# Above this many points an exact all-pairs search costs too much on a few cores: use IVF.
EXACT_LIMIT = 30_000


def knn_search(
    x: np.ndarray, k: int, *, queries: np.ndarray | None = None, seed: int = 0, batch: int = 16384
) -> tuple[np.ndarray, np.ndarray]:
    """Inner-product neighbours of queries (default: x itself, self excluded). Returns (sims, idx), idx -1 = none."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    n, d = x.shape
    self_query = queries is None
    q = x if queries is None else np.ascontiguousarray(queries, dtype=np.float32)
    want = min(k + (1 if self_query else 0), n)
    if n <= EXACT_LIMIT:
        index: faiss.Index = faiss.IndexFlatIP(d)
    else:
        nlist = int(min(4096, max(64, 4 * np.sqrt(n))))
        quantizer = faiss.IndexFlatIP(d)
        ivf = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
        rng = np.random.default_rng(seed)
        train = x[rng.choice(n, min(n, nlist * 40), replace=False)]
        ivf.train(train)
        ivf.nprobe = 12
        index = ivf
    index.add(x)
    sims = np.empty((q.shape[0], want), dtype=np.float32)
    idx = np.empty((q.shape[0], want), dtype=np.int64)
    for start in range(0, q.shape[0], batch):
        s, i = index.search(q[start : start + batch], want)
        sims[start : start + batch] = s
        idx[start : start + batch] = i
    if not self_query:
        return sims[:, :k], idx[:, :k]
    # Drop each row's own entry (usually first; duplicates may put it elsewhere).
    rows = np.arange(q.shape[0])[:, None]
    is_self = idx == rows
    has_self = is_self.any(axis=1)
    keep = ~is_self
    keep[~has_self, -1] = False  # no self found: drop the farthest to keep k columns
    out_s = sims[keep].reshape(q.shape[0], want - 1)
    out_i = idx[keep].reshape(q.shape[0], want - 1)
    return out_s[:, :k], out_i[:, :k]


def affinity_graph(sims: np.ndarray, idx: np.ndarray, power: float = 3.0) -> sp.csr_matrix:
    """Symmetric sparse affinity W = max(sim, 0)^power from a kNN list, W + W^T."""
    n, k = idx.shape
    valid = idx >= 0
    rows = np.repeat(np.arange(n), k)[valid.ravel()]
    cols = idx.ravel()[valid.ravel()]
    vals = np.clip(sims.ravel()[valid.ravel()], 0.0, None) ** power
    w = sp.csr_matrix((vals.astype(np.float32), (rows, cols)), shape=(n, n))
    w = w + w.T
    w.setdiag(0)
    w.eliminate_zeros()
    return w.tocsr()


def normalized_graph(w: sp.csr_matrix) -> sp.csr_matrix:
    """D^-1/2 W D^-1/2 (isolated nodes keep zero rows)."""
    deg = np.asarray(w.sum(axis=1)).ravel()
    inv = np.where(deg > 0, 1.0 / np.sqrt(np.maximum(deg, 1e-12)), 0.0).astype(np.float32)
    d = sp.diags(inv)
    return (d @ w @ d).tocsr()
