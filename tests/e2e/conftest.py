"""The whole stack for end-to-end tests: embedder (tiny random CLIP), label store on real Milvus and the
clusterer in-process, a gateway on real Redis, and gateway workers as real subprocesses."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from gateway.settings import GatewaySettings
from tests.fixtures.gateway import Workers, clean_redis, gateway_settings, make_workers, running_gateway

ROOT = Path(__file__).resolve().parents[2]
PER_CLASS = 20  # 10 classes x 20 = 200 CIFAR photos: small enough for a 2-core CI machine


@pytest.fixture(scope="session")
def e2e_model_dir(request: pytest.FixtureRequest) -> Path:
    """The tiny random CLIP (text search works with it): the embedder's fixture when it has one."""
    try:
        return Path(request.getfixturevalue("clip_model_dir"))
    except pytest.FixtureLookupError:
        from services.embedder.export import ensure_model

        return ensure_model("random-clip", ROOT / "var" / "models" / "random-clip")


@pytest.fixture(scope="session")
def cifar_subset(cifar_test_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """PER_CLASS CIFAR-10 test photos of each class, in <class>/NNNN.jpg folders."""
    out = tmp_path_factory.mktemp("cifar_subset")
    for class_dir in sorted(p for p in cifar_test_dir.iterdir() if p.is_dir()):
        (out / class_dir.name).mkdir()
        for src in sorted(class_dir.glob("*.jpg"))[:PER_CLASS]:
            shutil.copyfile(src, out / class_dir.name / src.name)
    return out


@dataclass
class Stack:
    """A running stack: the gateway's address, its settings, and its worker processes."""

    address: str
    settings: GatewaySettings
    workers: Workers
    labelstore_addr: str
    images: Path


@pytest.fixture()
async def stack(e2e_model_dir: Path, milvus_server_uri: str, redis_url: str, redis_prefix: str, tmp_path: Path,
                cifar_subset: Path, workers_factory: list[Workers]) -> AsyncIterator[Stack]:
    from services.clusterer.testing import running_clusterer
    from services.embedder.testing import running_embedder
    from services.labelstore.testing import running_labelstore

    collection_prefix = f"e2e{redis_prefix.replace('-', '')[-10:]}_"
    async with (
        running_embedder(e2e_model_dir) as embedder,
        running_labelstore(milvus_server_uri, collection_prefix=collection_prefix) as labelstore,
        running_clusterer(labelstore, tmp_path / "artifacts") as clusterer,
    ):
        settings = gateway_settings(
            redis_url, redis_prefix, embedder_addr=embedder, labelstore_addr=labelstore,
            clusterer_addr=clusterer.address, allowed_roots=str(cifar_subset), worker_batch_size=16,
            embed_batch_size=16, claim_idle_seconds=3.0, queue_wait_seconds=30.0,
        )
        workers = make_workers(workers_factory, settings, tmp_path / "logs")
        try:
            async with running_gateway(settings) as gateway:
                yield Stack(gateway.address, settings, workers, labelstore, cifar_subset)
        finally:
            workers.stop()
            clean_redis(redis_url, redis_prefix)
