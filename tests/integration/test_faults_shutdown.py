"""Load and graceful shutdown of the real gateway process: concurrent callers get only OK or an explicit
RESOURCE_EXHAUSTED, and a SIGTERM under load lets the calls in flight finish within the grace period."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.reliability import (
    ProcStack,
    random_photos,
    seed_dataset,
    sigterm_under_load,
    started,
    summarize_load,
)

GRACE = 8.0


@pytest.fixture()
def load_stack(tmp_path: Path, clip_model_dir: Path, redis_url: str, milvus_server_uri: str) -> Iterator[ProcStack]:
    stack = ProcStack(tmp_path, clip_model_dir, redis_url, milvus_server_uri,
                      services=("embedder", "labelstore", "gateway"),
                      extra_env={"TAGALONG_GATEWAY_GRACE_SECONDS": str(GRACE)})
    with started(stack, redis_url):
        yield stack


@pytest.mark.slow  # ~1 min on 2 cores; the 64-caller version runs in bench_reliability
async def test_sigterm_under_load_finishes_the_calls_in_flight(load_stack: ProcStack) -> None:
    photos = random_photos(40, seed=3)
    job_id = seed_dataset(load_stack.address("gateway"), "loadds", photos)
    report, records = await sigterm_under_load(load_stack, "loadds", photos, job_id, warmup=4.0, concurrency=32)
    before = [r for r in records if r.end < records[0].start + 4.0 - 0.2]
    summary = summarize_load(before, 4.0)
    assert summary["all"]["calls"] > 32, summary  # type: ignore[index]
    assert not summary["all"]["errors"], summary  # type: ignore[index]
    assert report.exit_seconds < GRACE + 2, report
    assert report.exit_code == 0, (report, load_stack.log("gateway")[-2000:])
    assert report.in_flight > 0, report
    assert report.in_flight_ok == report.in_flight, report
    # After the signal: refused (UNAVAILABLE; CANCELLED for calls caught in the stop itself) or, when accepted
    # just before it, finished; never an error.
    assert set(report.after) <= {"OK", "UNAVAILABLE", "CANCELLED"}, report
