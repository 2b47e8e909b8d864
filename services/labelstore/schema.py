"""Milvus collections of the label store: one per dataset, plus one small collection of dataset metadata."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pymilvus import CollectionSchema, DataType, MilvusClient

from services.labelstore.settings import LabelStoreSettings

META_COLLECTION = "datasets"  # prefixed: tagalong_datasets
META_DIM = 2  # Milvus needs a vector field in every collection; this one is never searched.
MAX_DIM = 32768

# Scalar fields of a row; VARCHAR lengths are in bytes, so 4 per character leaves room for any UTF-8.
SCALAR_FIELDS = (
    "id", "content_sha256", "uri", "label", "label_source", "confidence", "cluster_id", "round_id",
    "label_method", "model_id", "created_at_ms", "labeled_at_ms",
)
ALL_FIELDS = (*SCALAR_FIELDS, "vector")


@dataclass(frozen=True)
class Dataset:
    """A dataset as stored in the metadata collection."""

    name: str
    dim: int
    model_id: str
    index_type: str
    collection: str
    created_at_ms: int


def dataset_schema(dim: int, settings: LabelStoreSettings) -> CollectionSchema:
    schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
    schema.add_field("id", DataType.INT64, is_primary=True)
    schema.add_field("vector", DataType.FLOAT_VECTOR, dim=dim)
    schema.add_field("content_sha256", DataType.VARCHAR, max_length=64)
    schema.add_field("uri", DataType.VARCHAR, max_length=4 * settings.max_uri_length)
    schema.add_field("label", DataType.VARCHAR, max_length=4 * settings.max_label_length)
    schema.add_field("label_source", DataType.INT32)
    schema.add_field("confidence", DataType.FLOAT)
    schema.add_field("cluster_id", DataType.INT64)
    schema.add_field("round_id", DataType.VARCHAR, max_length=512)
    schema.add_field("label_method", DataType.VARCHAR, max_length=512)
    schema.add_field("model_id", DataType.VARCHAR, max_length=1024)
    schema.add_field("created_at_ms", DataType.INT64)
    schema.add_field("labeled_at_ms", DataType.INT64)
    return schema


def meta_schema() -> CollectionSchema:
    schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
    schema.add_field("name", DataType.VARCHAR, is_primary=True, max_length=64)
    schema.add_field("vector", DataType.FLOAT_VECTOR, dim=META_DIM)
    schema.add_field("dim", DataType.INT64)
    schema.add_field("model_id", DataType.VARCHAR, max_length=1024)
    schema.add_field("index_type", DataType.VARCHAR, max_length=32)
    schema.add_field("created_at_ms", DataType.INT64)
    return schema


def index_params(client: MilvusClient, index_type: str, settings: LabelStoreSettings) -> Any:
    params: dict[str, Any] = {}
    if index_type == "HNSW":
        params = {"M": settings.hnsw_m, "efConstruction": settings.hnsw_ef_construction}
    elif index_type == "IVF_FLAT":
        params = {"nlist": settings.ivf_nlist}
    ip = client.prepare_index_params()
    ip.add_index(field_name="vector", index_type=index_type, metric_type="COSINE", params=params)
    return ip


def meta_index_params(client: MilvusClient) -> Any:
    ip = client.prepare_index_params()
    ip.add_index(field_name="vector", index_type="FLAT", metric_type="L2", params={})
    return ip


def search_params(index_type: str, top_k: int, settings: LabelStoreSettings, ef: int = 0) -> dict[str, Any]:
    """Per-query parameters of the index (HNSW's ef must be at least top_k)."""
    params: dict[str, Any] = {}
    if index_type == "HNSW":
        params = {"ef": max(ef or settings.hnsw_ef, top_k)}
    elif index_type == "IVF_FLAT":
        params = {"nprobe": settings.ivf_nprobe}
    return {"metric_type": "COSINE", "params": params}
