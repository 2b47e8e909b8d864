"""Local file formats of the CLI: label files in, review queues out, and Embedding Projector TSVs."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Sequence
from pathlib import Path

from tagalong.v1 import common_pb2


def read_labels(path: Path) -> list[tuple[int | str, str]]:
    """(id or sha256, label) pairs from CSV (columns id|content_sha256, label), JSONL or a JSON object/list."""
    text = path.read_text(encoding="utf-8")
    suffix = path.suffix.lower()
    rows: list[dict[str, object]]
    if suffix == ".csv":
        rows = list(csv.DictReader(text.splitlines()))
    elif suffix == ".jsonl":
        rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    else:
        data = json.loads(text)
        rows = [{"id": k, "label": v} for k, v in data.items()] if isinstance(data, dict) else list(data)
    out: list[tuple[int | str, str]] = []
    for i, row in enumerate(rows):
        label = str(row.get("label") or "").strip()
        target = row.get("id") or row.get("content_sha256")
        if target in (None, ""):
            raise ValueError(f"{path}: row {i + 1} has neither id nor content_sha256")
        target_text = str(target).strip()
        out.append((int(target_text) if target_text.lstrip("-").isdigit() else target_text, label))
    return out


REVIEW_COLUMNS = ("id", "uri", "priority", "predicted_label", "confidence", "cluster_id", "reason", "label")


def write_review(items: Sequence[common_pb2.ReviewItem], path: Path) -> None:
    """The review queue as CSV or JSONL (by suffix), with an empty `label` column for people to fill."""
    rows = [
        {"id": it.id, "uri": it.uri, "priority": round(it.priority, 6), "predicted_label": it.predicted_label,
         "confidence": round(it.confidence, 6), "cluster_id": it.cluster_id, "reason": it.reason, "label": ""}
        for it in items
    ]
    if path.suffix.lower() == ".csv":
        with path.open("w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=REVIEW_COLUMNS)
            writer.writeheader()
            writer.writerows(rows)
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def write_projector(points: Iterable[common_pb2.ProjectedPoint], folder: Path) -> tuple[Path, Path]:
    """vectors.tsv + metadata.tsv for projector.tensorflow.org (one row per point, same order)."""
    folder.mkdir(parents=True, exist_ok=True)
    vectors, metadata = folder / "vectors.tsv", folder / "metadata.tsv"
    with vectors.open("w", encoding="utf-8") as vf, metadata.open("w", encoding="utf-8") as mf:
        mf.write("id\tlabel\tsource\turi\n")
        for p in points:
            vf.write("\t".join(f"{c:.6g}" for c in p.coords) + "\n")
            source = common_pb2.LabelSource.Name(p.label_source).removeprefix("LABEL_SOURCE_").lower()
            clean = [str(p.id), p.label or "(none)", source, p.uri]
            mf.write("\t".join(v.replace("\t", " ").replace("\n", " ") for v in clean) + "\n")
    return vectors, metadata


def plot_projection(points: Sequence[common_pb2.ProjectedPoint], out: Path, title: str) -> None:
    """A PNG scatter of the first two coordinates, one colour per label (unlabelled in grey)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = sorted({p.label for p in points if p.label})
    fig, ax = plt.subplots(figsize=(8, 7), dpi=110)
    unl = [p for p in points if not p.label]
    if unl:
        ax.scatter([p.coords[0] for p in unl], [p.coords[1] for p in unl], s=6, c="#bbbbbb", label="(unlabelled)")
    cmap = plt.get_cmap("tab20" if len(labels) > 10 else "tab10")
    for i, label in enumerate(labels):
        pts = [p for p in points if p.label == label]
        ax.scatter([p.coords[0] for p in pts], [p.coords[1] for p in pts], s=8, color=cmap(i % cmap.N), label=label)
    ax.set_title(title)
    if labels or unl:
        ax.legend(markerscale=2, fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
