"""Typed settings of the label store (TAGALONG_LABELSTORE_*), validated at start-up."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import SettingsConfigDict

from tagalong.runtime.settings import ServiceSettings

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_LITE_PATH = REPO_ROOT / "var" / "labelstore.db"

IndexType = Literal["AUTO", "HNSW", "FLAT", "IVF_FLAT", "AUTOINDEX"]


def is_server_uri(uri: str) -> bool:
    """True for a Milvus server address, False for a Milvus Lite database file."""
    return uri.startswith(("http://", "https://", "tcp://", "grpc://"))


class LabelStoreSettings(ServiceSettings):
    """Where Milvus is, which index to build, and the limits of each call."""

    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True, env_prefix="TAGALONG_LABELSTORE_")

    port: int = Field(50052, ge=0, le=65535, description="gRPC port; 0 picks a free one.")
    milvus_uri: str = Field(
        str(DEFAULT_LITE_PATH),
        description="Milvus: a path ending in .db is Milvus Lite (zero set-up); http://host:19530 is a server.",
    )
    milvus_token: SecretStr | None = Field(None, description="Milvus server token ('user:password'), if any.")
    connect_timeout_seconds: float = Field(10.0, gt=0, le=300, description="How long to wait for Milvus at start.")
    call_timeout_seconds: float = Field(60.0, gt=0, le=3600, description="Deadline of each call to Milvus.")
    collection_prefix: str = Field(
        "tagalong_", pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}$",
        description="Prefix of every collection, so several deployments can share one Milvus.",
    )
    index_type: IndexType = Field(
        "AUTO", description="Vector index of new datasets; AUTO: HNSW on a server, FLAT (exact) on Milvus Lite."
    )
    hnsw_m: int = Field(16, ge=4, le=64, description="HNSW: graph degree M.")
    hnsw_ef_construction: int = Field(200, ge=8, le=2048, description="HNSW: efConstruction at build time.")
    hnsw_ef: int = Field(
        64, ge=8, le=32768,
        description="HNSW: ef at search time (raised to top_k when smaller); 64 gave recall@10 0.998 at 100k 512-d.",
    )
    ivf_nlist: int = Field(1024, ge=1, le=65536, description="IVF_FLAT: number of lists.")
    ivf_nprobe: int = Field(32, ge=1, le=65536, description="IVF_FLAT: lists probed per query.")
    scan_page_size: int = Field(1000, ge=1, le=10000, description="ScanEmbeddings rows per page when unset.")
    write_batch_rows: int = Field(1000, ge=1, le=100000, description="Rows per Milvus upsert call.")
    max_batch_items: int = Field(10000, ge=1, le=1000000, description="Most items in one Upsert/SetLabels/Get call.")
    max_label_length: int = Field(128, ge=1, le=1024, description="Longest label, in characters.")
    max_uri_length: int = Field(2048, ge=16, le=16384, description="Longest uri, in characters.")
    duplicate_threshold: float = Field(0.95, gt=0, le=1, description="Cosine threshold of near-duplicates when unset.")
    duplicate_hnsw_ef: int = Field(
        64, ge=8, le=32768,
        description="HNSW ef of near-duplicate searches: near-copies are the closest neighbours, so a small ef finds "
        "them and keeps all-pairs fast.",
    )
    duplicate_neighbors: int = Field(10, ge=1, le=1000, description="Neighbours examined per item when unset.")
    lite_flush_rows: int = Field(
        1000, ge=0, le=10_000_000,
        description="Milvus Lite only: flush before a search once this many rows were written since the last flush "
        "(Lite searches unflushed rows an order of magnitude slower); 0 turns it off.",
    )
    export_chunk_bytes: int = Field(64 * 1024, ge=1024, le=16 * 1024 * 1024, description="Export chunk size.")

    @field_validator("milvus_uri")
    @classmethod
    def _known_uri(cls, value: str) -> str:
        value = value.strip()
        if is_server_uri(value):
            return value
        if not value.endswith(".db"):
            raise ValueError("expected http://host:port (a Milvus server) or a path ending in .db (Milvus Lite)")
        return value

    @field_validator("milvus_token", mode="before")
    @classmethod
    def _empty_token_is_none(cls, value: object) -> object:
        return None if value == "" else value

    @property
    def is_server(self) -> bool:
        return is_server_uri(self.milvus_uri)

    @property
    def effective_index_type(self) -> str:
        """The index new datasets get."""
        if self.index_type != "AUTO":
            return self.index_type
        return "HNSW" if self.is_server else "FLAT"
