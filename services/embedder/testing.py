"""Helpers for other parts' tests: a real embedder server on a free port."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from services.embedder.servicer import EmbedderService
from services.embedder.settings import EmbedderSettings
from tagalong.runtime.server import RunningServer, run_server


@contextlib.asynccontextmanager
async def running_embedder_server(model_dir: Path, **settings: Any) -> AsyncIterator[RunningServer]:
    """A started embedder (model loaded, warmed up, SERVING) on a free port; yields the RunningServer."""
    settings.setdefault("log_format", "text")
    settings.setdefault("grace_seconds", 0.5)
    config = EmbedderSettings(model_dir=Path(model_dir), **settings)
    async with run_server(EmbedderService(config), config) as running:
        yield running


@contextlib.asynccontextmanager
async def running_embedder(model_dir: Path, **settings: Any) -> AsyncIterator[str]:
    """The same, yielding only the address ('127.0.0.1:PORT')."""
    async with running_embedder_server(model_dir, **settings) as running:
        yield running.address
