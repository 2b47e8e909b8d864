"""Test helper for other parts: a real label store server on a free port, against a given Milvus."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from services.labelstore.servicer import LabelStoreService
from services.labelstore.settings import LabelStoreSettings
from tagalong.runtime.server import run_server


@contextlib.asynccontextmanager
async def running_labelstore(milvus_uri: str, **settings: Any) -> AsyncIterator[str]:
    """`async with running_labelstore(milvus_uri) as address:` a SERVING label store at address.

    Extra keyword arguments are LabelStoreSettings fields (e.g. collection_prefix, index_type).
    """
    settings.setdefault("log_format", "text")
    cfg = LabelStoreSettings(milvus_uri=milvus_uri, **settings)
    async with run_server(LabelStoreService(cfg), cfg) as running:
        yield running.address
