"""The shared runtime: readiness-driven health, auth, size limits, error mapping, request ids,
reflection, retries, metrics and graceful shutdown — each against a real server on a free port."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import grpc
import pytest
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from hypothesis import given
from hypothesis import strategies as st

from tagalong.devstack.milvus_server import free_port
from tagalong.runtime.channels import make_channel, service_config
from tagalong.runtime.errors import clip_details
from tagalong.runtime.logs import request_id_var
from tagalong.runtime.server import run_server, start_server, stop_server
from tagalong.runtime.settings import ClientSettings, ServiceSettings, load_settings
from tagalong.v1 import embedder_pb2, embedder_pb2_grpc
from tests.unit._echo_service import EchoService, EchoSettings

HERE = Path(__file__).resolve().parent


def _settings(**kw: object) -> EchoSettings:
    return EchoSettings(log_format="text", **kw)  # type: ignore[arg-type]


async def _health(address: str) -> int:
    async with aio.insecure_channel(address) as ch:
        reply = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=""), timeout=2)
        return int(reply.status)


async def test_health_reports_not_serving_while_loading() -> None:
    ready = asyncio.Event()
    settings = _settings(port=free_port())
    starting = asyncio.create_task(start_server(EchoService(ready), settings))
    address = f"127.0.0.1:{settings.port}"
    status = None
    for _ in range(100):
        await asyncio.sleep(0.05)
        try:
            status = await _health(address)
            break
        except grpc.aio.AioRpcError:
            continue
    assert status == health_pb2.HealthCheckResponse.NOT_SERVING
    ready.set()
    running = await starting
    assert await _health(address) == health_pb2.HealthCheckResponse.SERVING
    await stop_server(running, grace=0)


@pytest.mark.parametrize(
    ("metadata", "expected"),
    [
        pytest.param((), grpc.StatusCode.UNAUTHENTICATED, id="missing-token"),
        pytest.param((("authorization", "Bearer wrong"),), grpc.StatusCode.UNAUTHENTICATED, id="wrong-token"),
        pytest.param((("authorization", "s3cret"),), grpc.StatusCode.UNAUTHENTICATED, id="no-bearer-prefix"),
        pytest.param((("authorization", "Bearer s3cret"),), grpc.StatusCode.OK, id="right-token"),
    ],
)
async def test_auth_interceptor(metadata: tuple[tuple[str, str], ...], expected: grpc.StatusCode) -> None:
    service = EchoService()
    async with run_server(service, _settings(auth_token="s3cret")) as running:
        async with aio.insecure_channel(running.address) as ch:
            stub = embedder_pb2_grpc.EmbedderStub(ch)
            try:
                await stub.EmbedImages(embedder_pb2.EmbedImagesRequest(images=[b"x"]), metadata=metadata, timeout=5)
                code = grpc.StatusCode.OK
            except grpc.aio.AioRpcError as err:
                code = err.code()
            assert code == expected
            # Health needs no token (probes), even with auth on.
            assert await _health(running.address) == health_pb2.HealthCheckResponse.SERVING
    # The handler never ran for a rejected call.
    assert sum(service.calls.values()) == (1 if expected == grpc.StatusCode.OK else 0)


async def test_oversized_message_is_resource_exhausted() -> None:
    async with run_server(EchoService(), _settings(max_message_mb=1)) as running:
        async with aio.insecure_channel(running.address) as ch:
            stub = embedder_pb2_grpc.EmbedderStub(ch)
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.EmbedImages(embedder_pb2.EmbedImagesRequest(images=[b"x" * (2 * 1024 * 1024)]), timeout=5)
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            # The server is still fine afterwards.
            ok = await stub.EmbedImages(embedder_pb2.EmbedImagesRequest(images=[b"x"]), timeout=5)
            assert ok.dim == 1


@pytest.mark.parametrize(
    ("payload", "code", "text"),
    [
        pytest.param(b"bad", grpc.StatusCode.INVALID_ARGUMENT, "images[0]: not an image", id="service-error"),
        pytest.param(b"boom", grpc.StatusCode.INTERNAL, "internal error (request id", id="bug-is-internal"),
    ],
)
async def test_errors_map_to_status_codes(payload: bytes, code: grpc.StatusCode, text: str) -> None:
    async with run_server(EchoService(), _settings()) as running, aio.insecure_channel(running.address) as ch:
        stub = embedder_pb2_grpc.EmbedderStub(ch)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.EmbedImages(embedder_pb2.EmbedImagesRequest(images=[payload]), timeout=5)
        assert info.value.code() == code
        assert text in (info.value.details() or "")


@pytest.mark.parametrize("quoted", ["x" * 50_000, "é" * 20_000, "%" * 30_000], ids=["ascii", "utf8", "percent"])
async def test_huge_error_message_keeps_its_code(quoted: str) -> None:
    """An error quoting a huge input must not outgrow the client's trailer limit (16 KiB): the client would
    get RESOURCE_EXHAUSTED "Stream removed" instead of the real code. The start and the reason at the end stay."""
    async with run_server(EchoService(), _settings()) as running, aio.insecure_channel(running.address) as ch:
        stub = embedder_pb2_grpc.EmbedderStub(ch)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.EmbedImages(embedder_pb2.EmbedImagesRequest(images=[f"quote:{quoted}".encode()]), timeout=5)
        details = info.value.details() or ""
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, details[:200]
        assert details.startswith("images[0] 'quote:") and details.endswith("is not an image")
        assert "characters cut" in details


@given(st.text(max_size=3000), st.integers(min_value=200, max_value=4000))
def test_clip_details_fits_the_wire_limit(message: str, limit: int) -> None:
    clipped = clip_details(message, limit)
    wire = sum(1 if 0x20 <= b <= 0x7E and b != 0x25 else 3 for b in clipped.encode("utf-8", "surrogatepass"))
    assert wire <= limit
    if clipped != message:
        head, _, rest = clipped.partition(" … [")
        tail = rest.split("] … ", 1)[1]
        assert message.startswith(head) and message.endswith(tail)
        assert len(head) + len(tail) + int(rest.split(" ", 1)[0]) == len(message)


async def test_request_id_travels_through_the_client_channel() -> None:
    async with run_server(EchoService(), _settings()) as running:
        channel = make_channel(running.address, ClientSettings())
        token = request_id_var.set("rid-1234")
        try:
            stub = embedder_pb2_grpc.EmbedderStub(channel)
            call = stub.EmbedImages(embedder_pb2.EmbedImagesRequest(images=[b"x"]))
            reply = await call
            # The echo service returns the request id it saw in its contextvar.
            assert reply.model_id == "rid-1234"
            trailing = dict(await call.trailing_metadata())
            assert trailing["x-request-id"] == "rid-1234"
        finally:
            request_id_var.reset(token)
            await channel.close()


async def test_client_retries_unavailable_only() -> None:
    service = EchoService()
    async with run_server(service, _settings()) as running:
        channel = make_channel(running.address, ClientSettings(retry_attempts=4))
        stub = embedder_pb2_grpc.EmbedderStub(channel)
        # UNAVAILABLE twice, then OK: the client sees OK after 3 attempts.
        reply = await stub.EmbedImages(embedder_pb2.EmbedImagesRequest(images=[b"unavailable"]))
        assert reply.dim == 1
        assert service.calls["unavailable"] == 3
        # INVALID_ARGUMENT is never retried.
        with pytest.raises(grpc.aio.AioRpcError):
            await stub.EmbedImages(embedder_pb2.EmbedImagesRequest(images=[b"bad"]))
        assert service.calls["bad"] == 1
        await channel.close()
    config = json.loads(service_config(4))
    assert config["methodConfig"][0]["retryPolicy"]["retryableStatusCodes"] == ["UNAVAILABLE"]


async def test_client_channel_applies_a_default_deadline() -> None:
    async with run_server(EchoService(), _settings()) as running:
        channel = make_channel(running.address, ClientSettings(deadline_seconds=0.3))
        stub = embedder_pb2_grpc.EmbedderStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.EmbedImages(embedder_pb2.EmbedImagesRequest(images=[b"sleep:2"]))
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        await channel.close()


async def test_reflection_lists_the_services() -> None:
    async with run_server(EchoService(), _settings()) as running, aio.insecure_channel(running.address) as ch:
        stub = reflection_pb2_grpc.ServerReflectionStub(ch)

        async def requests():  # type: ignore[no-untyped-def]
            yield reflection_pb2.ServerReflectionRequest(list_services="")

        names: list[str] = []
        async for reply in stub.ServerReflectionInfo(requests()):
            names = [s.name for s in reply.list_services_response.service]
    assert "tagalong.v1.Embedder" in names
    assert "grpc.health.v1.Health" in names


async def test_metrics_endpoint_counts_calls() -> None:
    async with run_server(EchoService(), _settings(metrics_port=0)) as running:
        async with aio.insecure_channel(running.address) as ch:
            await embedder_pb2_grpc.EmbedderStub(ch).EmbedImages(embedder_pb2.EmbedImagesRequest(images=[b"x"]))
        assert running.metrics_port
        body = await asyncio.to_thread(
            lambda: urllib.request.urlopen(f"http://127.0.0.1:{running.metrics_port}/metrics", timeout=5).read()
        )
    text = body.decode()
    assert 'tagalong_rpc_seconds_count{code="OK",method="/tagalong.v1.Embedder/EmbedImages",service="echo"}' in text


def test_bad_setting_is_one_clear_line(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TAGALONG_ECHO_PORT", "not-a-port")
    with pytest.raises(SystemExit) as info:
        load_settings(EchoSettings, program="tagalong-echo")
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith("tagalong-echo: bad setting TAGALONG_ECHO_PORT='not-a-port'")


def test_shared_settings_use_one_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TAGALONG_AUTH_TOKEN", "s3cr3t-value")
    monkeypatch.setenv("TAGALONG_LOG_LEVEL", "LOUD")
    with pytest.raises(SystemExit):
        load_settings(EchoSettings)
    monkeypatch.setenv("TAGALONG_LOG_LEVEL", "DEBUG")
    settings = load_settings(EchoSettings)
    assert settings.auth_token is not None and settings.auth_token.get_secret_value() == "s3cr3t-value"
    assert "s3cr3t-value" not in repr(settings)  # secrets are never printed
    assert isinstance(settings, ServiceSettings)


def test_sigterm_lets_in_flight_calls_finish_within_grace() -> None:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(HERE.parent.parent)}
    proc = subprocess.Popen(
        [sys.executable, str(HERE / "_echo_service.py"), str(port), "5"], env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    try:
        address = f"127.0.0.1:{port}"
        from tagalong.devstack.__main__ import wait_serving

        assert wait_serving(address, timeout=30, proc=proc), "echo server did not start"
        with grpc.insecure_channel(address) as ch:
            stub = embedder_pb2_grpc.EmbedderStub(ch)
            future = stub.EmbedImages.future(embedder_pb2.EmbedImagesRequest(images=[b"sleep:1.5"]), timeout=20)
            time.sleep(0.4)  # the call is in flight
            started = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            reply = future.result()
            assert reply.dim == 1, "the in-flight call did not complete"
            # New calls are refused while draining.
            with pytest.raises(grpc.RpcError):
                stub.EmbedImages(embedder_pb2.EmbedImagesRequest(images=[b"x"]), timeout=3)
        proc.wait(timeout=10)
        assert time.monotonic() - started < 5 + 2
        assert proc.returncode == 0, proc.stdout.read().decode() if proc.stdout else ""
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.mark.parametrize(
    ("host", "token", "allow", "refused"),
    [
        pytest.param("127.0.0.1", None, False, False, id="loopback-no-token"),
        pytest.param("0.0.0.0", None, False, True, id="network-no-token"),
        pytest.param("0.0.0.0", "tok-1", False, False, id="network-with-token"),
        pytest.param("0.0.0.0", None, True, False, id="network-explicitly-open"),
    ],
)
async def test_auth_is_required_off_loopback(host: str, token: str | None, allow: bool, refused: bool) -> None:
    from tagalong.runtime.settings import SettingError

    settings = _settings(host=host, auth_token=token, allow_unauthenticated=allow)
    if refused:
        with pytest.raises(SettingError, match="TAGALONG_AUTH_TOKEN"):
            async with run_server(EchoService(), settings):
                pass
    else:
        async with run_server(EchoService(), settings) as running:
            assert running.port > 0
