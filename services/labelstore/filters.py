"""Validation of names and values, and Milvus filter expressions built only from the structured Filter.

Nothing a caller sends is pasted into an expression: numbers are formatted by us, enum values are checked,
and strings are validated (length, no control characters) and quoted with their escapes.
"""

from __future__ import annotations

import math
import re

from tagalong.runtime.errors import InvalidArgument
from tagalong.v1 import common_pb2

DATASET_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,63}")
MAX_ID = (1 << 63) - 1
SOURCES = {
    common_pb2.LABEL_SOURCE_NONE,
    common_pb2.LABEL_SOURCE_HUMAN,
    common_pb2.LABEL_SOURCE_PROPAGATED,
    common_pb2.LABEL_SOURCE_ZERO_SHOT,
}
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def dataset_name(name: str) -> str:
    """The name if valid, else INVALID_ARGUMENT."""
    if not DATASET_NAME.fullmatch(name or ""):
        raise InvalidArgument(f"dataset name {name!r} must match [A-Za-z][A-Za-z0-9_]{{0,63}}")
    return name


def text(value: str, field: str, max_length: int) -> str:
    """A bounded string without control characters (labels, round ids, methods, uris)."""
    if len(value) > max_length:
        raise InvalidArgument(f"{field}: longer than {max_length} characters")
    if _CONTROL.search(value):
        raise InvalidArgument(f"{field}: contains control characters")
    return value


def quote(value: str) -> str:
    """A Milvus string literal: double quotes, with backslash and quote escaped."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def source(value: int, field: str = "source") -> int:
    """A stored label source: UNSPECIFIED reads as NONE; unknown numbers are INVALID_ARGUMENT."""
    if value == common_pb2.LABEL_SOURCE_UNSPECIFIED:
        return common_pb2.LABEL_SOURCE_NONE
    if value not in SOURCES:
        raise InvalidArgument(f"{field}: unknown label source {value}")
    return value


def row_id(value: int, field: str = "id") -> int:
    if not 0 < value <= MAX_ID:
        raise InvalidArgument(f"{field}: ids are positive int64 values, got {value}")
    return value


def _confidence(value: float, field: str) -> float:
    if not math.isfinite(value):
        raise InvalidArgument(f"{field}: not a finite number")
    return value


def _next_string(prefix: str) -> str:
    """The smallest string greater than every string starting with prefix (code point order)."""
    last = ord(prefix[-1])
    if last >= 0x10FFFF:
        raise InvalidArgument("filter.uri_prefix: cannot end with the last Unicode code point")
    nxt = last + 1
    if 0xD800 <= nxt <= 0xDFFF:  # skip surrogates, never valid in UTF-8
        nxt = 0xE000
    return prefix[:-1] + chr(nxt)


def filter_expr(f: common_pb2.Filter | None, *, max_label_length: int = 128, max_uri_length: int = 2048) -> str:
    """The Milvus boolean expression of a Filter ("" when it matches everything)."""
    if f is None:
        return ""
    parts: list[str] = []
    if f.labels:
        labels = [text(v, f"filter.labels[{i}]", max_label_length) for i, v in enumerate(f.labels)]
        parts.append(f"label in [{', '.join(quote(v) for v in labels)}]")
    if f.sources:
        values = sorted({source(int(s), "filter.sources") for s in f.sources})
        parts.append(f"label_source in [{', '.join(str(v) for v in values)}]")
    if f.HasField("min_confidence"):
        parts.append(f"confidence >= {_confidence(f.min_confidence, 'filter.min_confidence')!r}")
    if f.HasField("max_confidence"):
        parts.append(f"confidence <= {_confidence(f.max_confidence, 'filter.max_confidence')!r}")
    if f.uri_prefix:
        prefix = text(f.uri_prefix, "filter.uri_prefix", max_uri_length)
        # A range instead of LIKE: '%' and '_' in paths would be wildcards there.
        parts.append(f"(uri >= {quote(prefix)} && uri < {quote(_next_string(prefix))})")
    if f.HasField("cluster_id"):
        # Stored cluster ids are >= -1 (SetLabels refuses others). Milvus cannot parse the literal of
        # INT64_MIN, so anything below -1 becomes a condition that no row meets (ids are positive).
        cluster = int(f.cluster_id)
        parts.append(f"cluster_id == {cluster}" if cluster >= -1 else "id < 0")
    if f.round_id:
        parts.append(f"round_id == {quote(text(f.round_id, 'filter.round_id', 128))}")
    return " && ".join(parts)


def and_(*exprs: str) -> str:
    """Conjunction of non-empty expressions, each parenthesised."""
    kept = [e for e in exprs if e]
    if len(kept) == 1:
        return kept[0]
    return " && ".join(f"({e})" for e in kept)
