"""The CLI's local files: label files in (CSV, JSONL, JSON), review queues out, Projector TSVs, the PNG,
and the SDK's request building behind `ingest DIR`."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tagalong.cli.files import plot_projection, read_labels, write_projector, write_review
from tagalong.cli.main import app
from tagalong.sdk._requests import dir_items, export_format, ingest_requests, label_list
from tagalong.v1 import common_pb2, gateway_pb2

SHA = "ab" * 32


@pytest.mark.parametrize(
    ("name", "text"),
    [
        pytest.param("l.csv", "id,label\n12,cat\n,\n", id="csv-with-blank-row"),
        pytest.param("l.jsonl", '{"id": 12, "label": "cat"}\n\n', id="jsonl"),
        pytest.param("l.json", '{"12": "cat"}', id="json-object"),
        pytest.param("l.json", '[{"id": "12", "label": "cat"}]', id="json-list"),
    ],
)
def test_read_labels_formats(tmp_path: Path, name: str, text: str) -> None:
    path = tmp_path / name
    path.write_text(text)
    if name.endswith(".csv"):
        with pytest.raises(ValueError, match="neither id"):
            read_labels(path)
        path.write_text("id,label\n12,cat\n")
    assert read_labels(path) == [(12, "cat")]


def test_read_labels_by_sha(tmp_path: Path) -> None:
    path = tmp_path / "l.csv"
    path.write_text(f"content_sha256,label\n{SHA},dog\n")
    assert read_labels(path) == [(SHA, "dog")]
    [msg] = label_list(read_labels(path))
    assert msg.content_sha256 == SHA and msg.label == "dog"
    assert label_list({7: "cat"})[0].id == 7


def test_review_file_round_trips_into_labels(tmp_path: Path) -> None:
    items = [common_pb2.ReviewItem(id=5, uri="a.jpg", priority=0.9, reason="margin 0.01", predicted_label="cat")]
    out = tmp_path / "review.csv"
    write_review(items, out)
    rows = list(csv.DictReader(out.open()))
    assert rows[0]["id"] == "5" and rows[0]["reason"] == "margin 0.01" and rows[0]["label"] == ""
    rows[0]["label"] = "dog"  # a person fills the column in
    with out.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    assert read_labels(out) == [(5, "dog")]
    jsonl = tmp_path / "review.jsonl"
    write_review(items, jsonl)
    assert json.loads(jsonl.read_text().splitlines()[0])["predicted_label"] == "cat"


def test_projector_files_and_png(tmp_path: Path) -> None:
    points = [
        common_pb2.ProjectedPoint(id=1, coords=[0.5, -1.0], label="cat", label_source=common_pb2.LABEL_SOURCE_HUMAN,
                                  uri="x\ty.jpg"),
        common_pb2.ProjectedPoint(id=2, coords=[1.5, 2.0], uri="z.jpg"),
    ]
    vectors, metadata = write_projector(points, tmp_path / "proj")
    assert vectors.read_text().splitlines() == ["0.5\t-1", "1.5\t2"]
    meta = [line.split("\t") for line in metadata.read_text().splitlines()]
    assert meta[0] == ["id", "label", "source", "uri"]
    assert meta[1] == ["1", "cat", "human", "x y.jpg"] and meta[2][1] == "(none)"
    png = tmp_path / "plot.png"
    plot_projection(points, png, "t")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_dir_items_and_ingest_requests(tmp_path: Path) -> None:
    (tmp_path / "cat").mkdir()
    (tmp_path / "cat" / "1.jpg").write_bytes(b"one")
    (tmp_path / "readme.txt").write_text("skip me")
    items = dir_items(tmp_path, labels_from_dirs=True)
    requests = list(ingest_requests("d", items, check_duplicates=True, duplicate_threshold=0.9))
    assert requests[0].header.dataset == "d" and requests[0].header.check_duplicates
    assert [(r.item.content, r.item.label) for r in requests[1:]] == [(b"one", "cat")]
    [server] = dir_items(tmp_path, server_paths=True)
    assert isinstance(server, gateway_pb2.IngestItem) and server.path == str(tmp_path.resolve())
    assert export_format("label-studio") == common_pb2.EXPORT_FORMAT_LABEL_STUDIO
    with pytest.raises(ValueError, match="unknown export format"):
        export_format("xml")


def test_cli_reports_an_unreachable_gateway_in_one_line() -> None:
    # A separate process: blocking gRPC channels in this one would share gRPC's core with the asyncio tests.
    result = subprocess.run([sys.executable, "-m", "tagalong.cli.main", "--address", "127.0.0.1:9", "datasets"],
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 1
    assert "UNAVAILABLE" in result.stderr and "Traceback" not in result.stderr


def test_cli_help_lists_the_commands() -> None:
    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("ingest", "watch", "label", "review", "submit-labels", "search", "dedup", "project", "export",
                    "outliers"):
        assert command in result.output
