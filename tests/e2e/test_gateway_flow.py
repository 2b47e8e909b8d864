"""End to end through the gateway on real Redis and Milvus: ingest -> round -> review -> submit -> export,
search and the CLI, with the workers as real processes."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import sys
from pathlib import Path

import grpc
import pytest

from tagalong.sdk import AsyncClient, TagalongError
from tagalong.v1 import gateway_pb2
from tests.e2e.conftest import Stack

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
SEED_PER_CLASS = 3


def _truth(uri: str) -> str:
    return Path(uri).parent.name


async def _cli(stack: Stack, *args: str) -> str:
    """Runs the `tagalong` command against the stack, as its own process (as a user would)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tagalong.cli.main", "--address", stack.address, *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env={**os.environ, "COLUMNS": "200"},
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=120)
    assert proc.returncode == 0, (out + err).decode()
    return out.decode()


async def test_ingest_round_review_submit_export(stack: Stack, tmp_path: Path) -> None:
    stack.workers.start(2)
    async with AsyncClient(stack.address) as client:
        dataset = await client.create_dataset("cifar", CLASSES)
        assert (dataset.name, list(dataset.classes)) == ("cifar", CLASSES)
        assert dataset.dim > 0 and dataset.model_id
        again = await client.create_dataset("cifar", CLASSES)  # idempotent
        assert again.name == "cifar"

        # Half uploaded as bytes (a few with a known label), half read by the gateway from its allowed root.
        files = sorted(stack.images.rglob("*.jpg"))
        uploaded = files[::2]
        by_class: dict[str, int] = {}
        items: list[tuple[Path, str]] = []
        for f in uploaded:
            seed = by_class.get(f.parent.name, 0) < SEED_PER_CLASS
            by_class[f.parent.name] = by_class.get(f.parent.name, 0) + int(seed)
            items.append((f, f.parent.name if seed else ""))
        first = await client.ingest("cifar", items)
        rest = sorted(set(files) - set(uploaded))
        second = await client.ingest("cifar", [gateway_pb2.IngestItem(path=str(p)) for p in rest])
        assert first.queued + second.queued == len(files)
        for job_id in (first.job_id, second.job_id):
            job = await client.wait(job_id, timeout=180)
            assert job.state == gateway_pb2.JOB_STATE_SUCCEEDED, job
            assert job.done == job.total and job.failed == 0
        # Re-ingesting the same bytes stores nothing new (content-hash ids).
        again_job = await client.wait((await client.ingest("cifar", uploaded[:10])).job_id, timeout=60)
        assert again_job.done == 10
        [listed] = [d for d in await client.list_datasets() if d.name == "cifar"]
        assert listed.count == len(files)

        hits = await client.search_text("cifar", "a photo of a red car", top_k=5)
        assert len(hits) == 5 and [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
        probe = files[0]
        image_hits = await client.search_image("cifar", probe, top_k=3)
        assert image_hits[0].uri.endswith(probe.name) and image_hits[0].score > 0.99

        started = await client.start_round("cifar", k=10, review_batch_size=20, seed=1)
        round_job = await client.wait(started.job_id, timeout=180)
        assert round_job.state == gateway_pb2.JOB_STATE_SUCCEEDED, round_job
        assert round_job.round_id == started.round_id
        assert round_job.round_summary.total == len(files)
        assert round_job.round_summary.human_labeled == SEED_PER_CLASS * len(CLASSES)

        queue = await client.review_queue("cifar")
        assert queue.round_id == started.round_id
        assert 0 < len(queue.items) <= 20
        assert all(item.reason for item in queue.items)

        # Humans answer the queue (with the true CIFAR class); a second submit changes nothing.
        answers = {item.id: _truth(item.uri) for item in queue.items}
        submitted = await client.submit_labels("cifar", answers, annotator="e2e")
        assert (submitted.applied, submitted.unchanged, list(submitted.unknown_ids)) == (len(answers), 0, [])
        repeat = await client.submit_labels("cifar", answers, annotator="e2e")
        assert (repeat.applied, repeat.unchanged) == (0, len(answers))
        assert len((await client.review_queue("cifar", pending_only=True)).items) == 0
        for bad in ({next(iter(answers)): "spaceship"}, {next(iter(answers)): ""}):
            with pytest.raises(TagalongError) as info:
                await client.submit_labels("cifar", bad)
            assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
        unknown = await client.submit_labels("cifar", {12345: "cat"})
        assert list(unknown.unknown_ids) == [12345]

        # Exports parse, hold every row, and carry the human labels just submitted.
        rows = [json.loads(line) for line in (await client.export("cifar", "jsonl")).decode().splitlines() if line]
        assert len(rows) == len(files) and len({r["id"] for r in rows}) == len(files)
        by_id = {int(r["id"]): r for r in rows}
        for row_id, label in answers.items():
            assert by_id[row_id]["label"] == label
        table = list(csv.DictReader(io.StringIO((await client.export("cifar", "csv")).decode())))
        assert len(table) == len(files) and {"id", "uri", "label"} <= set(table[0])
        coco = json.loads(await client.export("cifar", "coco"))
        assert len(coco["images"]) == len(files)
        assert {c["name"] for c in coco["categories"]} <= set(CLASSES)
        tasks = json.loads(await client.export("cifar", "label-studio", image_url_prefix="http://img/"))
        assert len(tasks) == len(files) and all(t["data"]["image"].startswith("http://img/") for t in tasks)
        # Machine labels travel as predictions, human ones as annotations: the same rows as in the JSONL.
        machine = {int(r["id"]) for r in rows if r["label"] and not str(r["label_source"]).lower().endswith("human")}
        assert {int(t["data"]["tagalong_id"]) for t in tasks if t.get("predictions")} == machine
        assert {int(t["data"]["tagalong_id"]) for t in tasks if t.get("annotations")} == set(by_id) - machine - {
            i for i, r in by_id.items() if not r["label"]}
        review_rows = (await client.export("cifar", "jsonl", review_queue_only=True)).decode().splitlines()
        assert {int(json.loads(r)["id"]) for r in review_rows} == set(answers)

    # Round trip through the CLI: the exported CSV's human rows, submitted back, change nothing.
    export_csv = tmp_path / "labels.csv"
    await _cli(stack, "export", "-d", "cifar", "--format", "csv", "--out", str(export_csv))
    with export_csv.open() as f:
        human = [r for r in csv.DictReader(f) if r["label_source"].lower().endswith("human")]
    assert len(human) == SEED_PER_CLASS * len(CLASSES) + len(answers)
    human_csv = tmp_path / "human.csv"
    with human_csv.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["id", "label"])
        writer.writeheader()
        writer.writerows({"id": r["id"], "label": r["label"]} for r in human)
    out = await _cli(stack, "submit-labels", str(human_csv), "-d", "cifar")
    assert f"applied 0, unchanged {len(human)}" in out

    # The rest of the CLI against the same stack.
    assert "cifar" in await _cli(stack, "datasets")
    assert "review queue" in await _cli(stack, "review", "-d", "cifar", "--limit", "5")
    review_file = tmp_path / "review.csv"
    await _cli(stack, "review", "-d", "cifar", "--out", str(review_file))
    assert len(list(csv.DictReader(review_file.open()))) == len(answers)
    assert "score" in await _cli(stack, "search", "a red car", "-d", "cifar", "-k", "3")
    assert "like" in await _cli(stack, "search", "-d", "cifar", "--image", str(files[1]))
    plot = tmp_path / "plot.png"
    await _cli(stack, "project", "-d", "cifar", "--out", str(plot))
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    vectors = (tmp_path / "vectors.tsv").read_text().splitlines()
    metadata = (tmp_path / "metadata.tsv").read_text().splitlines()
    assert len(vectors) == len(files) and len(metadata) == len(files) + 1
    assert "outliers" in await _cli(stack, "outliers", "-d", "cifar", "--limit", "5")
    assert "near-duplicate groups" in await _cli(stack, "dedup", "-d", "cifar")


async def test_text_search_needs_a_dataset_and_text(stack: Stack) -> None:
    async with AsyncClient(stack.address) as client:
        await client.create_dataset("empty")
        with pytest.raises(TagalongError) as info:
            await client.search_text("empty", "   ")
        assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(TagalongError) as info:
            await client.search_text("missing", "a cat")
        assert info.value.code == grpc.StatusCode.NOT_FOUND
        zs = await client.zero_shot("empty", ["cat", "dog"])
        assert list(zs.predictions) == []
        embedded = await client.embed_texts(["a cat"])
        assert embedded.dim > 0 and embedded.results[0].WhichOneof("outcome") == "vector"
