"""Export writers (JSONL, CSV, COCO classification, Label Studio tasks) streaming fixed-size chunks (pure)."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from typing import Any

from tagalong.runtime.errors import InvalidArgument
from tagalong.v1 import common_pb2

Pages = Iterable[list[dict[str, Any]]]
COLUMNS = ("id", "uri", "label", "label_source", "confidence", "cluster_id", "round_id")
SOURCE_NAMES: dict[int, str] = {
    common_pb2.LABEL_SOURCE_UNSPECIFIED: "none",
    common_pb2.LABEL_SOURCE_NONE: "none",
    common_pb2.LABEL_SOURCE_HUMAN: "human",
    common_pb2.LABEL_SOURCE_PROPAGATED: "propagated",
    common_pb2.LABEL_SOURCE_ZERO_SHOT: "zero_shot",
}


def source_name(value: int) -> str:
    return SOURCE_NAMES.get(int(value), "none")


def _flat(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": int(row["id"]), "uri": row["uri"], "label": row["label"],
        "label_source": source_name(row["label_source"]),
        "confidence": round(float(row["confidence"]), 6), "cluster_id": int(row["cluster_id"]),
        "round_id": row["round_id"],
    }


def _jsonl(pages: Pages) -> Iterator[tuple[str, int]]:
    for page in pages:
        yield "".join(json.dumps(_flat(r), ensure_ascii=False) + "\n" for r in page), len(page)


def _csv(pages: Pages) -> Iterator[tuple[str, int]]:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    yield buf.getvalue(), 0
    for page in pages:
        buf.seek(0)
        buf.truncate()
        writer.writerows(_flat(r) for r in page)
        yield buf.getvalue(), len(page)


def _coco(pages_factory: Callable[[], Pages]) -> Iterator[tuple[str, int]]:
    """Images first (collecting the label set), then categories, then annotations (a second pass)."""
    info = {"description": "tagalong export", "date_created": datetime.now(UTC).isoformat(timespec="seconds")}
    yield '{"info": ' + json.dumps(info) + ', "licenses": [], "images": [', 0
    labels: set[str] = set()
    first = True
    for page in pages_factory():
        parts = []
        for r in page:
            if r["label"]:
                labels.add(r["label"])
            image = {"id": int(r["id"]), "file_name": r["uri"], "content_sha256": r["content_sha256"]}
            parts.append(("" if first else ", ") + json.dumps(image, ensure_ascii=False))
            first = False
        yield "".join(parts), len(page)
    categories = {name: i for i, name in enumerate(sorted(labels), start=1)}
    cats = [{"id": i, "name": name, "supercategory": ""} for name, i in categories.items()]
    yield '], "categories": ' + json.dumps(cats, ensure_ascii=False) + ', "annotations": [', 0
    ann_id = 0
    for page in pages_factory():
        parts = []
        for r in page:
            if not r["label"] or r["label"] not in categories:
                continue
            ann_id += 1
            ann = {"id": ann_id, "image_id": int(r["id"]), "category_id": categories[r["label"]],
                   "score": round(float(r["confidence"]), 6), "label_source": source_name(r["label_source"]),
                   "round_id": r["round_id"]}
            parts.append(("" if ann_id == 1 else ", ") + json.dumps(ann, ensure_ascii=False))
        yield "".join(parts), 0
    yield "]}\n", 0


def _choice(label: str) -> dict[str, Any]:
    return {"from_name": "label", "to_name": "image", "type": "choices", "value": {"choices": [label]}}


def label_studio_task(row: dict[str, Any], image_url_prefix: str) -> dict[str, Any]:
    """One task: the image, our id (a string: JavaScript loses int64 precision), and the label as an
    annotation (human) or a prediction with its score (machine)."""
    task: dict[str, Any] = {
        "data": {"image": image_url_prefix + row["uri"], "tagalong_id": str(int(row["id"])), "uri": row["uri"]},
    }
    label, src = row["label"], int(row["label_source"])
    if label and src == common_pb2.LABEL_SOURCE_HUMAN:
        task["annotations"] = [{"result": [_choice(label)], "ground_truth": False}]
    elif label:
        version = row["round_id"] or row["label_method"] or source_name(src)
        task["predictions"] = [
            {"model_version": version, "score": round(float(row["confidence"]), 6), "result": [_choice(label)]}
        ]
    return task


def _label_studio(pages: Pages, image_url_prefix: str) -> Iterator[tuple[str, int]]:
    yield "[", 0
    first = True
    for page in pages:
        parts = []
        for r in page:
            task = json.dumps(label_studio_task(r, image_url_prefix), ensure_ascii=False)
            parts.append(("" if first else ",\n") + task)
            first = False
        yield "".join(parts), len(page)
    yield "]\n", 0


def export(
    fmt: int, pages_factory: Callable[[], Pages], *, chunk_bytes: int = 65536, image_url_prefix: str = ""
) -> Iterator[tuple[bytes, int]]:
    """(chunk, rows written so far) pieces of the file in the ExportFormat `fmt`; concatenate the chunks."""
    if fmt in (common_pb2.EXPORT_FORMAT_UNSPECIFIED, common_pb2.EXPORT_FORMAT_JSONL):
        pieces = _jsonl(pages_factory())
    elif fmt == common_pb2.EXPORT_FORMAT_CSV:
        pieces = _csv(pages_factory())
    elif fmt == common_pb2.EXPORT_FORMAT_COCO:
        pieces = _coco(pages_factory)
    elif fmt == common_pb2.EXPORT_FORMAT_LABEL_STUDIO:
        pieces = _label_studio(pages_factory(), image_url_prefix)
    else:
        raise InvalidArgument(f"unknown export format {fmt}")
    buf = bytearray()
    rows = 0
    for text, n in pieces:
        buf += text.encode()
        rows += n
        while len(buf) >= chunk_bytes:
            yield bytes(buf[:chunk_bytes]), rows
            del buf[:chunk_bytes]
    if buf:
        yield bytes(buf), rows
