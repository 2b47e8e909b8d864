"""Dataset health report: one markdown page plus PNGs, gathered through the SDK only (`tagalong report`).

Sections: summary, class balance (human and machine labels), clusters (size and purity), near-duplicate groups,
outliers, suspected label errors, review queue and the projection plot. Pure helpers (`class_balance`,
`cluster_stats`, `render_markdown`, the plotters) are separate from `build_report`, which does the calls.
"""

from __future__ import annotations

import json
import math
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tagalong.sdk import Client
    from tagalong.v1 import common_pb2

SOURCES = ("human", "propagated", "zero_shot")  # label_source names in the JSONL export
SECTIONS = ("Summary", "Class balance", "Clusters", "Near-duplicate groups", "Outliers", "Suspected label errors",
            "Review queue", "Projection")
MAX_ROWS = 15  # one page: the worst few of each kind, the CSV/CLI commands list the rest


@dataclass(frozen=True)
class Row:
    """One item as the JSONL export gives it."""

    id: int
    uri: str
    label: str
    source: str  # "human", "propagated", "zero_shot" or "none"
    confidence: float
    cluster_id: int


@dataclass(frozen=True)
class ClusterRow:
    """Size and purity of one cluster of the latest round."""

    cluster_id: int
    size: int
    human: int
    majority: str  # majority human label ("" when the cluster has no human label)
    purity: float  # share of its human labels that are the majority one (nan without human labels)
    label_share: float  # share of all its items (any source) carrying the majority label


@dataclass
class ReportData:
    """Everything the page shows; `notes` holds why a section is empty (e.g. no round yet)."""

    dataset: str
    total: int
    classes: list[str]
    model_id: str
    rows: list[Row]
    clusters: list[ClusterRow]
    duplicates: list[Any]  # common_pb2.DuplicateGroup
    outliers: list[Any]  # common_pb2.OutlierScore
    label_errors: list[Any]  # common_pb2.LabelErrorCandidate
    review: list[Any]  # common_pb2.ReviewItem
    round_id: str = ""
    clusters_from_summary: bool = False  # RoundSummary.clusters (every item) rather than the export's cluster ids
    images: dict[str, str] = field(default_factory=dict)  # section -> PNG file name beside report.md
    notes: dict[str, str] = field(default_factory=dict)


def parse_rows(jsonl: bytes) -> list[Row]:
    """The label store's JSONL export -> rows."""
    out = []
    for line in jsonl.decode("utf-8").splitlines():
        if not line.strip():
            continue
        r = json.loads(line)
        out.append(Row(int(r["id"]), str(r.get("uri", "")), str(r.get("label") or ""),
                       str(r.get("label_source") or "none"), float(r.get("confidence") or 0.0),
                       int(r.get("cluster_id", -1))))
    return out


def class_balance(rows: Sequence[Row]) -> dict[str, Counter[str]]:
    """label -> Counter(source -> count), labels sorted by total count, most first."""
    by_label: dict[str, Counter[str]] = defaultdict(Counter)
    for r in rows:
        if r.label:
            by_label[r.label][r.source] += 1
    return dict(sorted(by_label.items(), key=lambda kv: (-sum(kv[1].values()), kv[0])))


def cluster_stats(rows: Sequence[Row]) -> list[ClusterRow]:
    """Per cluster of the latest round (cluster_id >= 0): size, human labels, majority and purity.

    Purity follows RoundSummary.clusters: the share of the cluster's human labels that carry its majority
    human label. Sorted least pure first (clusters without human labels last), then by size.
    """
    members: dict[int, list[Row]] = defaultdict(list)
    for r in rows:
        if r.cluster_id >= 0:
            members[r.cluster_id].append(r)
    out = []
    for cid, items in members.items():
        human = Counter(r.label for r in items if r.source == "human" and r.label)
        n_human = sum(human.values())
        if n_human:
            majority, count = max(human.items(), key=lambda kv: (kv[1], kv[0]))
            purity = count / n_human
        else:
            majority, purity = "", float("nan")
        share = sum(r.label == majority for r in items) / len(items) if majority else 0.0
        out.append(ClusterRow(cid, len(items), n_human, majority, purity, share))
    return sorted(out, key=lambda c: (c.human == 0, c.purity if c.human else 0.0, -c.size, c.cluster_id))


def _pct(part: float, whole: float) -> str:
    return f"{100.0 * part / whole:.1f}%" if whole else "-"


