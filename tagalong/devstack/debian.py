"""Installing a missing Debian package on a fresh machine (Redis, the Fashion-MNIST data set)."""

from __future__ import annotations

import os
import shutil
import subprocess


def apt_install(package: str, why: str) -> None:
    """`apt-get update && apt-get install -y package`, as root; RuntimeError saying what to run otherwise."""
    apt = shutil.which("apt-get")
    if apt is None or os.geteuid() != 0:
        raise RuntimeError(f"{why}: install Debian's {package} (apt-get install -y {package})")
    print(f"{why}: installing it from Debian (apt-get install {package})", flush=True)
    subprocess.run([apt, "update", "-qq"], check=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run([apt, "install", "-y", "-qq", package], check=True, env=env)
