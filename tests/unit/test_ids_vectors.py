"""Content ids and vector conversions (property-based)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from tagalong.runtime.errors import InvalidArgument
from tagalong.runtime.ids import content_id, content_sha256, id_from_sha256
from tagalong.runtime.vectors import from_proto, l2_normalize, stack, to_proto
from tagalong.v1 import common_pb2


@given(st.binary(max_size=2048))
def test_content_id_is_stable_positive_int63(data: bytes) -> None:
    cid = content_id(data)
    assert 0 < cid < 2**63
    assert cid == content_id(bytes(data))
    assert cid == id_from_sha256(content_sha256(data))


def test_different_bytes_get_different_ids() -> None:
    assert content_id(b"a") != content_id(b"b")


def test_id_from_bad_digest() -> None:
    with pytest.raises(ValueError):
        id_from_sha256("abc")


finite = arrays(np.float32, st.integers(1, 64), elements=st.floats(-1e4, 1e4, width=32))


@given(finite)
def test_float32_round_trip(vec: np.ndarray) -> None:
    assert np.array_equal(from_proto(to_proto(vec)), vec)


@given(arrays(np.float32, st.integers(1, 64), elements=st.floats(-100, 100, width=16)))
def test_float16_round_trip(vec: np.ndarray) -> None:
    np.testing.assert_array_equal(from_proto(to_proto(vec, float16=True)), vec.astype(np.float16).astype(np.float32))


@pytest.mark.parametrize(
    "msg",
    [
        pytest.param(common_pb2.Vector(), id="empty"),
        pytest.param(common_pb2.Vector(values=[1.0, float("nan")]), id="nan"),
        pytest.param(common_pb2.Vector(values=[float("inf")]), id="inf"),
        pytest.param(common_pb2.Vector(values=[1.0], float16_le=b"\x00\x3c"), id="both-forms"),
        pytest.param(common_pb2.Vector(float16_le=b"\x00"), id="odd-bytes"),
    ],
)
def test_bad_vectors_are_invalid_argument(msg: common_pb2.Vector) -> None:
    with pytest.raises(InvalidArgument):
        from_proto(msg)


def test_stack_refuses_a_wrong_dimension() -> None:
    msgs = [to_proto(np.ones(4)), to_proto(np.ones(3))]
    with pytest.raises(InvalidArgument, match=r"vectors\[1\]: dimension 3, expected 4"):
        stack(msgs)
    with pytest.raises(InvalidArgument, match="expected 8"):
        stack(msgs[:1], dim=8)


def test_l2_normalize_rows() -> None:
    m = l2_normalize(np.array([[3.0, 4.0], [0.0, 0.0]], dtype=np.float32))
    np.testing.assert_allclose(m, [[0.6, 0.8], [0.0, 0.0]])
