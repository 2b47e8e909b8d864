"""Pure parts of the label store: names, filter expressions and escaping, duplicate grouping, exports, settings."""

from __future__ import annotations

import csv
import io
import json

import pytest
from pydantic import ValidationError

from services.labelstore import export, filters
from services.labelstore.duplicates import group_pairs
from services.labelstore.settings import LabelStoreSettings
from tagalong.runtime.errors import InvalidArgument
from tagalong.v1 import common_pb2 as c


@pytest.mark.parametrize(
    ("name", "ok"),
    [
        pytest.param("photos", True, id="plain"),
        pytest.param("A1_b", True, id="mixed"),
        pytest.param("x" * 64, True, id="64-chars"),
        pytest.param("x" * 65, False, id="65-chars"),
        pytest.param("1abc", False, id="leading-digit"),
        pytest.param("_abc", False, id="leading-underscore"),
        pytest.param("a-b", False, id="dash"),
        pytest.param("a b", False, id="space"),
        pytest.param("", False, id="empty"),
        pytest.param('a"; drop', False, id="quote"),
    ],
)
def test_dataset_names(name: str, ok: bool) -> None:
    if ok:
        assert filters.dataset_name(name) == name
    else:
        with pytest.raises(InvalidArgument):
            filters.dataset_name(name)


@pytest.mark.parametrize(
    ("f", "expected"),
    [
        pytest.param(c.Filter(), "", id="empty"),
        pytest.param(c.Filter(labels=["cat", "dog"]), 'label in ["cat", "dog"]', id="labels"),
        pytest.param(c.Filter(labels=['a"b']), 'label in ["a\\"b"]', id="quote-escaped"),
        pytest.param(c.Filter(labels=["a\\"]), 'label in ["a\\\\"]', id="backslash-escaped"),
        pytest.param(c.Filter(labels=['" || id > 0 || "']), 'label in ["\\" || id > 0 || \\""]', id="injection"),
        pytest.param(c.Filter(sources=[c.LABEL_SOURCE_ZERO_SHOT, c.LABEL_SOURCE_HUMAN]), "label_source in [2, 4]",
                     id="sources"),
        pytest.param(c.Filter(sources=[c.LABEL_SOURCE_UNSPECIFIED]), "label_source in [1]", id="unspecified-is-none"),
        pytest.param(c.Filter(min_confidence=0.5, max_confidence=1.0), "confidence >= 0.5 && confidence <= 1.0",
                     id="confidence"),
        pytest.param(c.Filter(uri_prefix="a/"), '(uri >= "a/" && uri < "a0")', id="uri-prefix-range"),
        pytest.param(c.Filter(uri_prefix="x%_"), '(uri >= "x%_" && uri < "x%`")', id="uri-prefix-no-wildcards"),
        pytest.param(c.Filter(cluster_id=-1, round_id="r1"), 'cluster_id == -1 && round_id == "r1"', id="cluster"),
        pytest.param(c.Filter(cluster_id=-(2**63)), "id < 0", id="cluster-below-minus-one-matches-nothing"),
    ],
)
def test_filter_expressions(f: c.Filter, expected: str) -> None:
    assert filters.filter_expr(f) == expected


@pytest.mark.parametrize(
    "f",
    [
        pytest.param(c.Filter(labels=["x" * 129]), id="long-label"),
        pytest.param(c.Filter(labels=["a\nb"]), id="newline"),
        pytest.param(c.Filter(labels=["a\x00"]), id="nul"),
        pytest.param(c.Filter(sources=[99]), id="unknown-source"),
        pytest.param(c.Filter(min_confidence=float("nan")), id="nan"),
        pytest.param(c.Filter(round_id="r" * 200), id="long-round"),
        pytest.param(c.Filter(uri_prefix="a\tb"), id="tab-in-uri"),
    ],
)
def test_bad_filters_are_invalid_argument(f: c.Filter) -> None:
    with pytest.raises(InvalidArgument):
        filters.filter_expr(f)


def test_and_parenthesises_each_part() -> None:
    assert filters.and_("id > 3", "", "a || b") == "(id > 3) && (a || b)"
    assert filters.and_("", "x") == "x"


def test_group_pairs_union_find_largest_first() -> None:
    pairs = [(1, 2, 0.99), (2, 3, 0.97), (10, 11, 0.98), (5, 5, 1.0), (20, 21, 0.96), (21, 22, 0.995), (22, 23, 0.97)]
    order = {1: (50, 1), 2: (50, 2), 3: (10, 3)}  # (created_at_ms, id): 3 was stored first, it represents
    groups = group_pairs(pairs, order_key=order)
    assert [g.ids for g in groups] == [[20, 21, 22, 23], [3, 1, 2], [10, 11]]
    assert (groups[0].min_similarity, groups[0].max_similarity) == (0.96, 0.995)
    assert group_pairs([]) == []


