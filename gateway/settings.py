"""Typed settings of the gateway and its workers (TAGALONG_GATEWAY_*, plus the shared Redis names)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from tagalong.runtime.settings import ServiceSettings


class GatewaySettings(ServiceSettings):
    """Settings read by `python -m gateway` and `python -m gateway.worker` alike."""

    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True, env_prefix="TAGALONG_GATEWAY_")

    port: int = Field(50050, ge=0, le=65535, description="gRPC port; 0 picks a free one.")
    embedder_addr: str = Field("127.0.0.1:50051", description="Embedder service address.")
    labelstore_addr: str = Field("127.0.0.1:50052", description="Label store service address.")
    clusterer_addr: str = Field("127.0.0.1:50053", description="Clusterer service address.")
    redis_url: str = Field(
        "redis://127.0.0.1:6379/0",
        validation_alias=AliasChoices("TAGALONG_REDIS_URL", "redis_url"),
        description="Redis holding jobs, streams, counters and review queues (shared name).",
    )
    redis_prefix: str = Field(
        "tagalong",
        validation_alias=AliasChoices("TAGALONG_REDIS_PREFIX", "redis_prefix"),
        pattern=r"^[A-Za-z0-9_.:-]{1,64}$",
        description="Prefix of every Redis key, so that stacks (and tests) can share one Redis.",
    )
    # Comma-separated in the environment (NoDecode: not JSON); empty means path ingest is refused.
    allowed_roots: Annotated[tuple[Path, ...], NoDecode] = Field(
        (), description="Directories under which Ingest may read paths (comma-separated); empty: none."
    )
    max_queue_length: int = Field(
        20_000, ge=1, description="Entries a stream may hold (queued + in progress) before RESOURCE_EXHAUSTED."
    )
    queue_wait_seconds: float = Field(
        10.0, ge=0, description="How long Ingest waits for room in a full queue before RESOURCE_EXHAUSTED."
    )
    max_item_mb: float = Field(16.0, gt=0, le=256, description="Largest image accepted by Ingest, MiB.")
    max_deliveries: int = Field(
        5, ge=1, le=100, description="Deliveries of a stream entry before it goes to the dead-letter stream."
    )
    claim_idle_seconds: float = Field(
        30.0, gt=0, description="A pending entry idle this long is taken over from its (dead) worker."
    )
    call_deadline_seconds: float = Field(60.0, gt=0, description="Deadline of calls to the services.")
    round_deadline_seconds: float = Field(3600.0, gt=0, description="Deadline of a labelling round call.")
    job_ttl_seconds: int = Field(7 * 24 * 3600, ge=60, description="Job records expire this long after creation.")
    # Worker knobs.
    worker_batch_size: int = Field(64, ge=1, le=1024, description="Stream entries a worker takes per read.")
    worker_concurrency: int = Field(2, ge=1, le=64, description="Batches a worker process has in flight.")
    embed_batch_size: int = Field(32, ge=1, le=1024, description="Images per EmbedImages call.")
    worker_block_ms: int = Field(1000, ge=10, le=60_000, description="How long a stream read waits for entries.")

    @field_validator("allowed_roots", mode="before")
    @classmethod
    def _split_roots(cls, value: Any) -> tuple[Path, ...]:
        if value is None or value == "":
            return ()
        parts = value.split(",") if isinstance(value, str) else list(value)
        roots = []
        for part in parts:
            text = str(part).strip()
            if not text:
                continue
            path = Path(text).expanduser()
            if not path.is_absolute():
                raise ValueError(f"allowed root {text!r} is not an absolute path")
            roots.append(path)
        return tuple(roots)

    @property
    def max_item_bytes(self) -> int:
        return int(self.max_item_mb * 1024 * 1024)
