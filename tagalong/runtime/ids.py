"""Content-derived ids: the same image bytes always get the same row id (idempotent ingest)."""

from __future__ import annotations

import hashlib

_ID_MASK = (1 << 63) - 1


def content_sha256(data: bytes) -> str:
    """Hex sha256 of the bytes."""
    return hashlib.sha256(data).hexdigest()


def id_from_sha256(hex_digest: str) -> int:
    """A positive int64 id: the first 63 bits of the digest (0 is mapped to 1; 0 means "unset")."""
    if len(hex_digest) != 64:
        raise ValueError(f"expected a 64-character hex sha256, got {len(hex_digest)} characters")
    value = int(hex_digest[:16], 16) & _ID_MASK
    return value or 1


def content_id(data: bytes) -> int:
    """Row id of an image's bytes."""
    return id_from_sha256(content_sha256(data))
