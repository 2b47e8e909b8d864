"""Request building shared by the blocking and asyncio clients (no I/O beyond reading local files)."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import grpc

from tagalong.v1 import common_pb2, gateway_pb2

DEFAULT_ADDRESS = os.environ.get("TAGALONG_ADDRESS", "127.0.0.1:50050")
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"})
TERMINAL_STATES = frozenset({gateway_pb2.JOB_STATE_SUCCEEDED, gateway_pb2.JOB_STATE_PARTIAL,
                             gateway_pb2.JOB_STATE_FAILED})

EXPORT_FORMATS = {
    "jsonl": common_pb2.EXPORT_FORMAT_JSONL,
    "csv": common_pb2.EXPORT_FORMAT_CSV,
    "coco": common_pb2.EXPORT_FORMAT_COCO,
    "label-studio": common_pb2.EXPORT_FORMAT_LABEL_STUDIO,
    "label_studio": common_pb2.EXPORT_FORMAT_LABEL_STUDIO,
}
PROJECTION_METHODS = {
    "pca": common_pb2.PROJECTION_METHOD_PCA,
    "tsne": common_pb2.PROJECTION_METHOD_TSNE,
    "umap": common_pb2.PROJECTION_METHOD_UMAP,
}

# What an ingest item may be: bytes, a local file (uploaded), or a ready IngestItem (e.g. a server path).
ItemLike = bytes | str | Path | gateway_pb2.IngestItem | tuple[bytes | str | Path, str]


class TagalongError(Exception):
    """A failed call: the gRPC status code and the server's message."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details

    @classmethod
    def of(cls, err: grpc.RpcError) -> TagalongError:
        code = err.code() if hasattr(err, "code") else grpc.StatusCode.UNKNOWN
        details = err.details() if hasattr(err, "details") else str(err)
        return cls(code, details or code.name)


class JobFailedError(Exception):
    """wait() saw the job end in JOB_STATE_FAILED."""

    def __init__(self, job: gateway_pb2.Job) -> None:
        super().__init__(f"job {job.id} failed: {job.error}")
        self.job = job


MAX_RESUMES = 8


def resumable(err: grpc.RpcError, failures: int) -> bool:
    """Whether a cut WatchJob stream is worth opening again (UNAVAILABLE, a few times in a row at most)."""
    code = err.code() if hasattr(err, "code") else None
    return code == grpc.StatusCode.UNAVAILABLE and failures <= MAX_RESUMES


def backoff(failures: int) -> float:
    return min(0.2 * 2 ** (failures - 1), 5.0)


def is_terminal(job: gateway_pb2.Job) -> bool:
    return job.state in TERMINAL_STATES


def to_item(value: ItemLike) -> gateway_pb2.IngestItem:
    """bytes -> content; a local path -> its bytes (named by the path); (value, label) -> with a label."""
    if isinstance(value, gateway_pb2.IngestItem):
        return value
    label = ""
    if isinstance(value, tuple):
        value, label = value
    if isinstance(value, bytes):
        return gateway_pb2.IngestItem(content=value, label=label)
    path = Path(value)
    return gateway_pb2.IngestItem(content=path.read_bytes(), name=str(path), label=label)


def ingest_requests(dataset: str, items: Iterable[ItemLike], check_duplicates: bool, duplicate_threshold: float,
                    on_item: Any = None) -> Iterator[gateway_pb2.IngestRequest]:
    """The header, then one request per item (files are read lazily, one at a time)."""
    yield gateway_pb2.IngestRequest(header=gateway_pb2.IngestHeader(
        dataset=dataset, check_duplicates=check_duplicates, duplicate_threshold=duplicate_threshold))
    for value in items:
        yield gateway_pb2.IngestRequest(item=to_item(value))
        if on_item is not None:
            on_item()


def dir_items(directory: str | Path, labels_from_dirs: bool = False, server_paths: bool = False) -> list[ItemLike]:
    """The images under a directory, sorted; labels from the parent folder's name when asked.

    With `server_paths` the gateway reads the files itself (the path must be under its allowed roots):
    one path item for the whole directory, unless labels are wanted.
    """
    root = Path(directory)
    if server_paths and not labels_from_dirs:
        return [gateway_pb2.IngestItem(path=str(root.resolve()))]
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    out: list[ItemLike] = []
    for p in files:
        label = p.parent.name if labels_from_dirs and p.parent != root else ""
        if server_paths:
            out.append(gateway_pb2.IngestItem(path=str(p.resolve()), label=label))
        else:
            out.append((p, label))
    return out


def label_list(labels: Mapping[int | str, str] | Iterable[tuple[int | str, str]]) -> list[gateway_pb2.HumanLabel]:
    """{id or sha256: label} (or pairs) -> HumanLabel messages."""
    pairs = labels.items() if isinstance(labels, Mapping) else labels
    out = []
    for target, label in pairs:
        if isinstance(target, int):
            out.append(gateway_pb2.HumanLabel(id=target, label=label))
        elif isinstance(target, str) and target.isdigit():
            out.append(gateway_pb2.HumanLabel(id=int(target), label=label))
        else:
            out.append(gateway_pb2.HumanLabel(content_sha256=str(target), label=label))
    return out


def export_format(fmt: str | int) -> int:
    if isinstance(fmt, int):
        return fmt
    try:
        return EXPORT_FORMATS[fmt.lower()]
    except KeyError:
        raise ValueError(f"unknown export format {fmt!r}; one of {', '.join(sorted(EXPORT_FORMATS))}") from None


def projection_method(method: str | int) -> int:
    if isinstance(method, int):
        return method
    try:
        return PROJECTION_METHODS[method.lower()]
    except KeyError:
        raise ValueError(f"unknown projection {method!r}; one of {', '.join(PROJECTION_METHODS)}") from None


def image_query(dataset: str, image: bytes | str | Path | int, top_k: int,
                flt: common_pb2.Filter | None) -> gateway_pb2.SearchByImageRequest:
    request = gateway_pb2.SearchByImageRequest(dataset=dataset, top_k=top_k, filter=flt)
    if isinstance(image, int):
        request.id = image
    elif isinstance(image, bytes):
        request.image = image
    else:
        request.image = Path(image).read_bytes()
    return request


def round_config(config: common_pb2.RoundConfig | None, fields: Mapping[str, Any]) -> common_pb2.RoundConfig:
    out = common_pb2.RoundConfig()
    if config is not None:
        out.CopyFrom(config)
    for key, value in fields.items():
        setattr(out, key, value)
    return out
