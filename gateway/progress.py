"""Pure job arithmetic: job hash fields -> the public Job message, with rate and ETA."""

from __future__ import annotations

import json
from collections.abc import Mapping

from tagalong.v1 import common_pb2, gateway_pb2

TERMINAL = frozenset({"SUCCEEDED", "PARTIAL", "FAILED"})
_STATES = {
    "QUEUED": gateway_pb2.JOB_STATE_QUEUED,
    "RUNNING": gateway_pb2.JOB_STATE_RUNNING,
    "SUCCEEDED": gateway_pb2.JOB_STATE_SUCCEEDED,
    "PARTIAL": gateway_pb2.JOB_STATE_PARTIAL,
    "FAILED": gateway_pb2.JOB_STATE_FAILED,
}


def _text(fields: Mapping[bytes, bytes], name: str, default: str = "") -> str:
    value = fields.get(name.encode())
    return value.decode() if value is not None else default


def _int(fields: Mapping[bytes, bytes], name: str) -> int:
    value = fields.get(name.encode())
    return int(value) if value else 0


def rate_and_eta(processed: int, total: int, started_ms: int, now_ms: int, finished_ms: int, sealed: bool) -> tuple[
    float, float
]:
    """Items per second since the first item started, and seconds left (0 when unknown or finished)."""
    if started_ms <= 0 or processed <= 0:
        return 0.0, 0.0
    end = finished_ms if finished_ms > 0 else now_ms
    elapsed = max((end - started_ms) / 1000.0, 1e-3)
    rate = processed / elapsed
    if finished_ms > 0 or not sealed or total <= processed:
        return rate, 0.0
    return rate, (total - processed) / rate


def job_message(fields: Mapping[bytes, bytes], failures: list[bytes], now_ms: int) -> gateway_pb2.Job:
    """The Job message of a job hash (and a sample of its failures)."""
    done, failed, total = _int(fields, "done"), _int(fields, "failed"), _int(fields, "total")
    rate, eta = rate_and_eta(
        done + failed, total, _int(fields, "started_at_ms"), now_ms, _int(fields, "finished_at_ms"),
        _text(fields, "sealed") == "1",
    )
    job = gateway_pb2.Job(
        id=_text(fields, "id"),
        kind=_text(fields, "kind"),
        dataset=_text(fields, "dataset"),
        state=_STATES.get(_text(fields, "state"), gateway_pb2.JOB_STATE_UNSPECIFIED),
        total=total,
        done=done,
        failed=failed,
        rate=rate,
        eta_seconds=eta,
        error=_text(fields, "error"),
        created_at_ms=_int(fields, "created_at_ms"),
        updated_at_ms=_int(fields, "updated_at_ms"),
        stage=_text(fields, "stage"),
        round_id=_text(fields, "round_id"),
        duplicates_found=_int(fields, "duplicates_found"),
    )
    summary = fields.get(b"round_summary")
    if summary:
        job.round_summary.CopyFrom(common_pb2.RoundSummary.FromString(summary))
    for raw in failures:
        item = json.loads(raw)
        job.failures.append(gateway_pb2.JobFailure(item=item.get("item", ""), reason=item.get("reason", "")))
    return job


def is_terminal(state: str) -> bool:
    return state in TERMINAL
