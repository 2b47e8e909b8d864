"""Label Studio round trip, inbound: parse Label Studio's JSON export and submit its choices as human labels.

Label Studio's "JSON" export is a list of tasks: {"id", "data": {...}, "annotations": [{"result": [{"from_name",
"to_name", "type": "choices", "value": {"choices": [...]}}], "was_cancelled", "updated_at", ...}], "predictions"}.
Tasks exported by tagalong carry `data.tagalong_id` (a string: JavaScript loses int64 precision) and `data.uri`;
tasks from elsewhere may carry `data.content_sha256`, or only an image reference that `import_labels` matches
against the dataset's uris. Predictions are the machine's and are ignored; only people's annotations count.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tagalong.sdk import Client

HEX = frozenset("0123456789abcdef")
MAX_LISTED_PROBLEMS = 20  # a message naming every bad task of a 10k-task file helps nobody


class LabelStudioImportError(ValueError):
    """The file cannot be imported as it is; `problems` names each offending task."""

    def __init__(self, summary: str, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        shown = self.problems[:MAX_LISTED_PROBLEMS]
        more = len(self.problems) - len(shown)
        lines = [summary, *(f"  - {p}" for p in shown)]
        if more > 0:
            lines.append(f"  ... and {more} more")
        super().__init__("\n".join(lines))


@dataclass(frozen=True)
class TaskLabel:
    """The label a person gave one task, and how the task points at our image."""

    task: str  # how to name the task in messages: 'task 17' (Label Studio id) or 'task #3' (position)
    target: int | str | None  # stored id, hex sha256, or None when only `image` can identify it
    image: str  # data.image (or data.uri) as exported, for matching by uri
    label: str


@dataclass
class ParsedExport:
    """Labelled tasks plus what was skipped and why."""

    labels: list[TaskLabel] = field(default_factory=list)
    tasks: int = 0
    unannotated: int = 0  # no annotation with a choice (not labelled yet, or only predictions)
    cancelled: int = 0  # every annotation was skipped/cancelled in Label Studio


def _task_name(task: Any, position: int) -> str:
    if isinstance(task, dict) and isinstance(task.get("id"), int | str) and str(task.get("id")) != "":
        return f"task {task['id']}"
    return f"task #{position}"


def _target(data: dict[str, Any], name: str, problems: list[str]) -> int | str | None:
    raw_id = data.get("tagalong_id")
    if raw_id not in (None, ""):
        text = str(raw_id).strip()
        if not text.isdigit() or int(text) <= 0 or int(text) >= 2**63:
            problems.append(f"{name}: data.tagalong_id {raw_id!r} is not a positive 63-bit integer")
            return None
        return int(text)
    digest = data.get("content_sha256") or data.get("sha256")
    if digest not in (None, ""):
        text = str(digest).strip().lower()
        if len(text) != 64 or not set(text) <= HEX:
            problems.append(f"{name}: data.content_sha256 {digest!r} is not 64 hex characters")
            return None
        return text
    return None


def _annotation_time(annotation: dict[str, Any]) -> str:
    # ISO-8601 strings from one server sort in time order; a missing time sorts first.
    return str(annotation.get("updated_at") or annotation.get("created_at") or "")


def _choice(annotation: dict[str, Any], name: str, from_name: str | None, problems: list[str]) -> str | None:
    """The single class chosen in one annotation, None when it has no choices result."""
    result = annotation.get("result")
    if not isinstance(result, list):
        problems.append(f"{name}: annotation {annotation.get('id', '?')} has no 'result' list")
        return None
    chosen: list[str] = []
    for region in result:
        if not isinstance(region, dict) or region.get("type") != "choices":
            continue
        if from_name is not None and region.get("from_name") != from_name:
            continue
        value = region.get("value")
        choices = value.get("choices") if isinstance(value, dict) else None
        if not isinstance(choices, list) or not all(isinstance(c, str) for c in choices):
            problems.append(f"{name}: annotation {annotation.get('id', '?')}: value.choices must be a list of strings")
            return None
        chosen.extend(choices)
    if not chosen:
        return None
    distinct = sorted(set(chosen))
    if len(distinct) > 1:
        problems.append(
            f"{name}: annotation {annotation.get('id', '?')} chooses {len(distinct)} classes {distinct}; "
            "tagalong labels are single-choice"
        )
        return None
    label = distinct[0]
    if not label.strip() or label != label.strip():
        problems.append(f"{name}: annotation {annotation.get('id', '?')}: empty label or surrounding spaces {label!r}")
        return None
    return label


def _task_label(task: Any, position: int, from_name: str | None, parsed: ParsedExport,
                problems: list[str]) -> TaskLabel | None:
    name = _task_name(task, position)
    if not isinstance(task, dict):
        problems.append(f"{name}: a task must be a JSON object, got {type(task).__name__}")
        return None
    data = task.get("data")
    if not isinstance(data, dict):
        problems.append(f"{name}: missing 'data' object")
        return None
    annotations = task.get("annotations", task.get("completions", []))  # "completions": Label Studio < 1.0
    if annotations is None:
        annotations = []
    if not isinstance(annotations, list):
        problems.append(f"{name}: 'annotations' must be a list")
        return None
    if not all(isinstance(a, dict) for a in annotations):
        problems.append(f"{name}: every annotation must be a JSON object")
        return None
    live = [a for a in annotations if not a.get("was_cancelled", False)]
    if annotations and not live:
        parsed.cancelled += 1
        return None
    # The latest annotation wins: re-labelling in Label Studio adds or updates one.
    label = None
    for annotation in sorted(live, key=_annotation_time, reverse=True):
        label = _choice(annotation, name, from_name, problems)
        if label is not None:
            break
    if label is None:
        parsed.unannotated += 1
        return None
    n_problems = len(problems)
    target = _target(data, name, problems)
    if len(problems) > n_problems:
        return None
    image = str(data.get("image") or data.get("uri") or "")
    if target is None and not image:
        problems.append(f"{name}: data has no tagalong_id, content_sha256 or image to identify the image")
        return None
    return TaskLabel(name, target, image, label)


def parse_export(json_bytes: bytes | str, *, from_name: str | None = None) -> ParsedExport:
    """Label Studio JSON export -> the human labels in it. Raises LabelStudioImportError naming every bad task.

    `from_name` picks one <Choices> control when the labelling config has several (default: any).
    The same image labelled differently by two tasks is an error; the same label twice is kept once.
    """
    try:
        tasks = json.loads(json_bytes)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise LabelStudioImportError(f"not JSON: {err}", []) from None
    if isinstance(tasks, dict) and "data" in tasks:
        tasks = [tasks]  # a single task, as Label Studio's task API returns it
    if not isinstance(tasks, list):
        raise LabelStudioImportError(
            f"expected Label Studio's JSON export (a list of tasks), got a JSON {type(tasks).__name__}", []
        )
    parsed = ParsedExport(tasks=len(tasks))
    problems: list[str] = []
    seen: dict[int | str, TaskLabel] = {}
    for position, task in enumerate(tasks):
        item = _task_label(task, position, from_name, parsed, problems)
        if item is None:
            continue
        key: int | str = item.target if item.target is not None else f"image:{item.image}"
        previous = seen.get(key)
        if previous is not None:
            if previous.label != item.label:
                problems.append(
                    f"{item.task}: labels the same image as {previous.task} differently "
                    f"({item.label!r} vs {previous.label!r})"
                )
            continue
        seen[key] = item
        parsed.labels.append(item)
    if problems:
        raise LabelStudioImportError(f"{len(problems)} problem(s) in the Label Studio export:", problems)
    return parsed


def _choice_result(label: str, from_name: str, to_name: str) -> dict[str, Any]:
    return {"from_name": from_name, "to_name": to_name, "type": "choices", "value": {"choices": [label]}}


def add_review_predictions(tasks: list[dict[str, Any]], review_items: Sequence[Any], round_id: str, *,
                           from_name: str = "label", to_name: str = "image") -> int:
    """Gives tasks without a prediction or annotation the review queue's guess as a Label Studio prediction.

    The label store only holds committed machine labels, and review items are by design the uncertain,
    uncommitted ones: without this their tasks reach the annotators with no pre-annotation. Returns how many
    tasks got one. `review_items` are common_pb2.ReviewItem (predicted_label, confidence).
    """
    by_id = {int(it.id): it for it in review_items}
    added = 0
    for task in tasks:
        if task.get("predictions") or task.get("annotations"):
            continue
        raw = task.get("data", {}).get("tagalong_id")
        item = by_id.get(int(raw)) if raw not in (None, "") and str(raw).isdigit() else None
        if item is None or not item.predicted_label:
            continue
        task["predictions"] = [{"model_version": round_id or "review", "score": round(float(item.confidence), 6),
                                "result": [_choice_result(item.predicted_label, from_name, to_name)]}]
        added += 1
    return added


def export_tasks(client: Client, dataset: str, *, review_queue_only: bool = False, image_url_prefix: str = "",
                 filter: Any = None) -> list[dict[str, Any]]:
    """Label Studio import JSON (a list of tasks) from the label store's export, restricted to the latest
    review queue or a Filter, with the round's guesses as predictions where the store has no label."""
    tasks = json.loads(client.export(dataset, "label-studio", review_queue_only=review_queue_only,
                                     image_url_prefix=image_url_prefix, filter=filter) or b"[]")
    import grpc

    from tagalong.sdk import TagalongError

    try:
        queue = client.review_queue(dataset)
    except TagalongError as err:
        if err.code != grpc.StatusCode.NOT_FOUND:
            raise
        return tasks  # no round yet: nothing to add
    add_review_predictions(tasks, list(queue.items), queue.round_id)
    return tasks


