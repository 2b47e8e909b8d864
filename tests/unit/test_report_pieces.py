"""The health report's pure pieces: export parsing, class balance, cluster purity, markdown and the PNGs."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import pytest

from tagalong.report import (
    SECTIONS,
    ClusterRow,
    ReportData,
    Row,
    class_balance,
    cluster_stats,
    parse_rows,
    plot_class_balance,
    plot_clusters,
    plot_outliers,
    render_markdown,
)
from tagalong.v1 import common_pb2


def _row(i: int, label: str, source: str, cluster: int) -> Row:
    return Row(i, f"img/{i}.jpg", label, source, 1.0 if source == "human" else 0.8, cluster)


ROWS = [
    # cluster 0: 3 human cats + 1 human dog -> purity 0.75; 2 propagated cats
    _row(1, "cat", "human", 0), _row(2, "cat", "human", 0), _row(3, "cat", "human", 0), _row(4, "dog", "human", 0),
    _row(5, "cat", "propagated", 0), _row(6, "cat", "propagated", 0),
    # cluster 1: all dog -> purity 1
    _row(7, "dog", "human", 1), _row(8, "dog", "propagated", 1), _row(9, "", "none", 1),
    # cluster 2: no human label
    _row(10, "bird", "zero_shot", 2), _row(11, "", "none", 2),
    # no cluster (never in a round)
    _row(12, "", "none", -1),
]


def test_parse_rows_reads_the_jsonl_export() -> None:
    lines = [
        {"id": 5, "uri": "a.jpg", "label": "cat", "label_source": "human", "confidence": 1.0, "cluster_id": 3,
         "round_id": "r"},
        {"id": 6, "uri": "b.jpg", "label": "", "label_source": "none", "confidence": 0.0, "cluster_id": -1,
         "round_id": ""},
    ]
    blob = ("\n".join(json.dumps(x) for x in lines) + "\n\n").encode()
    assert parse_rows(blob) == [Row(5, "a.jpg", "cat", "human", 1.0, 3), Row(6, "b.jpg", "", "none", 0.0, -1)]


def test_class_balance_counts_per_source_most_first() -> None:
    balance = class_balance(ROWS)
    assert list(balance) == ["cat", "dog", "bird"]
    assert balance["cat"] == Counter(human=3, propagated=2)
    assert balance["dog"] == Counter(human=2, propagated=1)
    assert balance["bird"] == Counter(zero_shot=1)


def test_cluster_stats_purity_like_round_summary() -> None:
    stats = {c.cluster_id: c for c in cluster_stats(ROWS)}
    assert set(stats) == {0, 1, 2}
    assert (stats[0].size, stats[0].human, stats[0].majority, stats[0].purity) == (6, 4, "cat", 0.75)
    assert stats[0].label_share == pytest.approx(5 / 6)
    assert (stats[1].size, stats[1].human, stats[1].majority, stats[1].purity) == (3, 1, "dog", 1.0)
    assert stats[2].human == 0 and stats[2].majority == "" and math.isnan(stats[2].purity)
    assert [c.cluster_id for c in cluster_stats(ROWS)] == [0, 1, 2]  # least pure first, unlabelled last


def _data(images: dict[str, str] | None = None) -> ReportData:
    dup = common_pb2.DuplicateGroup(ids=[1, 2, 3], uris=["img/1.jpg", "img/2.jpg", "img/3.jpg"],
                                    min_similarity=0.97, max_similarity=0.99)
    out = common_pb2.OutlierScore(id=11, uri="img/11.jpg", score=3.5, label="")
    err = common_pb2.LabelErrorCandidate(id=4, uri="img/4.jpg", given_label="dog", suggested_label="cat", score=0.9)
    rev = common_pb2.ReviewItem(id=9, uri="img/9.jpg", predicted_label="dog", confidence=0.4, reason="margin 0.1")
    return ReportData("pets", len(ROWS), ["cat", "dog", "bird", "fish"], "m-1", ROWS, cluster_stats(ROWS), [dup],
                      [out], [err], [rev], round_id="r7", images=images or {})


def test_markdown_has_every_section_with_its_content() -> None:
    text = render_markdown(_data({"Projection": "report_projection.png", "Class balance": "report_classes.png"}))
    for section in SECTIONS:
        assert f"\n## {section}\n" in text
    assert "| human labels | 5 (41.7%) |" in text
    assert "| unlabelled | 3 (25.0%) |" in text
    assert "| cat | 3 | 2 | 0 | 5 | 55.6% |" in text  # 5 of 9 labelled
    assert "Declared classes with no label yet: fish." in text
    assert "| 0 | 6 | 4 | cat | 0.750 | 83.3% |" in text
    assert "clusters 0 mix classes" in text
    assert "| 3 | 0.970 | img/1.jpg | img/2.jpg, img/3.jpg |" in text
    assert "| 1 | 11 | 3.500 | - | img/11.jpg |" in text
    assert "| 4 | dog | cat | 0.900 | img/4.jpg |" in text
    assert "![projection](report_projection.png)" in text and "![class balance](report_classes.png)" in text


def test_empty_sections_say_why() -> None:
    data = ReportData("empty", 0, [], "", [], [], [], [], [], [], notes={"Outliers": "Unavailable: X: y"})
    text = render_markdown(data)
    for section in SECTIONS:
        assert f"\n## {section}\n" in text
    assert "_Unavailable: X: y_" in text and "_No labels yet._" in text and "_No projection._" in text


def test_summary_clusters_without_label_share_render_a_dash() -> None:
    data = _data()
    data.clusters = [ClusterRow(4, 10, 2, "cat", 0.5, float("nan"))]
    assert "| 4 | 10 | 2 | cat | 0.500 | - |" in render_markdown(data)


def test_plots_write_pngs(tmp_path: Path) -> None:
    paths = [
        plot_class_balance(class_balance(ROWS), tmp_path / "c.png"),
        plot_clusters(cluster_stats(ROWS), tmp_path / "k.png"),
        plot_outliers([3.0, 2.0, 1.5], tmp_path / "o.png"),
    ]
    for p in paths:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 2000


def test_a_round_without_committed_labels_points_to_the_job_id() -> None:
    data = _data()
    data.clusters = []
    assert "Round r7 committed no machine labels" in render_markdown(data)
    data.clusters_from_summary = True
    assert "_No labelling round has assigned clusters yet._" in render_markdown(data)
