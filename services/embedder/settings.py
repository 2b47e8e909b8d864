"""Typed settings of the embedder, read from TAGALONG_EMBEDDER_* environment variables."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import SettingsConfigDict

from tagalong.runtime.settings import ServiceSettings

DEFAULT_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")


def default_workers() -> int:
    """Decode threads when not set: one per CPU, at most 4 (inference needs the rest)."""
    return max(1, min(4, os.cpu_count() or 1))


class EmbedderSettings(ServiceSettings):
    """Everything the embedder can be told; each value is checked at start-up."""

    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True, env_prefix="TAGALONG_EMBEDDER_")

    port: int = Field(50051, ge=0, le=65535, description="gRPC port; 0 picks a free one.")
    model_dir: Path = Field(
        ..., description="Folder written by `python -m services.embedder.export` (manifest.json + ONNX files)."
    )
    max_batch_size: int = Field(32, ge=1, le=1024, description="Largest batch the dynamic batcher runs at once.")
    max_delay_ms: float = Field(
        5.0, ge=0, le=1000, description="How long the first item of a batch waits for others before it runs."
    )
    queue_size: int = Field(
        1024, ge=1, le=1_000_000,
        description="Items waiting for inference (and for decoding) before new calls get RESOURCE_EXHAUSTED.",
    )
    max_items_per_call: int = Field(
        256, ge=1, le=100_000, description="Most images or texts in one EmbedImages / EmbedTexts call."
    )
    stream_window: int = Field(
        64, ge=1, le=100_000, description="Items of one EmbedImageStream in flight before reading pauses."
    )
    providers: str = Field(
        "auto",
        description="ONNX Runtime execution providers in priority order, comma-separated "
        "(e.g. 'CUDAExecutionProvider,CPUExecutionProvider'), or 'auto': TensorRT > CUDA > CPU when available.",
    )
    intra_op_threads: int = Field(0, ge=0, le=1024, description="ONNX Runtime intra-op threads (0: its default).")
    intra_op_spinning: bool = Field(
        False, description="Let idle ONNX Runtime threads spin (lower latency alone, but steals CPU from decoding)."
    )
    preprocess_workers: int = Field(
        0, ge=0, le=256, description="Threads that decode and preprocess images (0: min(4, CPU count))."
    )
    max_image_pixels: int = Field(
        40_000_000, ge=1, description="Images with more pixels are refused (decompression-bomb guard)."
    )
    max_image_bytes: int = Field(32 * 1024 * 1024, ge=1, description="Encoded images larger than this are refused.")
    allowed_formats: str = Field(
        ",".join(DEFAULT_FORMATS), description="Pillow formats that may be decoded, comma-separated (JPEG,PNG,...)."
    )
    warmup: bool = Field(True, description="Run a full batch through each model before reporting SERVING.")

    @field_validator("allowed_formats")
    @classmethod
    def _check_formats(cls, value: str) -> str:
        formats = [v.strip().upper() for v in value.split(",") if v.strip()]
        if not formats:
            raise ValueError("at least one image format must be allowed")
        return ",".join(formats)

    @property
    def decode_workers(self) -> int:
        return self.preprocess_workers or default_workers()

    @property
    def formats(self) -> tuple[str, ...]:
        """The allowed Pillow format names."""
        return tuple(self.allowed_formats.split(","))

    @field_validator("providers")
    @classmethod
    def _check_providers(cls, value: str) -> str:
        value = value.strip()
        if not value:
            raise ValueError("empty; use 'auto' or a comma-separated list of ONNX Runtime providers")
        return value
