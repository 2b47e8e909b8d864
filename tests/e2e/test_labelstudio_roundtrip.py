"""Label Studio round trip on a real stack: export the review queue as Label Studio tasks (predictions as
pre-annotations) -> a person annotates (we edit the JSON as Label Studio's export would show it) -> import
as HUMAN labels; importing again changes nothing; unknown images and classes are refused naming the task."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from tagalong.labelstudio import LabelStudioImportError, export_tasks, import_labels
from tagalong.sdk import AsyncClient, Client
from tagalong.v1 import gateway_pb2
from tests.e2e.conftest import Stack

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
PREFIX = "/data/local-files/?d="


def _truth(uri: str) -> str:
    return Path(uri).parent.name


def _annotate(task: dict[str, Any], task_id: int, label: str, *, cancelled: bool = False) -> dict[str, Any]:
    """What Label Studio's JSON export holds for a task after a person chose `label` (its documented schema)."""
    return {
        **task,
        "id": task_id,
        "annotations": [{
            "id": 5000 + task_id, "completed_by": 1, "was_cancelled": cancelled, "ground_truth": False,
            "created_at": "2024-05-01T10:00:00.000000Z", "updated_at": "2024-05-01T10:00:00.000000Z",
            "lead_time": 2.5, "task": task_id, "prediction": {}, "result_count": 0,
            "result": [{"id": f"r{task_id}", "type": "choices", "origin": "manual", "from_name": "label",
                        "to_name": "image", "value": {"choices": [label]}}],
        }],
        "drafts": [], "meta": {}, "project": 1, "inner_id": task_id, "total_annotations": 1,
        "cancelled_annotations": int(cancelled), "total_predictions": len(task.get("predictions", [])),
    }


async def _rows(client: AsyncClient, dataset: str) -> dict[int, dict[str, Any]]:
    text = (await client.export(dataset, "jsonl")).decode()
    return {int(r["id"]): r for r in (json.loads(line) for line in text.splitlines() if line)}


async def test_export_annotate_import_round_trip(stack: Stack, tmp_path: Path) -> None:
    stack.workers.start(1)
    files = sorted(stack.images.rglob("*.jpg"))
    async with AsyncClient(stack.address) as client:
        await client.create_dataset("lsrt", CLASSES)
        seeds = {f.parent.name: f for f in files}  # one known label per class
        items = [(f, f.parent.name if seeds[f.parent.name] == f else "") for f in files]
        job = await client.wait((await client.ingest("lsrt", items)).job_id, timeout=180)
        assert job.state == gateway_pb2.JOB_STATE_SUCCEEDED, job
        round_job = await client.wait((await client.start_round("lsrt", k=10, review_batch_size=12, seed=1)).job_id,
                                      timeout=180)
        assert round_job.state == gateway_pb2.JOB_STATE_SUCCEEDED, round_job
        queue = await client.review_queue("lsrt")
        assert len(queue.items) == 12

        # Export: only the review queue, in Label Studio's import format, machine guesses as predictions.
        raw = json.loads(await client.export("lsrt", "label-studio", review_queue_only=True, image_url_prefix=PREFIX))
        assert isinstance(raw, list) and len(raw) == len(queue.items)
        assert {int(t["data"]["tagalong_id"]) for t in raw} == {it.id for it in queue.items}
        before = await _rows(client, "lsrt")

    def run_export() -> list[dict[str, Any]]:
        with Client(stack.address) as sync_client:
            return export_tasks(sync_client, "lsrt", review_queue_only=True, image_url_prefix=PREFIX)

    tasks = await asyncio.to_thread(run_export)
    guesses = {it.id: it for it in queue.items}
    assert [t["data"]["tagalong_id"] for t in tasks] == [t["data"]["tagalong_id"] for t in raw]
    for t in tasks:
        row_id = int(t["data"]["tagalong_id"])
        assert t["data"]["image"] == PREFIX + t["data"]["uri"]
        assert "annotations" not in t  # queue items have no human label yet
        stored = before[row_id]["label"]
        if not stored and not guesses[row_id].predicted_label:
            continue
        [pred] = t["predictions"]  # the store's committed label, else the round's (uncommitted) guess
        assert 0.0 <= pred["score"] <= 1.0 and pred["model_version"]
        [result] = pred["result"]
        assert (result["type"], result["from_name"], result["to_name"]) == ("choices", "label", "image")
        assert result["value"]["choices"] == [stored or guesses[row_id].predicted_label]
    # Review items are the uncommitted ones: the store's export alone has predictions only for stored labels.
    assert sum(bool(t.get("predictions")) for t in raw) == sum(bool(before[it.id]["label"]) for it in queue.items)
    assert sum(bool(t.get("predictions")) for t in tasks) == sum(
        bool(before[it.id]["label"] or it.predicted_label) for it in queue.items)

    # A person labels all but two tasks with the true class; one is skipped (cancelled), one left open.
    annotated = [_annotate(t, i + 1, _truth(t["data"]["uri"])) for i, t in enumerate(tasks[:-2])]
    annotated.append(_annotate(tasks[-2], len(tasks) - 1, "cat", cancelled=True))
    annotated.append({**tasks[-1], "id": len(tasks), "annotations": []})
    export_file = tmp_path / "project-1-at-2024-05-01.json"
    export_file.write_text(json.dumps(annotated))

    def run_import(path: Path) -> Any:
        with Client(stack.address) as sync_client:
            return import_labels(sync_client, "lsrt", path)

    summary = await asyncio.to_thread(run_import, export_file)
    n = len(tasks) - 2
    assert (summary.tasks, summary.labelled, summary.cancelled, summary.unannotated) == (len(tasks), n, 1, 1)
    assert (summary.applied, summary.unchanged) == (n, 0)
    async with AsyncClient(stack.address) as client:
        after = await _rows(client, "lsrt")
        for t in tasks[:-2]:
            row = after[int(t["data"]["tagalong_id"])]
            assert (row["label"], row["label_source"]) == (_truth(t["data"]["uri"]), "human")
        for t in tasks[-2:]:  # cancelled and unannotated tasks leave the store alone
            assert after[int(t["data"]["tagalong_id"])] == before[int(t["data"]["tagalong_id"])]
        assert len((await client.review_queue("lsrt", pending_only=True)).items) == 2

    again = await asyncio.to_thread(run_import, export_file)  # idempotent
    assert (again.applied, again.unchanged) == (0, n)

    # Unknown image and unknown class: refused before anything is written, naming the tasks.
    open_task = tasks[-1]
    bad = [
        _annotate(open_task, 1, _truth(open_task["data"]["uri"])),  # valid on its own: must not be applied
        _annotate({"data": {"image": PREFIX + "x.jpg", "tagalong_id": "12345"}}, 2, "cat"),
        _annotate(tasks[0], 3, "spaceship"),
    ]
    bad_file = tmp_path / "bad.json"
    bad_file.write_text(json.dumps(bad))
    with pytest.raises(LabelStudioImportError) as err:
        await asyncio.to_thread(run_import, bad_file)
    assert err.value.problems == [
        "task 2: unknown image: id 12345 is not in the dataset",
        f"task 3: unknown class 'spaceship' (dataset classes: {', '.join(CLASSES)})",
    ]
    async with AsyncClient(stack.address) as client:
        assert (await _rows(client, "lsrt"))[int(open_task["data"]["tagalong_id"])]["label_source"] != "human"
