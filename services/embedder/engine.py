"""ONNX Runtime sessions of an exported model: provider choice, threads, warm-up, normalised outputs.

The one place that runs the model, shared by the server, the offline helpers and the benchmark.
torch is never imported here.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from services.embedder.manifest import Manifest, load_manifest
from services.embedder.preprocess import Preprocessor
from services.embedder.tokenizer import ClipTokenizer
from tagalong.runtime.errors import FailedPrecondition

log = logging.getLogger(__name__)

# Preference order for "auto": the fastest provider this onnxruntime build offers comes first.
AUTO_ORDER = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


def choose_providers(requested: str, available: list[str] | None = None) -> list[str]:
    """'auto' -> TensorRT > CUDA > CPU among those available; else the named ones, which must exist."""
    available = list(available if available is not None else ort.get_available_providers())
    if requested.strip().lower() == "auto":
        chosen = [p for p in AUTO_ORDER if p in available]
        return chosen or ["CPUExecutionProvider"]
    names = [p.strip() for p in requested.split(",") if p.strip()]
    missing = [p for p in names if p not in available]
    if missing:
        raise ValueError(f"providers {missing} are not available in this onnxruntime (available: {available})")
    if "CPUExecutionProvider" not in names:
        names.append("CPUExecutionProvider")  # nodes a GPU provider cannot run fall back to the CPU
    return names


def l2_normalize(matrix: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length, float32 (zero rows stay zero)."""
    matrix = np.asarray(matrix, dtype=np.float32)
    norms = np.linalg.norm(matrix, axis=-1, keepdims=True)
    return matrix / np.maximum(norms, 1e-12)


@dataclass
class EmbeddingModel:
    """Loaded ONNX sessions plus the preprocessing and tokenizer the manifest asks for."""

    model_dir: Path
    manifest: Manifest
    providers: list[str]
    image_session: ort.InferenceSession
    text_session: ort.InferenceSession | None
    preprocessor: Preprocessor
    tokenizer: ClipTokenizer | None

    @property
    def dim(self) -> int:
        return self.manifest.dim

    @property
    def has_text_tower(self) -> bool:
        return self.text_session is not None

    def embed_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """(n, 3, H, W) float32 -> (n, dim) L2-normalised float32."""
        out = self.image_session.run(None, {self.manifest.image_input: np.ascontiguousarray(pixels, np.float32)})
        return l2_normalize(out[0].reshape(len(pixels), -1))

    def embed_token_ids(self, ids: np.ndarray) -> np.ndarray:
        """(n, context_length) int64 -> (n, dim) L2-normalised float32."""
        if self.text_session is None or self.manifest.text_input is None:
            raise FailedPrecondition(f"model {self.manifest.model_id} has no text tower; it embeds images only")
        out = self.text_session.run(None, {self.manifest.text_input: np.ascontiguousarray(ids, np.int64)})
        return l2_normalize(out[0].reshape(len(ids), -1))

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        if self.tokenizer is None:
            raise FailedPrecondition(f"model {self.manifest.model_id} has no text tower; it embeds images only")
        return self.embed_token_ids(self.tokenizer(texts))

    def warmup(self, batch_size: int) -> None:
        """Run each tower once at batch 1 and at the largest batch, so the first caller pays nothing."""
        size = self.manifest.preprocess.crop
        for n in sorted({1, batch_size}):
            self.embed_pixels(np.zeros((n, 3, size, size), dtype=np.float32))
            if self.text_session is not None and self.tokenizer is not None:
                self.embed_texts(["warm-up"] * n)


def load_model(
    model_dir: Path, *, providers: str = "auto", intra_op_threads: int = 0, verify: bool = True,
    allow_spinning: bool = True,
) -> EmbeddingModel:
    """Open the model folder: check the manifest and checksums, create the sessions, log what runs."""
    model_dir = Path(model_dir)
    manifest = load_manifest(model_dir, verify=verify)
    chosen = choose_providers(providers)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if intra_op_threads:
        options.intra_op_num_threads = intra_op_threads
    # Idle ORT threads spin by default; in a server they would take the CPU the decode workers need.
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if allow_spinning else "0")
    image = ort.InferenceSession(str(model_dir / manifest.image_model), options, providers=chosen)
    text = None
    tokenizer = None
    if manifest.has_text_tower and manifest.text_model and manifest.text:
        text = ort.InferenceSession(str(model_dir / manifest.text_model), options, providers=chosen)
        tokenizer = ClipTokenizer(manifest.text)
    in_use = image.get_providers()
    log.info(
        "embedder model %s (%s, %s, dim %d) runs on %s with %s intra-op threads",
        manifest.model_id, manifest.family, manifest.variant, manifest.dim, ", ".join(in_use),
        intra_op_threads or "default",
    )
    return EmbeddingModel(
        model_dir=model_dir, manifest=manifest, providers=in_use, image_session=image, text_session=text,
        preprocessor=Preprocessor(manifest.preprocess), tokenizer=tokenizer,
    )
