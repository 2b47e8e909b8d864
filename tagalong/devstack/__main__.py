"""`python -m tagalong.devstack up|down|status|models`: the local stack as plain processes.

Everything is configurable through the environment (see README's configuration table):
TAGALONG_VAR_DIR (var), TAGALONG_REDIS_URL, TAGALONG_MILVUS_PORT (19530), TAGALONG_MILVUS_URI
(set it to use an existing Milvus or a Lite path instead of starting a server), the service ports
TAGALONG_{GATEWAY,EMBEDDER,LABELSTORE,CLUSTERER}_PORT, TAGALONG_WORKERS (worker processes),
TAGALONG_EMBEDDER_MODEL_DIR (model folder; default: the exported EfficientNet-Lite0).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tagalong.devstack import milvus_server, redis_server

ROOT = Path(__file__).resolve().parents[2]
VAR = Path(os.environ.get("TAGALONG_VAR_DIR", ROOT / "var")).resolve()
STATE = VAR / "run" / "stack.json"
LOGS = VAR / "log"

DEFAULT_PORTS = {"gateway": 50050, "embedder": 50051, "labelstore": 50052, "clusterer": 50053}
DEFAULT_MODEL = VAR / "models" / "efficientnet-lite0"


def _port(name: str) -> int:
    raw = os.environ.get(f"TAGALONG_{name.upper()}_PORT", str(DEFAULT_PORTS[name]))
    if not raw.isdigit():
        sys.exit(f"devstack: bad setting TAGALONG_{name.upper()}_PORT={raw!r}: not a port number")
    return int(raw)


def wait_serving(address: str, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> bool:
    """Poll grpc.health.v1 Check until SERVING (False when the process died or time ran out)."""
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                return False
            with contextlib.suppress(grpc.RpcError):
                reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return True
            time.sleep(0.2)
    return False


def _load_state() -> dict:
    try:
        return json.loads(STATE.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def _save_state(state: dict) -> None:
    STATE.parent.mkdir(parents=True, exist_ok=True)
    STATE.write_text(json.dumps(state, indent=2))


def _spawn(name: str, module: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
    LOGS.mkdir(parents=True, exist_ok=True)
    log = open(LOGS / f"{name}.log", "ab")  # noqa: SIM115 - handed to the child
    return subprocess.Popen(
        [sys.executable, "-m", module], env=env, stdout=log, stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL, start_new_session=True, cwd=ROOT,
    )


def _fail(component: str, log: Path, state: dict) -> None:
    print(f"devstack: {component} failed to start; see {log}", file=sys.stderr)
    _save_state(state)
    down()
    sys.exit(1)


def ensure_models() -> Path:
    """The model folder the embedder serves; exports EfficientNet-Lite0 on first use."""
    configured = os.environ.get("TAGALONG_EMBEDDER_MODEL_DIR")
    if configured:
        return Path(configured)
    if not (DEFAULT_MODEL / "manifest.json").exists():
        print(f"exporting EfficientNet-Lite0 to {DEFAULT_MODEL} (first run only)")
        subprocess.run(
            [sys.executable, "-m", "services.embedder.export", "efficientnet-lite0", "--out", str(DEFAULT_MODEL)],
            check=True, cwd=ROOT,
        )
    return DEFAULT_MODEL


def up() -> None:
    state = _load_state()
    if state.get("processes"):
        print("devstack: already up (make down first); `make status` shows it")
        return
    state = {"processes": {}, "addresses": {}}
    # Redis
    redis_url = os.environ.get("TAGALONG_REDIS_URL", "redis://127.0.0.1:6379/0")
    if redis_server.reachable(redis_url):
        print(f"redis: using the one at {redis_url}")
    else:
        port = int(os.environ.get("TAGALONG_REDIS_PORT", "6380"))
        try:
            pid = redis_server.start_private(VAR / "redis", port)
        except Exception as err:  # noqa: BLE001 - reported with its log
            print(f"devstack: redis failed to start ({err}); see {VAR / 'redis' / 'redis.log'}", file=sys.stderr)
            sys.exit(1)
        redis_url = f"redis://127.0.0.1:{port}/0"
        state["processes"]["redis"] = pid
        print(f"redis: started a private redis-server at {redis_url} (pid {pid})")
    state["addresses"]["redis"] = redis_url
    # Milvus
    milvus_uri = os.environ.get("TAGALONG_MILVUS_URI", "")
    if not milvus_uri:
        try:
            handle = milvus_server.start(VAR / "milvus", int(os.environ.get("TAGALONG_MILVUS_PORT", "19530")))
        except Exception as err:  # noqa: BLE001
            _fail(f"milvus ({err})", VAR / "milvus" / "logs" / "milvus-stderr.log", state)
        milvus_uri = handle.uri
        state["milvus_dir"] = str(handle.data_dir)
        print(f"milvus: standalone server at {milvus_uri} (pid {handle.pid})")
    state["addresses"]["milvus"] = milvus_uri
    model_dir = ensure_models()
    addr = {name: f"127.0.0.1:{_port(name)}" for name in DEFAULT_PORTS}
    env = dict(os.environ)
    env.update(
        TAGALONG_REDIS_URL=redis_url,
        TAGALONG_LABELSTORE_MILVUS_URI=milvus_uri,
        TAGALONG_EMBEDDER_MODEL_DIR=str(model_dir),
        TAGALONG_CLUSTERER_LABELSTORE_ADDR=addr["labelstore"],
        TAGALONG_CLUSTERER_ARTIFACT_DIR=str(VAR / "artifacts"),
        TAGALONG_GATEWAY_EMBEDDER_ADDR=addr["embedder"],
        TAGALONG_GATEWAY_LABELSTORE_ADDR=addr["labelstore"],
        TAGALONG_GATEWAY_CLUSTERER_ADDR=addr["clusterer"],
        TAGALONG_LOG_FORMAT=os.environ.get("TAGALONG_LOG_FORMAT", "json"),
    )
    for name in DEFAULT_PORTS:
        env[f"TAGALONG_{name.upper()}_PORT"] = str(_port(name))
    for name, module in (("embedder", "services.embedder"), ("labelstore", "services.labelstore"),
                         ("clusterer", "services.clusterer"), ("gateway", "gateway")):
        proc = _spawn(name, module, env)
        state["processes"][name] = proc.pid
        if not wait_serving(addr[name], timeout=180, proc=proc):
            _fail(name, LOGS / f"{name}.log", state)
        print(f"{name}: SERVING at {addr[name]} (pid {proc.pid})")
    for i in range(int(os.environ.get("TAGALONG_WORKERS", "2"))):
        proc = _spawn(f"worker-{i}", "gateway.worker", env)
        state["processes"][f"worker-{i}"] = proc.pid
        print(f"worker-{i}: started (pid {proc.pid}); log {LOGS / f'worker-{i}.log'}")
    state["addresses"].update(addr)
    _save_state(state)
    print(f"tagalong is up: gateway at {addr['gateway']}; logs in {LOGS}")


def _stop_pid(pid: int, wait: float = 15.0) -> None:
    for sig, limit in ((signal.SIGTERM, wait), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        except PermissionError:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.1)


def down() -> None:
    state = _load_state()
    processes: dict[str, int] = state.get("processes", {})
    # Workers and the gateway first, Redis last.
    order = sorted(processes, key=lambda n: (n == "redis", not n.startswith("worker"), n != "gateway"))
    for name in order:
        if name == "redis":
            with contextlib.suppress(Exception):
                import redis as redis_lib

                redis_lib.Redis.from_url(state["addresses"]["redis"]).shutdown(nosave=False)
        _stop_pid(processes[name])
        print(f"{name}: stopped")
    milvus_dir = state.get("milvus_dir")
    if milvus_dir:
        handle = milvus_server.read_pidfile(Path(milvus_dir))
        if handle is not None:
            milvus_server.stop(handle)
        print("milvus: stopped")
    with contextlib.suppress(FileNotFoundError):
        STATE.unlink()
    if not processes and not milvus_dir:
        print("devstack: nothing was running")


def status() -> None:
    state = _load_state()
    if not state:
        print("devstack: down")
        return
    for name, pid in state.get("processes", {}).items():
        alive = True
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            alive = False
        print(f"{name:12s} pid {pid:<8d} {'running' if alive else 'DEAD'}")
    for name, address in state.get("addresses", {}).items():
        print(f"{name:12s} {address}")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tagalong.devstack", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["up", "down", "status", "models"])
    args = parser.parse_args()
    {"up": up, "down": down, "status": status, "models": ensure_models}[args.command]()


if __name__ == "__main__":
    main()
