"""Embedding without a server (evaluation harnesses, benchmarks): the same preprocessing and sessions."""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from services.embedder.engine import EmbeddingModel, load_model
from services.embedder.manifest import MANIFEST
from services.embedder.preprocess import DecodeLimits
from tagalong.runtime.errors import InvalidArgument


@functools.lru_cache(maxsize=4)
def _cached_model(model_dir: str, manifest_mtime_ns: int, providers: str, intra_op_threads: int) -> EmbeddingModel:
    return load_model(Path(model_dir), providers=providers, intra_op_threads=intra_op_threads)


def get_model(model_dir: Path, providers: str = "auto", intra_op_threads: int = 0) -> EmbeddingModel:
    """The loaded model of a folder, cached per process (re-loaded when the manifest changes)."""
    path = Path(model_dir).resolve()
    mtime = (path / MANIFEST).stat().st_mtime_ns if (path / MANIFEST).exists() else 0
    return _cached_model(str(path), mtime, providers, intra_op_threads)


def embed_images(
    model_dir: Path, images: Sequence[bytes], batch_size: int = 64, *, limits: DecodeLimits | None = None,
    workers: int | None = None,
) -> np.ndarray:
    """Encoded images -> (n, dim) L2-normalised float32. InvalidArgument naming the first undecodable image."""
    model = get_model(model_dir)
    limits = limits or DecodeLimits()
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    if not images:
        return np.zeros((0, model.dim), dtype=np.float32)

    def decode(index: int) -> np.ndarray:
        try:
            return model.preprocessor(images[index], limits)
        except InvalidArgument as err:
            raise InvalidArgument(f"images[{index}]: {err.message}") from None

    out = np.empty((len(images), model.dim), dtype=np.float32)
    with ThreadPoolExecutor(workers or max(1, min(4, os.cpu_count() or 1))) as pool:
        for start in range(0, len(images), batch_size):
            idx = range(start, min(start + batch_size, len(images)))
            pixels = np.stack(list(pool.map(decode, idx)))
            out[start : start + len(idx)] = model.embed_pixels(pixels)
    return out


def embed_image_files(model_dir: Path, paths: Sequence[Path | str], batch_size: int = 64) -> np.ndarray:
    """Image files -> (n, dim) L2-normalised float32, in the order given."""
    return embed_images(model_dir, [Path(p).read_bytes() for p in paths], batch_size=batch_size)


def embed_texts(model_dir: Path, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
    """Texts -> (n, dim) L2-normalised float32; FailedPrecondition on an image-only model."""
    model = get_model(model_dir)
    parts = [model.embed_texts(list(texts[i : i + batch_size])) for i in range(0, len(texts), batch_size)]
    return np.concatenate(parts) if parts else np.zeros((0, model.dim), dtype=np.float32)
