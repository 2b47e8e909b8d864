"""Nothing is lost across a restart of the label store, nor of the Milvus server; bad Milvus -> exit 2."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from grpc import aio

from services.labelstore.servicer import LabelStoreService
from services.labelstore.settings import LabelStoreSettings
from services.labelstore.testing import running_labelstore
from tagalong.devstack import milvus_server
from tagalong.runtime import vectors
from tagalong.runtime.settings import SettingError
from tagalong.v1 import common_pb2 as c
from tagalong.v1 import labelstore_pb2 as pb
from tagalong.v1 import labelstore_pb2_grpc
from tests.fixtures.labelstore import unique_prefix

ROOT = Path(__file__).resolve().parents[2]
DIM = 8
T = 60
V = np.random.default_rng(7).standard_normal((20, DIM)).astype(np.float32)


async def write_some(address: str) -> list[int]:
    async with aio.insecure_channel(address) as ch:
        stub = labelstore_pb2_grpc.LabelStoreStub(ch)
        await stub.EnsureDataset(pb.EnsureDatasetRequest(name="kept", dim=DIM, model_id="m-1"), timeout=T)
        up = await stub.Upsert(pb.UpsertRequest(dataset="kept", items=[
            pb.UpsertItem(id=1000 + i, vector=vectors.to_proto(V[i]), uri=f"u/{i}", label="cat" if i == 0 else "")
            for i in range(20)]), timeout=T)
        await stub.SetLabels(pb.SetLabelsRequest(dataset="kept", assignments=[pb.LabelAssignment(
            id=1005, label="dog", source=c.LABEL_SOURCE_PROPAGATED, confidence=0.75, round_id="r1")]), timeout=T)
        return list(up.ids)


async def check_all_there(address: str) -> None:
    async with aio.insecure_channel(address) as ch:
        stub = labelstore_pb2_grpc.LabelStoreStub(ch)
        listed = await stub.ListDatasets(pb.ListDatasetsRequest(), timeout=T)
        (info,) = listed.datasets
        assert (info.name, info.dim, info.model_id, info.count) == ("kept", DIM, "m-1", 20)
        again = await stub.EnsureDataset(pb.EnsureDatasetRequest(name="kept", dim=DIM, model_id="m-1"), timeout=T)
        assert not again.created
        got = await stub.Get(pb.GetRequest(dataset="kept", ids=[1000, 1005]), timeout=T)
        by_id = {r.id: r for r in got.records}
        assert (by_id[1000].label, by_id[1000].label_source) == ("cat", c.LABEL_SOURCE_HUMAN)
        assert (by_id[1005].label, by_id[1005].label_source, by_id[1005].round_id) == (
            "dog", c.LABEL_SOURCE_PROPAGATED, "r1")
        hits = await stub.Search(pb.SearchRequest(dataset="kept", queries=[vectors.to_proto(V[9])], top_k=1), timeout=T)
        assert hits.results[0].hits[0].id == 1009


async def test_service_restart_keeps_datasets_rows_and_labels(milvus_uri: str) -> None:
    prefix = unique_prefix()
    async with running_labelstore(milvus_uri, collection_prefix=prefix) as address:
        await write_some(address)
    async with running_labelstore(milvus_uri, collection_prefix=prefix) as address:
        await check_all_there(address)
        async with aio.insecure_channel(address) as ch:
            await labelstore_pb2_grpc.LabelStoreStub(ch).DropDataset(pb.DropDatasetRequest(name="kept"), timeout=T)


def restart(data_dir: Path, attempts: int = 4) -> milvus_server.MilvusHandle:
    """Start Milvus again on the same data. A fresh port (the old one may linger in TIME_WAIT); and retries,
    because Milvus 2.3 panics at start while its previous run's sessions are still registered in etcd."""
    for attempt in range(attempts):
        try:
            return milvus_server.start(data_dir)
        except RuntimeError:
            if attempt == attempts - 1:
                raise
            time.sleep(20)
    raise AssertionError("unreachable")


@pytest.mark.slow
@pytest.mark.milvus_server
async def test_milvus_server_restart_keeps_everything(tmp_path: Path) -> None:
    handle = milvus_server.start(tmp_path / "milvus")
    try:
        async with running_labelstore(handle.uri) as address:
            await write_some(address)
        milvus_server.stop(handle, term_wait=60)
        handle = restart(tmp_path / "milvus")
        async with running_labelstore(handle.uri) as address:
            await check_all_there(address)
    finally:
        milvus_server.stop(handle, term_wait=10)


async def test_unreachable_milvus_is_a_setting_error() -> None:
    uri = f"http://127.0.0.1:{milvus_server.free_port()}"
    service = LabelStoreService(LabelStoreSettings(milvus_uri=uri, connect_timeout_seconds=1))
    with pytest.raises(SettingError) as err:
        await service.start()
    assert err.value.env_var == "TAGALONG_LABELSTORE_MILVUS_URI" and "cannot reach" in err.value.problem


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        pytest.param("http://127.0.0.1:{port}", "bad setting TAGALONG_LABELSTORE_MILVUS_URI: cannot reach", id="down"),
        pytest.param("/tmp/not-a-db-file", "bad setting TAGALONG_LABELSTORE_MILVUS_URI=", id="not-db"),
    ],
)
def test_process_exits_2_with_one_line(uri: str, expected: str) -> None:
    env = dict(os.environ, TAGALONG_LABELSTORE_MILVUS_URI=uri.format(port=milvus_server.free_port()),
               TAGALONG_LABELSTORE_CONNECT_TIMEOUT_SECONDS="1", TAGALONG_LABELSTORE_PORT="0",
               TAGALONG_LOG_FORMAT="text", TAGALONG_LOG_LEVEL="ERROR", PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-m", "services.labelstore"], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2
    lines = [x for x in proc.stderr.splitlines() if x.startswith("tagalong-labelstore:")]
    assert len(lines) == 1 and expected in lines[0], proc.stderr
