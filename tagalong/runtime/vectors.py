"""Conversions between tagalong.v1.Vector messages and numpy arrays."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from tagalong.runtime.errors import InvalidArgument
from tagalong.v1 import common_pb2


def to_proto(vector: np.ndarray, float16: bool = False) -> common_pb2.Vector:
    """One 1-D array -> Vector (float32 values, or little-endian float16 bytes)."""
    if float16:
        return common_pb2.Vector(float16_le=np.asarray(vector, dtype="<f2").tobytes())
    msg = common_pb2.Vector()
    msg.values.extend(np.asarray(vector, dtype=np.float32).tolist())
    return msg


def from_proto(msg: common_pb2.Vector, *, field: str = "vector") -> np.ndarray:
    """Vector -> 1-D float32 array. INVALID_ARGUMENT when empty, both forms set, or not finite."""
    has_values = len(msg.values) > 0
    has_f16 = len(msg.float16_le) > 0
    if has_values and has_f16:
        raise InvalidArgument(f"{field}: set either values or float16_le, not both")
    if has_f16:
        if len(msg.float16_le) % 2:
            raise InvalidArgument(f"{field}: float16_le has an odd number of bytes")
        arr = np.frombuffer(msg.float16_le, dtype="<f2").astype(np.float32)
    elif has_values:
        arr = np.asarray(msg.values, dtype=np.float32)
    else:
        raise InvalidArgument(f"{field}: empty vector")
    if not np.isfinite(arr).all():
        raise InvalidArgument(f"{field}: contains NaN or infinity")
    return arr


def stack(msgs: Sequence[common_pb2.Vector], *, dim: int | None = None, field: str = "vectors") -> np.ndarray:
    """Several Vectors -> an (n, dim) float32 matrix; INVALID_ARGUMENT on a wrong or mixed dimension."""
    rows = [from_proto(m, field=f"{field}[{i}]") for i, m in enumerate(msgs)]
    if not rows:
        return np.zeros((0, dim or 0), dtype=np.float32)
    want = dim if dim is not None else rows[0].shape[0]
    for i, r in enumerate(rows):
        if r.shape[0] != want:
            raise InvalidArgument(f"{field}[{i}]: dimension {r.shape[0]}, expected {want}")
    return np.stack(rows).astype(np.float32, copy=False)


def l2_normalize(matrix: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero)."""
    norms = np.linalg.norm(matrix, axis=-1, keepdims=True)
    return (matrix / np.maximum(norms, eps)).astype(np.float32, copy=False)
