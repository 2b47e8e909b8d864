"""A real Milvus standalone server from the PyPI `milvus` package, bound to loopback only.

The wrapper renders a config whose `ip:` entries are empty (Milvus then registers at the machine's
non-loopback address); we set every one to 127.0.0.1 so that all its traffic stays on loopback. We
launch the `milvus run standalone` binary ourselves in its own session with a pidfile, because the
wrapper's child outlives it and its __del__ would kill it at the wrong time. Stopping sends SIGTERM,
waits, then SIGKILL (SIGTERM once took over 45 s).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

_IP_LINE = re.compile(r"^(\s*)ip:\s*(#.*)?$")


@dataclass
class MilvusHandle:
    """A running (or stopped) Milvus server."""

    data_dir: Path
    port: int
    health_port: int
    pid: int

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_file(self) -> Path:
        return self.data_dir / "logs" / "milvus-stderr.log"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def loopback_config(text: str) -> str:
    """Every `ip:` entry of a rendered milvus.yaml set to 127.0.0.1."""
    return "\n".join(_IP_LINE.sub(r"\g<1>ip: 127.0.0.1", line) for line in text.splitlines()) + "\n"


def embedded_etcd_config(client_port: int, peer_port: int) -> str:
    """Embedded etcd on loopback with its own ports: its peer port is otherwise fixed at 2380, so a
    second server on the machine (make up beside make test) would fail to start."""
    client, peer = f"http://127.0.0.1:{client_port}", f"http://127.0.0.1:{peer_port}"
    return (
        f"name: default\nlisten-client-urls: {client}\nadvertise-client-urls: {client}\n"
        f"listen-peer-urls: {peer}\ninitial-advertise-peer-urls: {peer}\n"
        f"initial-cluster: default={peer}\n"
    )


def _etcd_ports(data_dir: Path) -> tuple[int, int]:
    """The embedded etcd's client and peer ports: chosen once per data dir and reused on every restart
    (etcd records its member's peer URL; a restart must not move it). Free ports, not the wrapper's
    first-free-from-2379 scan, which two servers starting at once could both pick."""
    record = data_dir / "configs" / "etcd-ports.json"
    try:
        ports = json.loads(record.read_text())
        return int(ports["client"]), int(ports["peer"])
    except (FileNotFoundError, ValueError, KeyError):
        client, peer = free_port(), free_port()
        while peer == client:
            peer = free_port()
        record.parent.mkdir(parents=True, exist_ok=True)
        record.write_text(json.dumps({"client": client, "peer": peer}))
        return client, peer


def _prepare(data_dir: Path, port: int) -> Path:
    """Render the config (loopback only) and unpack the binaries; returns the milvus executable."""
    import milvus  # the PyPI server package; imported late so serving code never needs it

    etcd_client, etcd_peer = _etcd_ports(data_dir)
    # The etcd port goes into the rendered config below, not through the wrapper: the wrapper test-binds
    # every port it is given without SO_REUSEADDR, which fails for a port just released by a restart.
    config = milvus.MilvusServerConfig(data_dir=str(data_dir), proxy_port=port)
    record = data_dir / "configs" / "component-ports.json"
    try:
        ports = {str(k): int(v) for k, v in json.loads(record.read_text()).items()}
    except (FileNotFoundError, ValueError, AttributeError):
        ports = {}
    if ports:
        # A restart on this data dir: every coordinator and node keeps its port. The wrapper's scan would move
        # ports still in TIME_WAIT, and the new proxy would then follow the previous run's sessions (still
        # live in etcd for their TTL) to a port another component now owns, and abort ("unknown service
        # milvus.proto.query.QueryCoord"), as seen on a Milvus restart in the fault benchmark.
        for key, value in ports.items():
            if key in config.configurable_items:
                config.configurable_items[key][1] = value
        config.configurable_items["proxy_port"][1] = port
        config.resolve_storage()
        config.write_config()
    else:
        config.resolve()
        ports = {k: int(v[1]) for k, v in config.configurable_items.items() if k.endswith("_port") and k != "etcd_port"}
        record.parent.mkdir(parents=True, exist_ok=True)
        record.write_text(json.dumps(ports))
    milvus._initialize_data_files(config.base_data_dir)
    etcd_file = data_dir / "configs" / "embedEtcd.yaml"
    etcd_file.write_text(embedded_etcd_config(etcd_client, etcd_peer))
    cfg_file = data_dir / "configs" / "milvus.yaml"
    text = loopback_config(cfg_file.read_text())
    text = re.sub(r"^(etcd:\n  endpoints: )\S+", rf"\g<1>127.0.0.1:{etcd_client}", text, count=1, flags=re.M)
    text = text.replace("  use:\n    embed: true", f"  config:\n    path: {etcd_file}\n  use:\n    embed: true", 1)
    cfg_file.write_text(text)
    return data_dir / "bin" / "milvus"


def start(data_dir: Path, port: int = 0, timeout: float = 180.0) -> MilvusHandle:
    """Start the server and wait until /healthz says OK. Raises RuntimeError naming the log on failure."""
    data_dir = data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    exe = _prepare(data_dir, port)
    health_port = free_port()
    env = dict(os.environ)
    env.update(
        DEPLOY_MODE="STANDALONE",
        METRICS_PORT=str(health_port),
        MILVUS_RUN_DIR=str(data_dir / "run"),
        LD_LIBRARY_PATH=f"{exe.parent}:{os.environ.get('LD_LIBRARY_PATH', '')}",
    )
    logs = data_dir / "logs"
    logs.mkdir(exist_ok=True)
    with open(logs / "milvus-stdout.log", "ab") as out, open(logs / "milvus-stderr.log", "ab") as err:
        proc = subprocess.Popen(
            [str(exe), "run", "standalone"], cwd=data_dir, env=env, stdout=out, stderr=err,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )
    handle = MilvusHandle(data_dir=data_dir, port=port, health_port=health_port, pid=proc.pid)
    (data_dir / "milvus.pid").write_text(f"{proc.pid} {port} {health_port}\n")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"milvus exited with status {proc.returncode}; see {handle.log_file}")
        if is_healthy(health_port):
            return handle
        time.sleep(0.5)
    stop(handle)
    raise RuntimeError(f"milvus not healthy after {timeout:.0f}s; see {handle.log_file}")


def is_healthy(health_port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{health_port}/healthz", timeout=2) as resp:
            return b"OK" in resp.read()
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child of ours counts as gone once reaped.
    with contextlib.suppress(ChildProcessError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    return True


def stop(handle: MilvusHandle, term_wait: float = 20.0) -> None:
    """SIGTERM the server's process group, wait, then SIGKILL whatever is left."""
    stop_pid(handle.pid, term_wait)
    with contextlib.suppress(FileNotFoundError):
        (handle.data_dir / "milvus.pid").unlink()


def stop_pid(pid: int, term_wait: float = 20.0) -> None:
    for sig, wait in ((signal.SIGTERM, term_wait), (signal.SIGKILL, 10.0)):
        if not _alive(pid):
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.2)


def read_pidfile(data_dir: Path) -> MilvusHandle | None:
    try:
        pid, port, health = (int(x) for x in (data_dir / "milvus.pid").read_text().split())
    except (FileNotFoundError, ValueError):
        return None
    return MilvusHandle(data_dir=data_dir.resolve(), port=port, health_port=health, pid=pid)
