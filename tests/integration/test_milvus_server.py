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


def _component_ports(rendered: str) -> dict[str, str]:
    """`<section>.port` of every component in a rendered milvus.yaml."""
    out: dict[str, str] = {}
    section = ""
    for line in rendered.splitlines():
        if line and not line.startswith((" ", "#")) and line.endswith(":"):
            section = line[:-1]
        elif line.startswith("  port:"):
            out[section] = line.split(":", 1)[1].strip()
    return out


def test_kill9_restart_keeps_every_component_port_and_the_data(tmp_path: Path) -> None:
    """A restart right after kill -9, as in the fault benchmark: the previous run's sessions are still live
    in etcd, so every coordinator and node must come back on its old port (the wrapper's port scan used to
    move ports still in TIME_WAIT, and the new proxy aborted following a stale session)."""
    handle = milvus_server.start(tmp_path / "milvus")
    try:
        before = _component_ports((handle.data_dir / "configs" / "milvus.yaml").read_text())
        client = MilvusClient(handle.uri)
        client.create_collection("smoke", dimension=8, consistency_level="Strong")
        vectors = np.random.default_rng(1).standard_normal((30, 8)).astype(np.float32)
        client.insert("smoke", [{"id": i, "vector": v.tolist()} for i, v in enumerate(vectors)])
        client.flush("smoke")
        client.close()
        milvus_server.stop_pid(handle.pid, term_wait=0.1)  # SIGTERM, then SIGKILL almost at once
        handle = milvus_server.start(tmp_path / "milvus", handle.port)
        after = _component_ports((handle.data_dir / "configs" / "milvus.yaml").read_text())
        assert len(before) >= 6 and after == before
        client = MilvusClient(handle.uri)
        client.load_collection("smoke")
        rows = client.query("smoke", filter="id >= 0", output_fields=["id"], consistency_level="Strong")
        assert sorted(r["id"] for r in rows) == list(range(30))
        client.close()
    finally:
        milvus_server.stop(handle, term_wait=10)
