"""The embedder's core (no gRPC): decoding in a worker pool, dynamic batchers, per-item results."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from services.embedder import metrics
from services.embedder.batcher import DynamicBatcher
from services.embedder.engine import EmbeddingModel, load_model
from services.embedder.manifest import ManifestError
from services.embedder.preprocess import DecodeLimits
from services.embedder.settings import EmbedderSettings
from tagalong.runtime.errors import (
    FailedPrecondition,
    InvalidArgument,
    ResourceExhausted,
    ServiceError,
    Unavailable,
)
from tagalong.runtime.settings import SettingError

log = logging.getLogger(__name__)

# One result per item: the L2-normalised vector, or the caller-visible reason that item failed.
ItemResult = np.ndarray | ServiceError
# Texts longer than this are cut before tokenizing; the tokenizer keeps only the context length anyway.
MAX_TEXT_CHARS = 4096


class EmbedderCore:
    """Loads the model, runs a batcher per tower, and embeds images and texts for many callers."""

    def __init__(self, settings: EmbedderSettings) -> None:
        self.settings = settings
        self.limits = DecodeLimits(
            max_pixels=settings.max_image_pixels, max_bytes=settings.max_image_bytes, formats=settings.formats
        )
        self.model: EmbeddingModel | None = None
        self._decode_pool: ThreadPoolExecutor | None = None
        self._image_exec: ThreadPoolExecutor | None = None
        self._text_exec: ThreadPoolExecutor | None = None
        self.image_batcher: DynamicBatcher[np.ndarray, np.ndarray] | None = None
        self.text_batcher: DynamicBatcher[np.ndarray, np.ndarray] | None = None
        self._decoding = 0

    # -- lifecycle -----------------------------------------------------------------------------------
    async def start(self) -> None:
        """Load and check the model, warm it up, start the batchers. SettingError for a bad setting."""
        s = self.settings
        try:
            model = await asyncio.to_thread(
                load_model, s.model_dir, providers=s.providers, intra_op_threads=s.intra_op_threads,
                allow_spinning=s.intra_op_spinning,
            )
        except ManifestError as err:
            raise SettingError("TAGALONG_EMBEDDER_MODEL_DIR", str(err)) from None
        except ValueError as err:
            raise SettingError("TAGALONG_EMBEDDER_PROVIDERS", str(err)) from None
        except Exception as err:  # noqa: BLE001 - onnxruntime refuses the file: the folder is bad
            raise SettingError("TAGALONG_EMBEDDER_MODEL_DIR", f"cannot load the ONNX model: {err}") from None
        if s.warmup:
            started = time.perf_counter()
            await asyncio.to_thread(model.warmup, s.max_batch_size)
            log.info("warm-up of %s took %.2fs", model.manifest.model_id, time.perf_counter() - started)
        self.model = model
        self._decode_pool = ThreadPoolExecutor(s.decode_workers, thread_name_prefix="embedder-decode")
        self._image_exec = ThreadPoolExecutor(1, thread_name_prefix="embedder-infer-image")
        delay = s.max_delay_ms / 1000
        self.image_batcher = DynamicBatcher(
            self._run_images, s.max_batch_size, delay, s.queue_size, "image-batcher", metrics.batcher_hooks("image")
        )
        self.image_batcher.start()
        if model.has_text_tower:
            self._text_exec = ThreadPoolExecutor(1, thread_name_prefix="embedder-infer-text")
            self.text_batcher = DynamicBatcher(
                self._run_texts, s.max_batch_size, delay, s.queue_size, "text-batcher", metrics.batcher_hooks("text")
            )
            self.text_batcher.start()

    async def stop(self) -> None:
        for batcher in (self.image_batcher, self.text_batcher):
            if batcher is not None:
                await batcher.stop()
        for pool in (self._decode_pool, self._image_exec, self._text_exec):
            if pool is not None:
                pool.shutdown(wait=False, cancel_futures=True)

    def ready(self) -> tuple[EmbeddingModel, DynamicBatcher[np.ndarray, np.ndarray]]:
        if self.model is None or self.image_batcher is None:
            raise Unavailable("the embedder is still loading its model")
        return self.model, self.image_batcher

    # -- batch runners (executed by the batchers) ----------------------------------------------------
    async def _run_images(self, payloads: list[np.ndarray]) -> list[np.ndarray]:
        model, _ = self.ready()

        def infer() -> np.ndarray:
            return model.embed_pixels(np.stack(payloads))

        out = await asyncio.get_running_loop().run_in_executor(self._image_exec, infer)
        return list(out)

    async def _run_texts(self, payloads: list[np.ndarray]) -> list[np.ndarray]:
        model, _ = self.ready()

        def infer() -> np.ndarray:
            return model.embed_token_ids(np.stack(payloads))

        out = await asyncio.get_running_loop().run_in_executor(self._text_exec, infer)
        return list(out)

    # -- images --------------------------------------------------------------------------------------
    def _decode(self, data: bytes) -> np.ndarray:
        model, _ = self.ready()
        started = time.perf_counter()
        try:
            return model.preprocessor(data, self.limits)
        except ServiceError:
            raise
        except Exception as err:  # noqa: BLE001 - any decoder failure belongs to that one image
            raise InvalidArgument(f"cannot decode image: {err}") from None
        finally:
            metrics.STAGE_SECONDS.labels("decode").observe(time.perf_counter() - started)

    async def embed_images(self, images: Sequence[bytes], deadline: float | None = None) -> list[ItemResult]:
        """One result per image, in order. A bad image fails only its item (InvalidArgument in the list);
        a full queue fails the whole call (ResourceExhausted), as does a passed deadline."""
        _, batcher = self.ready()
        n = len(images)
        if n == 0:
            return []
        if n > self.settings.max_items_per_call:
            raise InvalidArgument(f"{n} images in one call; at most {self.settings.max_items_per_call}")
        # Refuse at once when the queue (items decoding + waiting for a batch) cannot take them.
        if self._decoding + batcher.depth + n > self.settings.queue_size:
            metrics.ITEMS.labels("image", "rejected").inc(n)
            raise ResourceExhausted(
                f"embedder queue is full ({self._decoding + batcher.depth}/{self.settings.queue_size}); retry later"
            )
        loop = asyncio.get_running_loop()
        self._decoding += n
        try:
            decoded = await asyncio.gather(
                *(loop.run_in_executor(self._decode_pool, self._decode, data) for data in images),
                return_exceptions=True,
            )
        finally:
            self._decoding -= n
        good = [i for i, d in enumerate(decoded) if isinstance(d, np.ndarray)]
        results: list[ItemResult] = [
            d if isinstance(d, ServiceError) else InvalidArgument(f"cannot decode image: {d}")
            for d in decoded
        ]
        if good:
            try:
                futures = batcher.submit_many([decoded[i] for i in good], deadline)  # type: ignore[misc]
            except ResourceExhausted:
                metrics.ITEMS.labels("image", "rejected").inc(len(good))
                raise
            vectors = await asyncio.gather(*futures, return_exceptions=True)
            for i, vec in zip(good, vectors, strict=True):
                if isinstance(vec, BaseException):
                    raise vec  # deadline passed, shutting down, or a bug: the whole call fails
                results[i] = vec
        ok = len([r for r in results if isinstance(r, np.ndarray)])
        metrics.ITEMS.labels("image", "ok").inc(ok)
        if n - ok:
            metrics.ITEMS.labels("image", "invalid").inc(n - ok)
        return results

    # -- texts ---------------------------------------------------------------------------------------
    async def embed_texts(self, texts: Sequence[str], deadline: float | None = None) -> list[ItemResult]:
        """One vector per text, in order; FailedPrecondition on an image-only model."""
        model, _ = self.ready()
        if self.text_batcher is None or model.tokenizer is None:
            raise FailedPrecondition(
                f"model {model.manifest.model_id} ({model.manifest.family}) has no text tower; it embeds images only"
            )
        n = len(texts)
        if n == 0:
            return []
        if n > self.settings.max_items_per_call:
            raise InvalidArgument(f"{n} texts in one call; at most {self.settings.max_items_per_call}")
        ids = model.tokenizer([t[:MAX_TEXT_CHARS] for t in texts])
        try:
            futures = self.text_batcher.submit_many(list(ids), deadline)
        except ResourceExhausted:
            metrics.ITEMS.labels("text", "rejected").inc(n)
            raise
        vectors = await asyncio.gather(*futures, return_exceptions=True)
        for vec in vectors:
            if isinstance(vec, BaseException):
                raise vec
        metrics.ITEMS.labels("text", "ok").inc(n)
        return list(vectors)  # type: ignore[arg-type]
