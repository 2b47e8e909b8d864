"""One server bootstrap for every service: grpc.aio server, health driven by real readiness,
reflection, interceptors, metrics endpoint, TLS, graceful shutdown on SIGTERM.

A service is an object with `name`, `service_names`, `register(server)`, `async start()` (load the
model, reach Milvus, warm up; raise SettingError for a bad setting) and `async stop()`.
`serve()` is the process entry point; `run_server()` gives tests a real server on a free port.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import grpc
from grpc import aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from tagalong.runtime.interceptors import AuthInterceptor, ObservabilityInterceptor
from tagalong.runtime.logs import setup_logging
from tagalong.runtime.metrics import start_metrics_server
from tagalong.runtime.settings import ServiceSettings, SettingError

log = logging.getLogger(__name__)


class Service(Protocol):
    """What the bootstrap needs from a service."""

    name: str
    service_names: Sequence[str]

    def register(self, server: aio.Server) -> None: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


@dataclass
class RunningServer:
    """A started server: its port, health servicer and the service object."""

    server: aio.Server
    port: int
    health: health.aio.HealthServicer
    service: Any
    settings: ServiceSettings
    metrics_port: int | None = None
    _metrics: Any = field(default=None, repr=False)

    @property
    def address(self) -> str:
        host = "127.0.0.1" if self.settings.host in ("0.0.0.0", "::", "") else self.settings.host
        return f"{host}:{self.port}"

    async def set_serving(self, serving: bool) -> None:
        """Report SERVING or NOT_SERVING for the whole server and each of its services."""
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ("", *self.service.service_names):
            await self.health.set(name, status)


def server_options(settings: ServiceSettings) -> list[tuple[str, Any]]:
    return [
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.max_send_message_length", settings.max_message_bytes),
        ("grpc.so_reuseport", 0),
        ("grpc.keepalive_time_ms", 60_000),
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        # Spread long-lived client connections over new replicas (Kubernetes scale-out): after 5 minutes
        # the server asks the client to reconnect for NEW calls; calls in flight (a long labelling round,
        # a big upload, WatchJob) keep their connection for up to an hour instead of being cut.
        ("grpc.max_connection_age_ms", 5 * 60_000),
        ("grpc.max_connection_age_grace_ms", 60 * 60_000),
    ]


def _server_credentials(settings: ServiceSettings) -> grpc.ServerCredentials | None:
    if settings.tls_cert_file is None and settings.tls_key_file is None:
        return None
    if settings.tls_cert_file is None or settings.tls_key_file is None:
        raise SettingError("TAGALONG_TLS_CERT_FILE", "TLS needs both TAGALONG_TLS_CERT_FILE and TAGALONG_TLS_KEY_FILE")
    try:
        cert = settings.tls_cert_file.read_bytes()
        key = settings.tls_key_file.read_bytes()
        ca = settings.tls_ca_file.read_bytes() if settings.tls_ca_file else None
    except OSError as err:
        raise SettingError("TAGALONG_TLS_CERT_FILE", f"cannot read TLS file: {err}") from None
    return grpc.ssl_server_credentials([(key, cert)], root_certificates=ca, require_client_auth=ca is not None)


async def start_server(service: Any, settings: ServiceSettings) -> RunningServer:
    """Build, bind and start the server, then start the service; health says SERVING only after that."""
    settings.check_auth()
    interceptors: list[aio.ServerInterceptor] = []
    if settings.auth_token is not None:
        interceptors.append(AuthInterceptor(settings.auth_token.get_secret_value(), service.name))
    interceptors.append(ObservabilityInterceptor(service.name))
    server = aio.server(
        interceptors=interceptors,
        options=server_options(settings),
        maximum_concurrent_rpcs=settings.max_concurrent_rpcs or None,
    )
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    service.register(server)
    reflection.enable_server_reflection(
        (*service.service_names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
        server,
    )
    creds = _server_credentials(settings)
    address = f"{settings.host}:{settings.port}"
    try:
        port = server.add_secure_port(address, creds) if creds else server.add_insecure_port(address)
    except RuntimeError as err:
        raise SettingError(f"TAGALONG_{service.name.upper()}_PORT", f"cannot listen on {address}: {err}") from None
    running = RunningServer(server=server, port=port, health=health_servicer, service=service, settings=settings)
    await running.set_serving(False)
    await server.start()
    metrics = start_metrics_server(settings.host, settings.metrics_port)
    if metrics is not None:
        running._metrics, running.metrics_port = metrics
    log.info("listening on %s; starting %s", running.address, service.name)
    try:
        await service.start()
    except BaseException:
        await stop_server(running, grace=0)
        raise
    await running.set_serving(True)
    log.info("%s ready (SERVING)", service.name)
    return running


async def stop_server(running: RunningServer, grace: float | None = None) -> None:
    """NOT_SERVING first (load balancers drain), then let in-flight calls finish within the grace period."""
    grace = running.settings.grace_seconds if grace is None else grace
    with contextlib.suppress(Exception):
        await running.set_serving(False)
    await running.server.stop(grace)
    await running.service.stop()
    if running._metrics is not None:
        running._metrics.shutdown()
        running._metrics.server_close()


@contextlib.asynccontextmanager
async def run_server(service: Any, settings: ServiceSettings, port: int = 0) -> AsyncIterator[RunningServer]:
    """A real server on a free port for tests (the grpc examples' run_server(0) idiom)."""
    settings = settings.model_copy(update={"port": port})
    running = await start_server(service, settings)
    try:
        yield running
    finally:
        await stop_server(running)


async def _serve_until_signal(service: Any, settings: ServiceSettings) -> None:
    running = await start_server(service, settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    waiter = asyncio.create_task(running.server.wait_for_termination())
    stopper = asyncio.create_task(stop.wait())
    await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
    log.info("shutting down %s (grace %.1fs)", service.name, settings.grace_seconds)
    await stop_server(running)
    for task in (waiter, stopper):
        task.cancel()


def serve(service: Any, settings: ServiceSettings) -> None:
    """Process entry point: logging, server, run until SIGTERM. A bad setting -> one line, exit 2."""
    setup_logging(service.name, settings.log_level, settings.log_format)
    try:
        asyncio.run(_serve_until_signal(service, settings))
    except SettingError as err:
        print(f"tagalong-{service.name}: bad setting {err.env_var}: {err.problem}", file=sys.stderr)
        raise SystemExit(2) from None
