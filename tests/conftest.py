"""Shared fixtures: real Redis, real Milvus (Lite and the standalone server), free ports."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tagalong.devstack import milvus_server, redis_server

ROOT = Path(__file__).resolve().parent.parent
# Each part's own fixtures live beside the others, registered here once.
pytest_plugins = [
    "tests.fixtures.embedder",
    "tests.fixtures.labelstore",
    "tests.fixtures.clusterer",
    "tests.fixtures.gateway",
]

DATASETS = Path(os.environ.get("TAGALONG_DATASETS_DIR", ROOT.parent / "shared" / "datasets"))


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Redis: the machine's one when reachable, else a private redis-server for the session."""
    url = os.environ.get("TAGALONG_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
    if redis_server.reachable(url):
        yield url
        return
    port = milvus_server.free_port()
    pid = redis_server.start_private(tmp_path_factory.mktemp("redis"), port)
    yield f"redis://127.0.0.1:{port}/0"
    milvus_server.stop_pid(pid, term_wait=5)


@pytest.fixture()
def redis_prefix() -> str:
    """A key prefix unique to the test so tests never see each other's keys."""
    return f"test-{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="session")
def milvus_server_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Milvus standalone server (PyPI `milvus`) on loopback, one per test session."""
    uri = os.environ.get("TAGALONG_TEST_MILVUS_URI")
    if uri:
        yield uri
        return
    handle = milvus_server.start(tmp_path_factory.mktemp("milvus"))
    yield handle.uri
    milvus_server.stop(handle, term_wait=10)


@pytest.fixture()
def milvus_lite_uri(tmp_path: Path) -> str:
    """A fresh Milvus Lite database file."""
    return str(tmp_path / "lite.db")


@pytest.fixture(params=["lite", "server"])
def milvus_uri(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Parametrised over both stores: Milvus Lite and the real standalone server."""
    if request.param == "lite":
        return str(tmp_path / "lite.db")
    return str(request.getfixturevalue("milvus_server_uri"))


@pytest.fixture(scope="session")
def cifar_test_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The CIFAR-10 test JPEGs (test/<class>/NNNN.jpg), unpacked once per session."""
    import tarfile

    archive = DATASETS / "cifar10-test-jpg.tar.gz"
    if not archive.exists():
        pytest.fail(f"missing {archive}: the shared datasets folder must sit beside the checkout")
    out = tmp_path_factory.mktemp("cifar")
    with tarfile.open(archive) as tar:
        tar.extractall(out, filter="data")
    candidates = [p for p in out.rglob("test") if p.is_dir()]
    return candidates[0] if candidates else out
