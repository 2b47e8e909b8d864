"""A real Clusterer server on a free port, for tests of this and other parts (e.g. the gateway's e2e tests)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from services.clusterer.servicer import ClustererService
from services.clusterer.settings import ClustererSettings
from tagalong.runtime.server import RunningServer, run_server


@contextlib.asynccontextmanager
async def running_clusterer(
    labelstore_addr: str, artifact_dir: str | Path, **overrides: Any
) -> AsyncIterator[RunningServer]:
    """Start a clusterer talking to `labelstore_addr`; yields the running server (`.address` to connect)."""
    settings = ClustererSettings(
        labelstore_addr=labelstore_addr, artifact_dir=Path(artifact_dir), log_format="text", port=0,
        grace_seconds=1.0, **overrides,
    )
    async with run_server(ClustererService(settings), settings) as running:
        yield running
