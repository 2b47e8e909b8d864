"""Prometheus metrics shared by every service, and the per-service /metrics endpoint."""

from __future__ import annotations

import logging
from typing import Any

from prometheus_client import Counter, Gauge, Histogram, start_http_server

log = logging.getLogger(__name__)

RPC_LATENCY = Histogram(
    "tagalong_rpc_seconds",
    "Server-side handling time of a gRPC call",
    ["service", "method", "code"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)
RPC_IN_FLIGHT = Gauge("tagalong_rpc_in_flight", "gRPC calls being handled", ["service"])
RPC_REJECTED = Counter("tagalong_rpc_rejected_total", "Calls refused before the handler ran", ["service", "reason"])


def start_metrics_server(host: str, port: int) -> tuple[Any, int] | None:
    """Serve /metrics on host:port (0: a free port). Returns (server, bound port), or None when off (-1)."""
    if port < 0:
        return None
    server, _thread = start_http_server(port, addr=host)
    bound = int(server.server_port)
    log.info("metrics endpoint listening", extra={"metrics_port": bound})
    return server, bound
