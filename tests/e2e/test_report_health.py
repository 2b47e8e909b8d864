"""build_report on a real stack after ingest + a labelling round: every section present, real PNGs beside it."""

from __future__ import annotations

import asyncio
import io
import re
from pathlib import Path

from PIL import Image

from tagalong.report import SECTIONS, build_report
from tagalong.sdk import AsyncClient, Client
from tagalong.v1 import gateway_pb2
from tests.e2e.conftest import Stack

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
PNG = b"\x89PNG\r\n\x1a\n"


async def test_build_report_writes_every_section_and_its_pngs(stack: Stack, tmp_path: Path) -> None:
    stack.workers.start(1)
    files = sorted(stack.images.rglob("*.jpg"))
    async with AsyncClient(stack.address) as client:
        await client.create_dataset("health", CLASSES)
        seeded: dict[str, int] = {}
        items = []
        for f in files:
            seed = seeded.get(f.parent.name, 0) < 2
            seeded[f.parent.name] = seeded.get(f.parent.name, 0) + int(seed)
            items.append((f, f.parent.name if seed else ""))
        # The same photo re-encoded (other bytes, same picture): a near-duplicate group the report must show.
        buf = io.BytesIO()
        Image.open(files[0]).save(buf, format="PNG")
        items.append(gateway_pb2.IngestItem(content=buf.getvalue(), name="copy.png"))
        job = await client.wait((await client.ingest("health", items)).job_id, timeout=180)
        assert job.state == gateway_pb2.JOB_STATE_SUCCEEDED, job
        round_job = await client.wait((await client.start_round("health", k=10, review_batch_size=10, seed=1)).job_id,
                                      timeout=180)
        assert round_job.state == gateway_pb2.JOB_STATE_SUCCEEDED, round_job

    def run(out: Path, **kw: object) -> Path:
        with Client(stack.address) as sync_client:
            # The tiny random test model puts all photos near each other: only the exact copy counts here.
            return build_report(sync_client, "health", out, limit=10, duplicate_threshold=0.9999,
                                **kw)  # type: ignore[arg-type]

    # With the round's job id the cluster table comes from RoundSummary.clusters (k=10 clusters).
    md = await asyncio.to_thread(run, tmp_path / "out" / "report.md", round_job_id=round_job.id)
    text = md.read_text()
    assert md == tmp_path / "out" / "report.md"
    for section in SECTIONS:
        assert f"\n## {section}\n" in text, section
    assert f"| items | {len(files) + 1} |" in text
    assert "| human labels | 20 (10.0%) |" in text
    assert round_job.round_id in text
    clusters = text.split("## Clusters")[1].split("##")[0]
    assert clusters.startswith("\n\n10 clusters of round") and "Taken from the export" not in clusters
    duplicates = text.split("## Near-duplicate groups")[1].split("##")[0]
    assert files[0].name in duplicates and "copy.png" in duplicates
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert set(images) == {"report_classes.png", "report_clusters.png", "report_outliers.png",
                           "report_projection.png"}
    for name in images:
        assert (md.parent / name).read_bytes()[:8] == PNG
    outlier_rows = [line for line in text.split("## Outliers")[1].split("##")[0].splitlines()
                    if re.match(r"\| \d+ \| \d+ \|", line)]
    assert len(outlier_rows) == 10
    assert "_Unavailable" not in text

    # Without it, clusters come from the export (cluster ids of the round's committed labels only) and say so.
    md2 = await asyncio.to_thread(run, tmp_path / "plain")
    assert md2 == tmp_path / "plain" / "report.md"
    plain = md2.read_text()
    for section in SECTIONS:
        assert f"\n## {section}\n" in plain, section
    assert "Taken from the export" in plain or f"Round {round_job.round_id} committed no machine labels" in plain