def _table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    def cell(v: object) -> str:
        text = f"{v:.3f}" if isinstance(v, float) else str(v)
        return text.replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _image(data: ReportData, section: str, alt: str) -> str:
    name = data.images.get(section)
    return f"\n![{alt}]({name})\n" if name else ""


def _note(data: ReportData, section: str, default: str) -> str:
    return f"_{data.notes.get(section, default)}_\n"


def render_markdown(data: ReportData) -> str:
    """The one-page report (pure)."""
    rows = data.rows
    total = data.total or len(rows)
    counts = Counter(r.source if r.label else "none" for r in rows)
    labelled = sum(counts[s] for s in SOURCES)
    dup_items = sum(len(g.ids) - 1 for g in data.duplicates)
    impure = [c for c in data.clusters if c.human and c.purity < 0.8]
    out = [f"# Dataset health report: {data.dataset}\n"]
    out.append("\n## Summary\n\n")
    out.append(_table(["what", "value"], [
        ["items", total],
        ["embedding model", data.model_id or "-"],
        ["declared classes", ", ".join(data.classes) or "(none: any label)"],
        ["human labels", f"{counts['human']} ({_pct(counts['human'], total)})"],
        ["propagated labels", f"{counts['propagated']} ({_pct(counts['propagated'], total)})"],
        ["zero-shot labels", f"{counts['zero_shot']} ({_pct(counts['zero_shot'], total)})"],
        ["unlabelled", f"{counts['none']} ({_pct(counts['none'], total)})"],
        ["coverage (any label)", _pct(labelled, total)],
        ["latest round", data.round_id or "(none)"],
        ["clusters", f"{len(data.clusters)} ({len(impure)} with human-label purity < 0.8)"],
        ["near-duplicate groups", f"{len(data.duplicates)} ({dup_items} redundant items)"],
        ["suspected label errors", len(data.label_errors)],
        ["review queue", len(data.review)],
    ]))
    todo = []
    if impure:
        todo.append(f"clusters {', '.join(str(c.cluster_id) for c in impure[:5])} mix classes: review them first")
    if data.label_errors:
        todo.append(f"{len(data.label_errors)} human labels disagree with their neighbours: check them")
    if data.duplicates:
        todo.append(f"{dup_items} near-duplicate items could be dropped or de-weighted")
    if counts["none"]:
        todo.append(f"{counts['none']} items have no label: run a round or label the review queue")
    if todo:
        out.append("\nWhat to look at first:\n\n" + "".join(f"- {t}\n" for t in todo))

    out.append("\n## Class balance\n\n")
    balance = class_balance(rows)
    if balance:
        table_rows = []
        for label, c in balance.items():
            n = sum(c.values())
            table_rows.append([label, c["human"], c["propagated"], c["zero_shot"], n, _pct(n, labelled)])
        missing = [c for c in data.classes if c not in balance]
        out.append(_table(["class", "human", "propagated", "zero-shot", "total", "share of labelled"], table_rows))
        largest, smallest = max(sum(c.values()) for c in balance.values()), min(sum(c.values()) for c in
                                                                                 balance.values())
        out.append(f"\nLargest / smallest class: {largest / max(smallest, 1):.1f}x.")
        if missing:
            out.append(f" Declared classes with no label yet: {', '.join(missing)}.")
        out.append("\n" + _image(data, "Class balance", "class balance"))
    else:
        out.append(_note(data, "Class balance", "No labels yet."))

    out.append("\n## Clusters\n\n")
    if data.clusters:
        shown = data.clusters[:MAX_ROWS]
        out.append(f"{len(data.clusters)} clusters of round {data.round_id or '?'}; the least pure first"
                   f"{f' (first {len(shown)})' if len(shown) < len(data.clusters) else ''}. Purity: share of a "
                   "cluster's human labels that carry its majority label.")
        if not data.clusters_from_summary:
            out.append(" Taken from the export, whose cluster ids cover only the items the round labelled: "
                       "give the round's job id (`--round-job`) for the round's own per-cluster numbers.")
        out.append("\n\n")
        out.append(_table(["cluster", "size", "human labels", "majority", "purity", "items with majority label"],
                          [[c.cluster_id, c.size, c.human, c.majority or "-",
                            "-" if not c.human else c.purity,
                            "-" if math.isnan(c.label_share) else _pct(c.label_share * c.size, c.size)]
                           for c in shown]))
        out.append(_image(data, "Clusters", "cluster sizes and purity"))
    elif data.round_id and not data.clusters_from_summary:
        out.append(_note(data, "Clusters", f"Round {data.round_id} committed no machine labels, and the export "
                                           "carries cluster ids only for those: give the round's job id "
                                           "(`--round-job`) for its per-cluster numbers."))
    else:
        out.append(_note(data, "Clusters", "No labelling round has assigned clusters yet."))

    out.append("\n## Near-duplicate groups\n\n")
    if data.duplicates:
        groups = sorted(data.duplicates, key=lambda g: -len(g.ids))[:MAX_ROWS]
        out.append(f"{len(data.duplicates)} groups, largest first.\n\n")
        out.append(_table(["size", "min cosine", "representative", "others"],
                          [[len(g.ids), float(g.min_similarity), g.uris[0] if g.uris else g.ids[0],
                            ", ".join((list(g.uris) or [str(i) for i in g.ids])[1:4]) + (" ..." if len(g.ids) > 4
                                                                                          else "")]
                           for g in groups]))
    else:
        out.append(_note(data, "Near-duplicate groups", "No near-duplicates found."))

    out.append("\n## Outliers\n\n")
    if data.outliers:
        out.append("Most unusual items first (score about 1 for typical items, higher is more unusual).\n\n")
        out.append(_table(["#", "id", "score", "label", "uri"],
                          [[i, o.id, float(o.score), o.label or "-", o.uri]
                           for i, o in enumerate(data.outliers[:MAX_ROWS], 1)]))
        out.append(_image(data, "Outliers", "outlier scores"))
    else:
        out.append(_note(data, "Outliers", "No outlier scores."))

    out.append("\n## Suspected label errors\n\n")
    if data.label_errors:
        out.append("Human labels their nearest neighbours disagree with, most suspicious first.\n\n")
        out.append(_table(["id", "given", "suggested", "score", "uri"],
                          [[c.id, c.given_label, c.suggested_label or "-", float(c.score), c.uri]
                           for c in data.label_errors[:MAX_ROWS]]))
    else:
        out.append(_note(data, "Suspected label errors", "No human label disagrees with its neighbourhood."))

    out.append("\n## Review queue\n\n")
    if data.review:
        out.append(f"{len(data.review)} items the latest round wants a person to label; the first few:\n\n")
        out.append(_table(["id", "predicted", "confidence", "why", "uri"],
                          [[it.id, it.predicted_label or "-", float(it.confidence), it.reason, it.uri]
                           for it in data.review[:10]]))
    else:
        out.append(_note(data, "Review queue", "The review queue is empty."))

    out.append("\n## Projection\n\n")
    if data.images.get("Projection"):
        out.append("2D projection of the embeddings, coloured by current label (grey: unlabelled).\n")
        out.append(_image(data, "Projection", "projection"))
    else:
        out.append(_note(data, "Projection", "No projection."))
    return "".join(out)


