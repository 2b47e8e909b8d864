"""build_report's gathering against an in-memory stand-in of the SDK client (the real stack: tests/e2e)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import grpc
import pytest

from tagalong.report import SECTIONS, build_report
from tagalong.sdk import TagalongError
from tagalong.v1 import common_pb2, gateway_pb2


class FakeClient:
    """Answers the SDK calls build_report makes with fixed protos; `refuse` names calls that fail."""

    def __init__(self, refuse: set[str] | None = None) -> None:
        self.refuse = refuse or set()
        self.calls: list[str] = []

    def _call(self, name: str) -> None:
        self.calls.append(name)
        if name in self.refuse:
            raise TagalongError(grpc.StatusCode.NOT_FOUND, f"{name}: dataset 'd' has no finished labelling round yet")

    def list_datasets(self) -> list[gateway_pb2.Dataset]:
        return [gateway_pb2.Dataset(name="d", model_id="m", dim=4, count=4, classes=["cat", "dog"])]

    def export(self, dataset: str, fmt: str, **_: Any) -> bytes:
        self._call("export")
        rows = [(1, "cat", "human", 0), (2, "dog", "human", 0), (3, "cat", "propagated", 0), (4, "", "none", -1)]
        return "".join(json.dumps({"id": i, "uri": f"{i}.jpg", "label": lab, "label_source": src, "confidence": 1.0,
                                   "cluster_id": c, "round_id": "r1"}) + "\n" for i, lab, src, c in rows).encode()

    def review_queue(self, dataset: str) -> gateway_pb2.GetReviewQueueResponse:
        self._call("review_queue")
        return gateway_pb2.GetReviewQueueResponse(round_id="r1", items=[common_pb2.ReviewItem(id=4, reason="x")])

    def get_job(self, job_id: str) -> gateway_pb2.Job:
        self._call("get_job")
        summary = common_pb2.RoundSummary(round_id="r1", clusters=[
            common_pb2.ClusterStats(cluster_id=0, size=3, majority_label="cat", purity=0.5, human_labeled=2),
            common_pb2.ClusterStats(cluster_id=1, size=1)])
        return gateway_pb2.Job(id=job_id, round_summary=summary)

    def find_duplicates(self, dataset: str, threshold: float) -> list[common_pb2.DuplicateGroup]:
        self._call("find_duplicates")
        return []

    def outliers(self, dataset: str, limit: int) -> list[common_pb2.OutlierScore]:
        self._call("outliers")
        return [common_pb2.OutlierScore(id=4, uri="4.jpg", score=2.0)]

    def label_errors(self, dataset: str, limit: int) -> list[common_pb2.LabelErrorCandidate]:
        self._call("label_errors")
        return []

    def project(self, dataset: str, method: str, dims: int, max_points: int) -> gateway_pb2.GatewayProjectResponse:
        self._call("project")
        pts = [common_pb2.ProjectedPoint(id=i, coords=[float(i), float(i % 2)], label="cat" if i < 3 else "")
               for i in range(1, 5)]
        return gateway_pb2.GatewayProjectResponse(points=pts, total=4)


def test_folder_out_and_round_summary_clusters(tmp_path: Path) -> None:
    client = FakeClient()
    md = build_report(client, "d", tmp_path, round_job_id="job-1")  # type: ignore[arg-type]
    assert md == tmp_path / "report.md"
    text = md.read_text()
    for section in SECTIONS:
        assert f"\n## {section}\n" in text
    assert "| 0 | 3 | 2 | cat | 0.500 | - |" in text and "| 1 | 1 | 0 | - | - | - |" in text
    assert "Taken from the export" not in text
    assert sorted(p.name for p in tmp_path.glob("*.png")) == [
        "report_classes.png", "report_clusters.png", "report_outliers.png", "report_projection.png"]
    assert "get_job" in client.calls


def test_a_refused_call_leaves_its_section_with_the_reason(tmp_path: Path) -> None:
    client = FakeClient(refuse={"review_queue", "outliers"})
    text = build_report(client, "d", tmp_path / "h.md").read_text()  # type: ignore[arg-type]
    assert "_Unavailable: NOT_FOUND: review_queue: dataset 'd' has no finished labelling round yet_" in text
    assert "_Unavailable: NOT_FOUND: outliers:" in text
    assert "Taken from the export" in text  # clusters fall back to the export's cluster ids
    assert not (tmp_path / "h_outliers.png").exists() and (tmp_path / "h_projection.png").exists()


def test_unknown_dataset_is_not_found(tmp_path: Path) -> None:
    with pytest.raises(TagalongError) as err:
        build_report(FakeClient(), "nope", tmp_path / "r.md")  # type: ignore[arg-type]
    assert err.value.code == grpc.StatusCode.NOT_FOUND and not (tmp_path / "r.md").exists()
