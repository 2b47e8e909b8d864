"""Redis for local runs: the machine's own at 127.0.0.1:6379 when reachable, else a private redis-server
(installed from Debian when absent) with AOF on, so job streams survive a restart."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import redis

from tagalong.devstack.debian import apt_install


def reachable(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=1).ping())
    except (redis.exceptions.RedisError, OSError):
        return False


def ensure_binary() -> str:
    """Path of redis-server; installs Debian's package when it is missing."""
    found = shutil.which("redis-server")
    if found:
        return found
    apt_install("redis-server", "redis-server not found")
    found = shutil.which("redis-server")
    if not found:
        raise RuntimeError("redis-server still missing after apt-get install")
    return found


def start_private(data_dir: Path, port: int, timeout: float = 20.0) -> int:
    """Start a daemonized redis-server on 127.0.0.1:port with AOF; returns its pid."""
    binary = ensure_binary()
    data_dir.mkdir(parents=True, exist_ok=True)
    pidfile = data_dir / "redis.pid"
    logfile = data_dir / "redis.log"
    subprocess.run(
        [binary, "--daemonize", "yes", "--bind", "127.0.0.1", "--port", str(port), "--dir", str(data_dir),
         "--appendonly", "yes", "--pidfile", str(pidfile), "--logfile", str(logfile), "--save", ""],
        check=True,
    )
    url = f"redis://127.0.0.1:{port}/0"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if reachable(url) and pidfile.exists():
            return int(pidfile.read_text().strip())
        time.sleep(0.1)
    raise RuntimeError(f"redis-server did not answer on port {port}; see {logfile}")
