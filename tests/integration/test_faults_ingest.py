"""Ingest of real CIFAR-10 photos while processes are killed with SIGKILL (workers, the embedder, the label
store) and Redis and Milvus are restarted: afterwards every image is stored exactly once and the job
ended. The short run is part of `make test`; the long one (all faults) is slow; the 10k run is in
`python -m bench.bench_reliability`."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fixtures.reliability import PrivateStores, ProcStack, cifar_subset, clean_redis_prefix, ingest_under_faults

ENV = {"TAGALONG_GATEWAY_WORKER_BATCH_SIZE": "8", "TAGALONG_GATEWAY_EMBED_BATCH_SIZE": "8",
       "TAGALONG_GATEWAY_WORKER_CONCURRENCY": "1", "TAGALONG_GATEWAY_MAX_DELIVERIES": "20"}


def test_ingest_survives_kill_9_of_a_worker_and_the_embedder(tmp_path: Path, cifar_test_dir: Path,
                                                             clip_model_dir: Path, redis_url: str,
                                                             milvus_server_uri: str) -> None:
    files = cifar_subset(cifar_test_dir, tmp_path / "images", 300)
    stack = ProcStack(tmp_path / "stack", clip_model_dir, redis_url, milvus_server_uri,
                      allowed_roots=(tmp_path / "images",), services=("embedder", "labelstore", "gateway"),
                      extra_env=ENV)
    try:
        stack.start()
        report = ingest_under_faults(stack, None, files, ["worker", "embedder"], timeout=150)
    finally:
        stack.stop()
        clean_redis_prefix(redis_url, stack.prefix)
    assert [f for f, _, _ in report.faults] == ["worker", "embedder"], report
    assert all(done < len(files) for _, done, _ in report.faults), "a fault came after the job ended"
    assert not report.problems(), (report.problems(), stack.all_logs())
    assert report.ok


@pytest.mark.slow
def test_ingest_survives_every_fault(tmp_path: Path, cifar_test_dir: Path, clip_model_dir: Path) -> None:
    """1,000 photos; kill -9 of a worker, the embedder and the label store; Redis (AOF) and Milvus restarted."""
    files = cifar_subset(cifar_test_dir, tmp_path / "images", 1000)
    stores = PrivateStores(tmp_path / "stores")
    stack = None
    try:
        stores.start_redis()
        stores.start_milvus()
        stack = ProcStack(tmp_path / "stack", clip_model_dir, stores.redis_url, stores.milvus_uri,
                          allowed_roots=(tmp_path / "images",), services=("embedder", "labelstore", "gateway"),
                          extra_env=ENV)
        stack.start()
        report = ingest_under_faults(stack, stores, files, ["worker", "embedder", "labelstore", "redis", "milvus"],
                                     timeout=900)
    finally:
        if stack is not None:
            stack.stop()
        stores.stop()
    assert len(report.faults) == 5, report
    assert not report.problems(), report.problems()
    assert report.ok
