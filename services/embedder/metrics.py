"""Prometheus metrics of the embedder (module level, registered once per process)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from services.embedder.batcher import BatcherHooks

QUEUE_DEPTH = Gauge("tagalong_embedder_queue_depth", "Items waiting for a batch", ["kind"])
BATCH_SIZE = Histogram(
    "tagalong_embedder_batch_size", "Items per inference batch", ["kind"],
    buckets=(1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 256, 512, 1024),
)
STAGE_SECONDS = Histogram(
    "tagalong_embedder_stage_seconds", "Time spent per stage: decode (one image), infer (one batch)", ["stage"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
ITEMS = Counter("tagalong_embedder_items_total", "Items embedded or refused", ["kind", "outcome"])
ITEMS_PER_SECOND = Gauge(
    "tagalong_embedder_items_per_second", "Inference throughput of the last batch (items / batch seconds)", ["kind"]
)
DROPPED = Counter("tagalong_embedder_dropped_total", "Items dropped before inference", ["kind", "reason"])


def batcher_hooks(kind: str) -> BatcherHooks:
    """Hooks that feed a batcher's numbers into the metrics above."""

    def on_batch(size: int, seconds: float) -> None:
        BATCH_SIZE.labels(kind).observe(size)
        STAGE_SECONDS.labels("infer").observe(seconds)
        if seconds > 0:
            ITEMS_PER_SECOND.labels(kind).set(size / seconds)

    return BatcherHooks(
        queue_depth=QUEUE_DEPTH.labels(kind).set,
        batch=on_batch,
        dropped=lambda reason, count: DROPPED.labels(kind, reason).inc(count),
    )
