"""Settings of the clusterer (TAGALONG_CLUSTERER_*), including the defaults for a RoundConfig's zero fields."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from tagalong.runtime.settings import ServiceSettings


class ClustererSettings(ServiceSettings):
    """Where the label store is, where artifacts go, and the defaults of a round."""

    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True, env_prefix="TAGALONG_CLUSTERER_")

    port: int = Field(50053, ge=0, le=65535, description="gRPC port; 0 picks a free one.")
    labelstore_addr: str = Field("127.0.0.1:50052", min_length=1, description="Label store address (host:port).")
    labelstore_connect_seconds: float = Field(
        15.0, gt=0, le=600, description="How long start-up waits for the label store before failing."
    )
    labelstore_call_seconds: float = Field(120.0, gt=0, description="Deadline of one unary label-store call.")
    scan_seconds: float = Field(3600.0, gt=0, description="Deadline of a whole dataset scan.")
    artifact_dir: Path = Field(Path("var/artifacts"), description="Round artifacts, shared by all replicas.")
    scan_page_size: int = Field(1000, ge=1, le=10000, description="Rows per ScanEmbeddings page.")
    write_batch_size: int = Field(1000, ge=1, le=10000, description="Assignments per SetLabels call.")
    max_points: int = Field(
        2_000_000, ge=3, description="Largest dataset a round loads (RESOURCE_EXHAUSTED above it)."
    )
    compute_threads: int = Field(
        0, ge=0, le=256, description="BLAS/faiss threads per computation (0: the libraries' defaults, all cores)."
    )
    max_concurrent_rounds: int = Field(1, ge=1, le=64, description="Rounds computed at once per replica.")
    # Defaults of a RoundConfig's zero fields.
    pca_variance: float = Field(0.95, gt=0, le=1)
    max_pca_components: int = Field(256, ge=2, le=4096)
    feature_power: float = Field(
        0.5, gt=0, le=1,
        description="Power transform (x^p) of non-negative embeddings, such as pooled CNN features, before PCA; "
        "embeddings with negative values are used as they are; 1 turns it off (per round: RoundConfig.feature_power).",
    )
    k_min: int = Field(0, ge=0, description="0: the number of classes (at least 2).")
    k_max: int = Field(0, ge=0, description="0: derived from the number of classes and points.")
    confidence_threshold: float = Field(
        0.9, gt=0, le=1,
        description="Commit a machine label at this estimated probability of being right (calibrated on held-out "
        "data: bench/fit_calibration.py).",
    )
    max_iterations: int = Field(3, ge=0, le=50)
    review_batch_size: int = Field(50, ge=0, le=10000)
    diversity: float = Field(0.5, ge=0, le=1)
    knn_k: int = Field(10, ge=2, le=200, description="Neighbours per node of the label-spreading graph.")
    # Other RPCs.
    projection_max_points: int = Field(20_000, ge=10, description="Default and cap of points a projection returns.")
    zero_shot_temperature: float = Field(0.01, gt=0)
    zero_shot_min_confidence: float = Field(0.5, gt=0, le=1)