# ---- plots (matplotlib Agg) ----

def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_class_balance(balance: dict[str, Counter[str]], path: Path) -> Path:
    """Stacked horizontal bars: human / propagated / zero-shot per class."""
    plt = _pyplot()
    labels = list(balance)[::-1]
    fig, ax = plt.subplots(figsize=(7, 0.35 * len(labels) + 1.5), dpi=100)
    left = [0] * len(labels)
    for source, colour in zip(SOURCES, ("#1f77b4", "#ff7f0e", "#2ca02c"), strict=True):
        widths = [balance[lab][source] for lab in labels]
        ax.barh(labels, widths, left=left, color=colour, label=source.replace("_", "-"))
        left = [a + b for a, b in zip(left, widths, strict=True)]
    ax.set_xlabel("items")
    ax.set_title("labels per class")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_clusters(clusters: Sequence[ClusterRow], path: Path) -> Path:
    """Cluster size (bars) coloured by purity (grey: no human label), largest first."""
    plt = _pyplot()
    ordered = sorted(clusters, key=lambda c: -c.size)
    cmap = plt.get_cmap("RdYlGn")
    colours = [cmap(c.purity) if c.human else "#bbbbbb" for c in ordered]
    fig, ax = plt.subplots(figsize=(max(6, 0.25 * len(ordered) + 2), 3.5), dpi=100)
    ax.bar(range(len(ordered)), [c.size for c in ordered], color=colours, edgecolor="#555555", linewidth=0.5)
    ax.set_xticks(range(len(ordered)), [str(c.cluster_id) for c in ordered], fontsize=7,
                  rotation=90 if len(ordered) > 20 else 0)
    ax.set_xlabel("cluster")
    ax.set_ylabel("items")
    ax.set_title("cluster size, coloured by purity\n(red: mixed, green: pure, grey: no human label)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_outliers(scores: Sequence[float], path: Path) -> Path:
    """The top outlier scores in rank order, with the 'typical item' level 1 marked."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3), dpi=100)
    ax.plot(range(1, len(scores) + 1), list(scores), marker="o", ms=3)
    ax.axhline(1.0, color="grey", ls="--", lw=1)
    ax.set_xlabel("rank")
    ax.set_ylabel("outlier score")
    ax.set_title("top outlier scores")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


# ---- gathering ----

def _try(data: ReportData, section: str, call: Any, default: Any) -> Any:
    """Run one SDK call; a refused one (e.g. no round yet) leaves its section empty with the reason."""
    from tagalong.sdk import TagalongError

    try:
        return call()
    except TagalongError as err:
        data.notes[section] = f"Unavailable: {err.code.name}: {err.details}"
        return default


def build_report(client: Client, dataset: str, out: Path, *, limit: int = 20, duplicate_threshold: float = 0.0,
                 projection: str = "pca", max_points: int = 0, round_job_id: str = "") -> Path:
    """Writes `out` (a .md file, or report.md inside `out` when it is a folder) and its PNGs; returns its path.

    Everything comes through the SDK. Per-cluster stats are those of RoundSummary.clusters when the round's
    job id is given, else they are computed from the export's cluster ids (same purity definition).
    """
    out = Path(out)
    md = out / "report.md" if out.is_dir() or not out.suffix else out
    md.parent.mkdir(parents=True, exist_ok=True)
    stem = md.stem
    found = [d for d in client.list_datasets() if d.name == dataset]
    if not found:
        import grpc

        from tagalong.sdk import TagalongError

        raise TagalongError(grpc.StatusCode.NOT_FOUND, f"dataset {dataset!r} does not exist")
    meta = found[0]
    rows = parse_rows(client.export(dataset, "jsonl"))
    data = ReportData(dataset, int(meta.count) or len(rows), list(meta.classes), meta.model_id, rows, [], [], [], [],
                      [])
    review = _try(data, "Review queue", lambda: client.review_queue(dataset), None)
    if review is not None:
        data.review, data.round_id = list(review.items), review.round_id
    if round_job_id:
        summary = client.get_job(round_job_id).round_summary
        data.round_id = data.round_id or summary.round_id
        data.clusters = _from_summary(summary.clusters)
        data.clusters_from_summary = True
    else:
        data.clusters = cluster_stats(rows)
    data.duplicates = _try(data, "Near-duplicate groups",
                           lambda: client.find_duplicates(dataset, duplicate_threshold), [])
    data.outliers = _try(data, "Outliers", lambda: client.outliers(dataset, limit), [])
    data.label_errors = _try(data, "Suspected label errors", lambda: client.label_errors(dataset, limit), [])
    points = _try(data, "Projection", lambda: list(client.project(dataset, projection, 2, max_points).points), [])

    balance = class_balance(rows)
    if balance:
        data.images["Class balance"] = plot_class_balance(balance, md.with_name(f"{stem}_classes.png")).name
    if data.clusters:
        data.images["Clusters"] = plot_clusters(data.clusters, md.with_name(f"{stem}_clusters.png")).name
    if data.outliers:
        data.images["Outliers"] = plot_outliers([o.score for o in data.outliers],
                                                md.with_name(f"{stem}_outliers.png")).name
    if points:
        from tagalong.cli.files import plot_projection

        png = md.with_name(f"{stem}_projection.png")
        plot_projection(points, png, f"{dataset} ({projection}, {len(points)} of {data.total})")
        data.images["Projection"] = png.name
    md.write_text(render_markdown(data), encoding="utf-8")
    return md


def _from_summary(clusters: Sequence[common_pb2.ClusterStats]) -> list[ClusterRow]:
    rows = [ClusterRow(int(c.cluster_id), int(c.size), int(c.human_labeled), c.majority_label,
                       float(c.purity) if c.human_labeled else float("nan"), float("nan")) for c in clusters]
    return sorted(rows, key=lambda c: (c.human == 0, c.purity if c.human else 0.0, -c.size, c.cluster_id))
