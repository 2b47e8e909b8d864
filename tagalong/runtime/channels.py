"""Client channels to tagalong services: deadlines on every call, retries for UNAVAILABLE only,
auth token and request id sent along, message size limits, optional TLS."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import grpc
from grpc import aio

from tagalong.runtime.interceptors import REQUEST_ID_KEY
from tagalong.runtime.logs import request_id_var
from tagalong.runtime.settings import ClientSettings


def service_config(retry_attempts: int) -> str:
    """Retry policy: UNAVAILABLE only (the call never reached a handler, or the server is draining)."""
    return json.dumps(
        {
            "methodConfig": [
                {
                    "name": [{}],
                    "retryPolicy": {
                        "maxAttempts": retry_attempts,
                        "initialBackoff": "0.1s",
                        "maxBackoff": "2s",
                        "backoffMultiplier": 2,
                        "retryableStatusCodes": ["UNAVAILABLE"],
                    },
                }
            ]
        }
    )


def channel_options(settings: ClientSettings) -> list[tuple[str, Any]]:
    size = settings.max_message_mb * 1024 * 1024
    return [
        ("grpc.max_receive_message_length", size),
        ("grpc.max_send_message_length", size),
        ("grpc.enable_retries", 1),
        ("grpc.service_config", service_config(settings.retry_attempts)),
        # Round-robin over every address a (headless) DNS name resolves to.
        ("grpc.lb_policy_name", "round_robin"),
        ("grpc.keepalive_time_ms", 60_000),
    ]


def call_metadata(settings: ClientSettings, metadata: Sequence[tuple[str, str]] | None = None) -> list[tuple[str, str]]:
    """Metadata for an outgoing call: the caller's, the auth token, and the current request id."""
    out = list(metadata or ())
    keys = {k for k, _ in out}
    if settings.auth_token is not None and "authorization" not in keys:
        out.append(("authorization", f"Bearer {settings.auth_token.get_secret_value()}"))
    rid = request_id_var.get()
    if rid and REQUEST_ID_KEY not in keys:
        out.append((REQUEST_ID_KEY, rid))
    return out


def _channel_credentials(settings: ClientSettings) -> grpc.ChannelCredentials | None:
    if settings.tls_ca_file is None:
        return None
    ca = settings.tls_ca_file.read_bytes()
    cert = settings.tls_cert_file.read_bytes() if settings.tls_cert_file else None
    key = settings.tls_key_file.read_bytes() if settings.tls_key_file else None
    return grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)


class _DefaultsInterceptor(
    aio.UnaryUnaryClientInterceptor,
    aio.UnaryStreamClientInterceptor,
    aio.StreamUnaryClientInterceptor,
    aio.StreamStreamClientInterceptor,
):
    """Adds a deadline when the caller set none, the auth token and the request id."""

    def __init__(self, settings: ClientSettings) -> None:
        self._settings = settings

    def _details(self, d: aio.ClientCallDetails) -> aio.ClientCallDetails:
        timeout = d.timeout if d.timeout is not None else self._settings.deadline_seconds
        metadata = aio.Metadata(*call_metadata(self._settings, list(d.metadata or ())))
        return aio.ClientCallDetails(d.method, timeout, metadata, d.credentials, d.wait_for_ready)

    async def intercept_unary_unary(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return await continuation(self._details(client_call_details), request)

    async def intercept_unary_stream(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return await continuation(self._details(client_call_details), request)

    async def intercept_stream_unary(self, continuation: Any, client_call_details: Any, request_iterator: Any) -> Any:
        return await continuation(self._details(client_call_details), request_iterator)

    async def intercept_stream_stream(self, continuation: Any, client_call_details: Any, request_iterator: Any) -> Any:
        return await continuation(self._details(client_call_details), request_iterator)


def make_channel(target: str, settings: ClientSettings | None = None) -> aio.Channel:
    """An asyncio channel to a tagalong service (TLS when TAGALONG_TLS_CA_FILE is set)."""
    settings = settings or ClientSettings()
    options = channel_options(settings)
    interceptors = [_DefaultsInterceptor(settings)]
    creds = _channel_credentials(settings)
    if creds is not None:
        return aio.secure_channel(target, creds, options=options, interceptors=interceptors)
    return aio.insecure_channel(target, options=options, interceptors=interceptors)


def make_sync_channel(target: str, settings: ClientSettings | None = None) -> grpc.Channel:
    """A blocking channel (SDK, CLI); callers pass call_metadata() and a timeout on each call."""
    settings = settings or ClientSettings()
    creds = _channel_credentials(settings)
    if creds is not None:
        return grpc.secure_channel(target, creds, options=channel_options(settings))
    return grpc.insecure_channel(target, options=channel_options(settings))