ROWS = [
    {"id": 1, "uri": "a,1.jpg", "label": "cat", "label_source": c.LABEL_SOURCE_HUMAN, "confidence": 1.0,
     "cluster_id": 2, "round_id": "", "label_method": "alice", "content_sha256": "ab"},
    {"id": 2, "uri": 'b"2.jpg', "label": "dog", "label_source": c.LABEL_SOURCE_PROPAGATED, "confidence": 0.8125,
     "cluster_id": 3, "round_id": "r1", "label_method": "label_spreading", "content_sha256": "cd"},
    {"id": 3, "uri": "c.jpg", "label": "", "label_source": c.LABEL_SOURCE_NONE, "confidence": 0.0,
     "cluster_id": -1, "round_id": "", "label_method": "", "content_sha256": "ef"},
]


def _file(fmt: int, chunk: int = 16, **kw: str) -> tuple[str, int]:
    pieces = list(export.export(fmt, lambda: iter([ROWS[:2], ROWS[2:]]), chunk_bytes=chunk, **kw))
    assert all(len(p) <= chunk for p, _ in pieces)
    return b"".join(p for p, _ in pieces).decode(), pieces[-1][1]


def test_export_jsonl_and_csv_round_trip() -> None:
    text, rows = _file(c.EXPORT_FORMAT_JSONL)
    parsed = [json.loads(line) for line in text.splitlines()]
    assert rows == 3 and [p["label_source"] for p in parsed] == ["human", "propagated", "none"]
    assert parsed[1] == {"id": 2, "uri": 'b"2.jpg', "label": "dog", "label_source": "propagated",
                         "confidence": 0.8125, "cluster_id": 3, "round_id": "r1"}
    text, rows = _file(c.EXPORT_FORMAT_CSV)
    table = list(csv.DictReader(io.StringIO(text)))
    assert rows == 3 and [r["uri"] for r in table] == ["a,1.jpg", 'b"2.jpg', "c.jpg"]
    assert _file(c.EXPORT_FORMAT_UNSPECIFIED)[0] == _file(c.EXPORT_FORMAT_JSONL)[0]


def test_export_coco_and_label_studio() -> None:
    coco = json.loads(_file(c.EXPORT_FORMAT_COCO)[0])
    assert [i["id"] for i in coco["images"]] == [1, 2, 3]
    assert coco["categories"] == [{"id": 1, "name": "cat", "supercategory": ""},
                                  {"id": 2, "name": "dog", "supercategory": ""}]
    assert [(a["image_id"], a["category_id"]) for a in coco["annotations"]] == [(1, 1), (2, 2)]
    tasks = json.loads(_file(c.EXPORT_FORMAT_LABEL_STUDIO, image_url_prefix="s3://bucket/")[0])
    assert [t["data"]["image"] for t in tasks] == ["s3://bucket/a,1.jpg", 's3://bucket/b"2.jpg', "s3://bucket/c.jpg"]
    assert "annotations" in tasks[0] and "predictions" not in tasks[0]
    assert tasks[1]["predictions"][0]["model_version"] == "r1" and tasks[1]["predictions"][0]["score"] == 0.8125
    assert "annotations" not in tasks[2] and "predictions" not in tasks[2]
    with pytest.raises(InvalidArgument):
        list(export.export(99, lambda: iter([ROWS])))


def test_settings_defaults_and_validation(monkeypatch: pytest.MonkeyPatch) -> None:
    s = LabelStoreSettings()
    assert s.port == 50052 and s.milvus_uri.endswith("var/labelstore.db") and s.effective_index_type == "FLAT"
    monkeypatch.setenv("TAGALONG_LABELSTORE_MILVUS_URI", "http://milvus:19530")
    monkeypatch.setenv("TAGALONG_LABELSTORE_HNSW_EF", "256")
    s = LabelStoreSettings()
    assert s.is_server and s.effective_index_type == "HNSW" and s.hnsw_ef == 256
    for bad in ({"milvus_uri": "milvus:19530"}, {"hnsw_m": 1}, {"index_type": "DISKANN"}, {"scan_page_size": 0}):
        with pytest.raises(ValidationError):
            LabelStoreSettings(**bad)  # type: ignore[arg-type]
