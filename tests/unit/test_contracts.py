"""The contracts: generated code is current, the stale check can fail, buf lint passes, and every RPC
the issues name exists."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from scripts.gen_protos import PACKAGE, ROOT, generate, stale_files
from tagalong.v1 import clusterer_pb2, embedder_pb2, gateway_pb2, labelstore_pb2


def test_generated_tree_matches_protos(tmp_path: Path) -> None:
    fresh = generate(tmp_path)
    assert stale_files(fresh, ROOT / PACKAGE) == []


def test_stale_check_detects_a_changed_file(tmp_path: Path) -> None:
    fresh = generate(tmp_path / "a")
    copy = tmp_path / "b"
    shutil.copytree(fresh, copy)
    target = copy / "labelstore_pb2.py"
    target.write_text(target.read_text() + "\n# edited by hand\n")
    (copy / "extra_pb2.py").write_text("")
    assert stale_files(fresh, copy) == ["extra_pb2.py", "labelstore_pb2.py"]


def test_typed_stubs_are_generated() -> None:
    for name in ("common_pb2.pyi", "gateway_pb2_grpc.pyi", "embedder_pb2.pyi"):
        assert (ROOT / PACKAGE / name).stat().st_size > 0


def test_buf_lint_passes() -> None:
    buf = ROOT / "tools" / "node_modules" / ".bin" / "buf"
    if not buf.exists():
        pytest.fail("buf is not installed: `make setup` installs it (tools/package.json)")
    result = subprocess.run([str(buf), "lint"], cwd=ROOT / "protos", capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("module", "service", "rpcs"),
    [
        pytest.param(embedder_pb2, "Embedder", {"EmbedImages", "EmbedImageStream", "EmbedTexts", "ModelInfo"},
                     id="embedder"),
        pytest.param(labelstore_pb2, "LabelStore",
                     {"Upsert", "UpsertStream", "Get", "Search", "SetLabels", "Delete", "Count", "ScanEmbeddings",
                      "NearDuplicates", "Export"}, id="labelstore"),
        pytest.param(clusterer_pb2, "Clusterer", {"RunRound", "Project", "ZeroShot", "LabelErrors", "Outliers"},
                     id="clusterer"),
        pytest.param(gateway_pb2, "Gateway",
                     {"CreateDataset", "ListDatasets", "Ingest", "GetJob", "WatchJob", "EmbedImages", "EmbedTexts",
                      "SearchByText", "SearchByImage", "ZeroShot", "StartLabelingRound", "GetReviewQueue",
                      "SubmitLabels", "FindDuplicates", "Project", "LabelErrors", "Outliers", "Export"}, id="gateway"),
    ],
)
def test_every_named_rpc_exists(module: object, service: str, rpcs: set[str]) -> None:
    methods = {m.name for m in module.DESCRIPTOR.services_by_name[service].methods}  # type: ignore[attr-defined]
    assert rpcs <= methods, rpcs - methods