@dataclass
class ImportSummary:
    """What an import did."""

    tasks: int
    labelled: int  # tasks with a usable human choice
    unannotated: int
    cancelled: int
    applied: int  # labels that changed in the store
    unchanged: int  # labels already in place (re-importing the same file gives applied == 0)

    def line(self) -> str:
        return (f"{self.tasks} tasks: {self.labelled} labelled ({self.applied} applied, {self.unchanged} "
                f"unchanged), {self.unannotated} without annotation, {self.cancelled} cancelled")


def _strip_prefix(image: str, prefixes: Iterable[str]) -> str:
    for prefix in prefixes:
        if prefix and image.startswith(prefix):
            return image[len(prefix):]
    return image


def resolve_targets(labels: Sequence[TaskLabel], known: dict[int, str], *, image_url_prefix: str = "",
                    classes: Sequence[str] = ()) -> list[tuple[int | str, str]]:
    """(id or sha256, label) pairs to submit. `known` maps every stored id of the dataset to its uri.

    Raises LabelStudioImportError naming each task whose image is not in the dataset (by id, or by image
    reference when the task has neither id nor sha256) or whose class the dataset does not declare.
    Checking everything before submitting makes a bad file change nothing.
    """
    from tagalong.runtime.ids import id_from_sha256

    by_uri: dict[str, int] = {}
    for row_id, uri in known.items():
        by_uri.setdefault(uri, row_id)
    problems: list[str] = []
    out: list[tuple[int | str, str]] = []
    class_set = set(classes)
    for item in labels:
        if class_set and item.label not in class_set:
            problems.append(f"{item.task}: unknown class {item.label!r} (dataset classes: {', '.join(classes)})")
            continue
        if isinstance(item.target, int):
            if item.target not in known:
                problems.append(f"{item.task}: unknown image: id {item.target} is not in the dataset")
                continue
            out.append((item.target, item.label))
        elif isinstance(item.target, str):
            if id_from_sha256(item.target) not in known:
                problems.append(f"{item.task}: unknown image: content_sha256 {item.target} is not in the dataset")
                continue
            out.append((item.target, item.label))
        else:
            uri = _strip_prefix(item.image, (image_url_prefix,))
            match = by_uri.get(uri, by_uri.get(item.image))
            if match is None:
                problems.append(f"{item.task}: unknown image {item.image!r}: no stored item has that uri")
                continue
            out.append((match, item.label))
    if problems:
        raise LabelStudioImportError(f"{len(problems)} task(s) cannot be imported; nothing was submitted:", problems)
    return out


