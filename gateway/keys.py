"""Names of every Redis key the gateway and its workers use, under one configurable prefix."""

from __future__ import annotations

from dataclasses import dataclass

GROUP = "workers"
INGEST = "ingest"
ROUND = "round"


@dataclass(frozen=True)
class Keys:
    """Key layout; `prefix` isolates stacks (and tests) sharing one Redis."""

    prefix: str

    def stream(self, kind: str) -> str:
        return f"{self.prefix}:stream:{kind}"

    @property
    def dead_letter(self) -> str:
        return f"{self.prefix}:deadletter"

    def last_error(self, kind: str) -> str:
        """Hash: stream entry id -> why its last delivery failed (the dead-letter reason)."""
        return f"{self.prefix}:lasterror:{kind}"

    @property
    def datasets(self) -> str:
        return f"{self.prefix}:datasets"

    def job(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}"

    def job_seen(self, job_id: str) -> str:
        """Set of the job's items already counted, so a redelivered item is never counted twice."""
        return f"{self.prefix}:job:{job_id}:seen"

    def job_failures(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}:failures"

    def review(self, dataset: str, round_id: str) -> str:
        return f"{self.prefix}:review:{dataset}:{round_id}"

    def latest_round(self, dataset: str) -> str:
        return f"{self.prefix}:review:{dataset}:latest"
