"""The real Milvus standalone server that `make up` and the tests start: loopback only, stoppable."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from pymilvus import MilvusClient

from tagalong.devstack import milvus_server


def test_server_registers_on_loopback_serves_and_stops(tmp_path: Path) -> None:
    handle = milvus_server.start(tmp_path / "milvus")
    try:
        rendered = (handle.data_dir / "configs" / "milvus.yaml").read_text()
        ips = [line.strip() for line in rendered.splitlines() if line.strip().startswith("ip:")]
        assert ips and set(ips) == {"ip: 127.0.0.1"}
        client = MilvusClient(handle.uri)
        client.create_collection("smoke", dimension=8, consistency_level="Strong")
        vectors = np.random.default_rng(0).standard_normal((20, 8)).astype(np.float32)
        client.insert("smoke", [{"id": i, "vector": v.tolist()} for i, v in enumerate(vectors)])
        hits = client.search("smoke", data=[vectors[3].tolist()], limit=1)
        assert hits[0][0]["id"] == 3
        client.close()
    finally:
        milvus_server.stop(handle, term_wait=10)
    # No process is left behind.
    try:
        os.kill(handle.pid, 0)
        alive = True
    except ProcessLookupError:
        alive = False
    assert not alive
    assert milvus_server.read_pidfile(handle.data_dir) is None
