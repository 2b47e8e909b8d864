"""Conversions from stored Milvus rows to the tagalong.v1 messages."""

from __future__ import annotations

from typing import Any, cast

from services.labelstore.duplicates import Group
from services.labelstore.schema import Dataset
from tagalong.runtime import vectors
from tagalong.v1 import common_pb2, labelstore_pb2


def _source(value: Any) -> common_pb2.LabelSource:
    return cast(common_pb2.LabelSource, int(value))


def record(row: dict[str, Any]) -> common_pb2.Record:
    msg = common_pb2.Record(
        id=int(row["id"]), uri=row["uri"], label=row["label"], label_source=_source(row["label_source"]),
        confidence=float(row["confidence"]), cluster_id=int(row["cluster_id"]), round_id=row["round_id"],
        model_id=row["model_id"], content_sha256=row["content_sha256"], created_at_ms=int(row["created_at_ms"]),
        labeled_at_ms=int(row["labeled_at_ms"]), label_method=row["label_method"],
    )
    vec = row.get("vector")
    if vec is not None:
        msg.vector.CopyFrom(vectors.to_proto(vec))
    return msg


def hit(h: dict[str, Any]) -> common_pb2.Hit:
    return common_pb2.Hit(
        id=h["id"], score=h["score"], uri=h["uri"] or "", label=h["label"] or "",
        label_source=_source(h["label_source"] or common_pb2.LABEL_SOURCE_NONE),
        confidence=float(h["confidence"] or 0.0),
    )


def group(g: Group) -> common_pb2.DuplicateGroup:
    return common_pb2.DuplicateGroup(
        ids=g.ids, uris=g.uris, min_similarity=g.min_similarity, max_similarity=g.max_similarity
    )


def dataset_info(ds: Dataset, count: int) -> labelstore_pb2.DatasetInfo:
    return labelstore_pb2.DatasetInfo(
        name=ds.name, dim=ds.dim, model_id=ds.model_id, count=count, collection=ds.collection,
        index_type=ds.index_type,
    )
