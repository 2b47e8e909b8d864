"""Parsing Label Studio's JSON export (its documented task schema) into human labels, and checking targets."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tagalong.labelstudio import LabelStudioImportError, parse_export, resolve_targets
from tagalong.runtime.ids import id_from_sha256

SHA = "ab" * 32


def _annotation(*choices: str, cancelled: bool = False, updated: str = "2024-05-01T10:00:00.000000Z",
                ann_id: int = 1001, from_name: str = "label") -> dict[str, Any]:
    """One annotation as Label Studio exports it (fields from its documented JSON export)."""
    return {
        "id": ann_id,
        "completed_by": 1,
        "result": [
            {"id": "r1", "type": "choices", "value": {"choices": list(choices)}, "origin": "manual",
             "to_name": "image", "from_name": from_name},
        ],
        "was_cancelled": cancelled,
        "ground_truth": False,
        "created_at": updated,
        "updated_at": updated,
        "lead_time": 3.2,
        "prediction": {},
        "result_count": 0,
        "task": 1,
        "parent_prediction": None,
        "parent_annotation": None,
    }


def _task(task_id: int, data: dict[str, Any], annotations: list[dict[str, Any]] | None = None,
          predictions: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {
        "id": task_id,
        "annotations": annotations or [],
        "file_upload": "tasks.json",
        "drafts": [],
        "predictions": predictions or [],
        "data": data,
        "meta": {},
        "created_at": "2024-05-01T09:00:00.000000Z",
        "updated_at": "2024-05-01T10:00:00.000000Z",
        "inner_id": task_id,
        "total_annotations": len(annotations or []),
        "cancelled_annotations": 0,
        "total_predictions": len(predictions or []),
        "project": 3,
        "updated_by": 1,
    }


def _data(tid: int | None = None, uri: str = "", **extra: str) -> dict[str, Any]:
    data: dict[str, Any] = {"image": "/data/local-files/?d=" + uri, "uri": uri, **extra}
    if tid is not None:
        data["tagalong_id"] = str(tid)
    return data


def _dump(tasks: list[Any]) -> bytes:
    return json.dumps(tasks).encode()


def test_parses_the_documented_export_with_ids_sha256_and_images() -> None:
    prediction = {"model_version": "round-1", "score": 0.42,
                  "result": [{"from_name": "label", "to_name": "image", "type": "choices",
                              "value": {"choices": ["dog"]}}]}
    tasks = [
        _task(1, _data(9007199254740993, "a.jpg"), [_annotation("cat")], [prediction]),
        _task(2, _data(uri="b.jpg", content_sha256=SHA.upper()), [_annotation("dog")]),
        _task(3, {"image": "https://host/c.jpg"}, [_annotation("bird")]),
        _task(4, _data(5, "d.jpg"), [], [prediction]),  # only the machine's guess: not a human label
        _task(5, _data(6, "e.jpg"), [_annotation("cat", cancelled=True)]),
    ]
    parsed = parse_export(_dump(tasks))
    got = [(t.task, t.target, t.image, t.label) for t in parsed.labels]
    assert got == [
        ("task 1", 9007199254740993, "/data/local-files/?d=a.jpg", "cat"),  # beyond 2**53: kept exact
        ("task 2", SHA, "/data/local-files/?d=b.jpg", "dog"),
        ("task 3", None, "https://host/c.jpg", "bird"),
    ]
    assert (parsed.tasks, parsed.unannotated, parsed.cancelled) == (5, 1, 1)


def test_latest_live_annotation_wins_and_from_name_selects_a_control() -> None:
    anns = [
        _annotation("cat", updated="2024-05-01T10:00:00Z", ann_id=1),
        _annotation("dog", updated="2024-05-02T10:00:00Z", ann_id=2),
        _annotation("bird", updated="2024-05-03T10:00:00Z", ann_id=3, cancelled=True),
    ]
    assert parse_export(_dump([_task(1, _data(7), anns)])).labels[0].label == "dog"
    other = _annotation("blurry", from_name="quality")
    other["result"] += _annotation("cat")["result"]
    assert parse_export(_dump([_task(1, _data(7), [other])]), from_name="label").labels[0].label == "cat"
    with pytest.raises(LabelStudioImportError, match="chooses 2 classes"):
        parse_export(_dump([_task(1, _data(7), [other])]))


def test_same_image_twice_same_label_is_kept_once() -> None:
    tasks = [_task(1, _data(7), [_annotation("cat")]), _task(2, _data(7), [_annotation("cat")])]
    assert [t.task for t in parse_export(_dump(tasks)).labels] == ["task 1"]


@pytest.mark.parametrize(
    ("tasks", "message"),
    [
        pytest.param([_task(8, _data(7), [_annotation("cat", "dog")])], "task 8: annotation 1001 chooses 2 classes",
                     id="multi-choice"),
        pytest.param([_task(8, {"tagalong_id": "12x"}, [_annotation("cat")])],
                     "task 8: data.tagalong_id '12x' is not a positive 63-bit integer", id="bad-id"),
        pytest.param([_task(8, {"content_sha256": "abc"}, [_annotation("cat")])],
                     "task 8: data.content_sha256 'abc' is not 64 hex", id="bad-sha"),
        pytest.param([_task(8, {"text": "x"}, [_annotation("cat")])],
                     "task 8: data has no tagalong_id, content_sha256 or image", id="no-target"),
        pytest.param([{"id": 8, "annotations": []}], "task 8: missing 'data' object", id="no-data"),
        pytest.param([_task(8, _data(7), [_annotation(" cat")])], "task 8: annotation 1001: empty label",
                     id="spaces"),
        pytest.param([_task(1, _data(7), [_annotation("cat")]), _task(2, _data(7), [_annotation("dog")])],
                     "task 2: labels the same image as task 1 differently", id="conflict"),
        pytest.param(["oops"], "task #0: a task must be a JSON object", id="not-object"),
        pytest.param({"tasks": []}, "expected Label Studio's JSON export (a list of tasks)", id="not-list"),
    ],
)
def test_errors_name_the_task(tasks: Any, message: str) -> None:
    with pytest.raises(LabelStudioImportError) as err:
        parse_export(_dump(tasks))
    assert message in str(err.value)


def test_not_json_and_every_problem_listed() -> None:
    with pytest.raises(LabelStudioImportError, match="not JSON"):
        parse_export(b"[{")
    bad = [_task(i, {"tagalong_id": "x"}, [_annotation("cat")]) for i in range(30)]
    with pytest.raises(LabelStudioImportError) as err:
        parse_export(_dump(bad))
    assert len(err.value.problems) == 30
    assert "... and 10 more" in str(err.value)


def test_resolve_targets_checks_images_and_classes_before_anything_is_sent() -> None:
    known = {7: "a.jpg", id_from_sha256(SHA): "b.jpg", 9: "c.jpg"}
    tasks = [
        _task(1, _data(7, "a.jpg"), [_annotation("cat")]),
        _task(2, _data(uri="b.jpg", content_sha256=SHA), [_annotation("dog")]),
        _task(3, {"image": "/data/local-files/?d=c.jpg"}, [_annotation("cat")]),
    ]
    parsed = parse_export(_dump(tasks))
    pairs = resolve_targets(parsed.labels, known, image_url_prefix="/data/local-files/?d=", classes=["cat", "dog"])
    assert pairs == [(7, "cat"), (SHA, "dog"), (9, "cat")]

    unknown = parse_export(_dump([*tasks, _task(4, _data(123, "z.jpg"), [_annotation("cat")]),
                                  _task(5, {"image": "nowhere.jpg"}, [_annotation("cat")]),
                                  _task(6, _data(9, "c2.jpg"), [_annotation("horse")])]))
    with pytest.raises(LabelStudioImportError) as err:
        resolve_targets(unknown.labels, known, image_url_prefix="/data/local-files/?d=", classes=["cat", "dog"])
    assert err.value.problems == [
        "task 4: unknown image: id 123 is not in the dataset",
        "task 5: unknown image 'nowhere.jpg': no stored item has that uri",
        "task 6: unknown class 'horse' (dataset classes: cat, dog)",
    ]
    assert "nothing was submitted" in str(err.value)


def test_round_trips_our_own_export_format() -> None:
    """Tasks written by services.labelstore.export (human label as annotation, machine's as prediction)."""
    from services.labelstore.export import label_studio_task
    from tagalong.v1 import common_pb2

    row = {"id": 77, "uri": "x/1.jpg", "label": "cat", "label_source": common_pb2.LABEL_SOURCE_HUMAN,
           "confidence": 1.0, "round_id": "", "label_method": "human", "cluster_id": -1}
    machine = {**row, "id": 78, "uri": "x/2.jpg", "label_source": common_pb2.LABEL_SOURCE_PROPAGATED,
               "confidence": 0.7, "round_id": "r1"}
    tasks = [label_studio_task(row, "http://h/"), label_studio_task(machine, "http://h/")]
    parsed = parse_export(_dump(tasks))
    assert [(t.target, t.label) for t in parsed.labels] == [(77, "cat")]
    assert parsed.unannotated == 1


def test_review_predictions_fill_only_tasks_without_a_label() -> None:
    from tagalong.labelstudio import add_review_predictions
    from tagalong.v1 import common_pb2

    tasks = [
        {"data": {"image": "a", "tagalong_id": "1"}},  # uncommitted review item: gets the round's guess
        {"data": {"image": "b", "tagalong_id": "2"}, "predictions": [{"result": []}]},  # store has a machine label
        {"data": {"image": "c", "tagalong_id": "3"}, "annotations": [{"result": []}]},  # human label
        {"data": {"image": "d", "tagalong_id": "4"}},  # in the queue without a guess
        {"data": {"image": "e", "tagalong_id": "5"}},  # not in the queue
    ]
    items = [common_pb2.ReviewItem(id=i, predicted_label="" if i == 4 else "cat", confidence=0.25)
             for i in (1, 2, 3, 4)]
    assert add_review_predictions(tasks, items, "r9") == 1
    assert tasks[0]["predictions"] == [{"model_version": "r9", "score": 0.25, "result": [
        {"from_name": "label", "to_name": "image", "type": "choices", "value": {"choices": ["cat"]}}]}]
    assert tasks[1]["predictions"] == [{"result": []}]
    assert "predictions" not in tasks[2] and "predictions" not in tasks[3] and "predictions" not in tasks[4]
    # The filled task parses back as "no human label yet".
    assert parse_export(_dump(tasks[:1])).unannotated == 1
