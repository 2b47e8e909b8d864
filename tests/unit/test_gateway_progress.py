"""Job arithmetic (rate, ETA), prompt templates and request validation helpers of the gateway."""

from __future__ import annotations

import pytest

from gateway.progress import job_message, rate_and_eta
from gateway.prompts import ZERO_SHOT_TEMPLATES, check_class_names, fill
from gateway.registry import DatasetMeta, check_classes, check_dataset_name
from gateway.settings import GatewaySettings
from tagalong.runtime.errors import InvalidArgument
from tagalong.v1 import gateway_pb2


@pytest.mark.parametrize(
    ("processed", "total", "started", "now", "finished", "sealed", "rate", "eta"),
    [
        pytest.param(0, 10, 1000, 2000, 0, True, 0.0, 0.0, id="nothing-yet"),
        pytest.param(5, 10, 1000, 2000, 0, True, 5.0, 1.0, id="half-way"),
        pytest.param(5, 10, 1000, 2000, 0, False, 5.0, 0.0, id="unsealed-eta-unknown"),
        pytest.param(10, 10, 1000, 9000, 3000, True, 5.0, 0.0, id="finished-rate-frozen"),
    ],
)
def test_rate_and_eta(processed: int, total: int, started: int, now: int, finished: int, sealed: bool,
                      rate: float, eta: float) -> None:
    assert rate_and_eta(processed, total, started, now, finished, sealed) == pytest.approx((rate, eta))


def test_job_message_from_hash() -> None:
    fields = {b"id": b"j", b"kind": b"ingest", b"dataset": b"d", b"state": b"RUNNING", b"total": b"4",
              b"done": b"1", b"failed": b"1", b"started_at_ms": b"1000", b"sealed": b"1"}
    job = job_message(fields, [b'{"item": "x.jpg", "reason": "bad"}'], now_ms=3000)
    assert job.state == gateway_pb2.JOB_STATE_RUNNING
    assert (job.total, job.done, job.failed) == (4, 1, 1)
    assert job.rate == pytest.approx(1.0) and job.eta_seconds == pytest.approx(2.0)
    assert job.failures[0].item == "x.jpg"


def test_templates_fill_and_refuse_missing_placeholder() -> None:
    assert fill(("a photo of a {}.",), "cat") == ["a photo of a cat."]
    assert all("{}" in t for t in ZERO_SHOT_TEMPLATES)
    with pytest.raises(InvalidArgument, match="placeholder"):
        fill(["a photo"], "cat")


@pytest.mark.parametrize(
    "names", [pytest.param(["cat"], id="one"), pytest.param(["cat", "cat"], id="repeat"),
              pytest.param(["cat", " "], id="blank")],
)
def test_bad_class_names(names: list[str]) -> None:
    with pytest.raises(InvalidArgument):
        check_class_names(names)


@pytest.mark.parametrize("name", ["", "1abc", "a-b", "a" * 65, "ü"])
def test_bad_dataset_names(name: str) -> None:
    with pytest.raises(InvalidArgument):
        check_dataset_name(name)


def test_declared_classes_gate_labels() -> None:
    meta = DatasetMeta("d", "m", 4, check_classes(["cat", "dog"]))
    meta.check_label("cat")
    for bad in ("bird", "", " cat"):
        with pytest.raises(InvalidArgument):
            meta.check_label(bad)
    DatasetMeta("free", "m", 4).check_label("anything")
    with pytest.raises(InvalidArgument):
        check_classes(["cat", "cat"])


def test_settings_roots_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TAGALONG_GATEWAY_ALLOWED_ROOTS", "/data/a, /data/b,")
    monkeypatch.setenv("TAGALONG_REDIS_URL", "redis://example:6379/1")
    monkeypatch.setenv("TAGALONG_REDIS_PREFIX", "px")
    s = GatewaySettings()
    assert [str(r) for r in s.allowed_roots] == ["/data/a", "/data/b"]
    assert (s.redis_url, s.redis_prefix, s.port) == ("redis://example:6379/1", "px", 50050)
    monkeypatch.setenv("TAGALONG_GATEWAY_ALLOWED_ROOTS", "relative/dir")
    with pytest.raises(ValueError, match="absolute"):
        GatewaySettings()
