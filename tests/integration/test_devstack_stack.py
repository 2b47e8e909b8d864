"""`make up` / `make down` (python -m tagalong.devstack): every component up and SERVING only when
ready, reflection on each service, nothing left behind; bad settings fail with one clear line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from tagalong.devstack.milvus_server import free_port

ROOT = Path(__file__).resolve().parents[2]
SERVICES = {"gateway": "Gateway", "embedder": "Embedder", "labelstore": "LabelStore", "clusterer": "Clusterer"}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split()[2] == "Z")


def _reflected_services(address: str) -> set[str]:
    with grpc.insecure_channel(address) as ch:
        stub = reflection_pb2_grpc.ServerReflectionStub(ch)
        replies = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
                                            timeout=10)
        return {s.name for reply in replies for s in reply.list_services_response.service}


def test_up_serves_every_component_and_down_leaves_nothing(tmp_path: Path, redis_url: str,
                                                           clip_model_dir: Path) -> None:
    ports = {name: free_port() for name in SERVICES}
    env = {**os.environ, "TAGALONG_VAR_DIR": str(tmp_path / "var"), "TAGALONG_REDIS_URL": redis_url,
           "TAGALONG_EMBEDDER_MODEL_DIR": str(clip_model_dir), "TAGALONG_MILVUS_PORT": str(free_port()),
           "TAGALONG_WORKERS": "1", "TAGALONG_LOG_FORMAT": "text"}
    env.update({f"TAGALONG_{name.upper()}_PORT": str(port) for name, port in ports.items()})
    run = [sys.executable, "-m", "tagalong.devstack"]
    up = subprocess.run([*run, "up"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=400)
    state_file = tmp_path / "var" / "run" / "stack.json"
    state = json.loads(state_file.read_text()) if state_file.exists() else {}
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        for name, service in SERVICES.items():
            address = f"127.0.0.1:{ports[name]}"
            with grpc.insecure_channel(address) as ch:
                reply = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
                assert reply.status == health_pb2.HealthCheckResponse.SERVING, name
                named = health_pb2_grpc.HealthStub(ch).Check(
                    health_pb2.HealthCheckRequest(service=f"tagalong.v1.{service}"), timeout=5)
                assert named.status == health_pb2.HealthCheckResponse.SERVING, name
            assert f"tagalong.v1.{service}" in _reflected_services(address)
        assert state["addresses"]["milvus"].startswith("http://127.0.0.1:")
    finally:
        down = subprocess.run([*run, "down"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert down.returncode == 0, down.stdout + down.stderr
    pids = list(state.get("processes", {}).values())
    milvus_pidfile = tmp_path / "var" / "milvus" / "milvus.pid"
    assert pids, "up recorded no processes"
    assert not [pid for pid in pids if _alive(pid)]
    assert not milvus_pidfile.exists()
    leftover = subprocess.run(["pgrep", "-f", str(tmp_path / "var" / "milvus")], capture_output=True, text=True)
    assert leftover.stdout.strip() == "", "a milvus process outlived `down`"


@pytest.mark.parametrize("service", ["gateway", "embedder", "labelstore", "clusterer"])
def test_bad_port_is_one_line_naming_the_setting(service: str) -> None:
    module = "gateway" if service == "gateway" else f"services.{service}"
    env = {**os.environ, f"TAGALONG_{service.upper()}_PORT": "fifty"}
    proc = subprocess.run([sys.executable, "-m", module], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert f"TAGALONG_{service.upper()}_PORT" in lines[0]


def test_unreachable_milvus_is_one_line_naming_the_setting() -> None:
    env = {**os.environ, "TAGALONG_LABELSTORE_MILVUS_URI": f"http://127.0.0.1:{free_port()}",
           "TAGALONG_LABELSTORE_PORT": str(free_port()), "TAGALONG_LOG_LEVEL": "ERROR"}
    proc = subprocess.run([sys.executable, "-m", "services.labelstore"], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert "TAGALONG_LABELSTORE_MILVUS_URI" in last, proc.stderr
