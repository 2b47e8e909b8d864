"""Caps the BLAS and faiss (OpenMP) thread pools for a block of work.

On a busy machine, BLAS and OpenMP threads that spin-wait for each other make numeric code many times slower
(measured here: PCA 10x, faiss k-means 4x at a load of 15 on 2 cores); one thread per round is often faster.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import faiss
from threadpoolctl import threadpool_limits

_lock = threading.Lock()


@contextlib.contextmanager
def limited_threads(threads: int) -> Iterator[None]:
    """Run the block with at most `threads` BLAS/OpenMP threads (0: leave the libraries' defaults)."""
    if threads <= 0:
        yield
        return
    with _lock:  # faiss's setting is process-wide: one capped block at a time sets and restores it
        previous = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(threads)
    try:
        with threadpool_limits(limits=threads):
            yield
    finally:
        with _lock:
            faiss.omp_set_num_threads(previous)