def _dataset_index(client: Client, dataset: str) -> tuple[dict[int, str], list[str]]:
    """Every stored id of the dataset with its uri (from a JSONL export), and its declared classes."""
    found = [d for d in client.list_datasets() if d.name == dataset]
    if not found:
        raise LabelStudioImportError(f"dataset {dataset!r} does not exist", [])
    known: dict[int, str] = {}
    for line in client.export(dataset, "jsonl").decode("utf-8").splitlines():
        if line.strip():
            row = json.loads(line)
            known[int(row["id"])] = str(row.get("uri", ""))
    return known, list(found[0].classes)


def import_labels(client: Client, dataset: str, path: str | Path, *, annotator: str = "label-studio",
                  from_name: str | None = None, image_url_prefix: str = "", batch_size: int = 1000) -> ImportSummary:
    """Submits the human choices of a Label Studio JSON export as HUMAN labels; idempotent.

    All-or-nothing for file problems: unknown images, unknown classes and malformed tasks raise
    LabelStudioImportError (a ValueError) naming the tasks before anything is submitted.
    """
    parsed = parse_export(Path(path).read_bytes(), from_name=from_name)
    known, classes = _dataset_index(client, dataset)
    pairs = resolve_targets(parsed.labels, known, image_url_prefix=image_url_prefix, classes=classes)
    applied = unchanged = 0
    for start in range(0, len(pairs), batch_size):
        reply = client.submit_labels(dataset, pairs[start : start + batch_size], annotator=annotator)
        applied += reply.applied
        unchanged += reply.unchanged
        if reply.unknown_ids:  # deleted between our check and the write
            raise LabelStudioImportError(
                f"{len(reply.unknown_ids)} image(s) vanished from {dataset!r} during the import",
                [f"id {i}" for i in reply.unknown_ids],
            )
    return ImportSummary(parsed.tasks, len(pairs), parsed.unannotated, parsed.cancelled, applied, unchanged)
