"""Server interceptors: auth, request ids, latency metrics and error mapping, written once for all."""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from grpc import aio

from tagalong.runtime.errors import ServiceError, clip_details
from tagalong.runtime.logs import request_id_var
from tagalong.runtime.metrics import RPC_IN_FLIGHT, RPC_LATENCY, RPC_REJECTED

log = logging.getLogger(__name__)

REQUEST_ID_KEY = "x-request-id"
# Health checks stay open so that Kubernetes probes and load balancers need no token.
_OPEN_PREFIXES = ("/grpc.health.v1.Health/",)


def _wrap_handler(
    handler: grpc.RpcMethodHandler,
    unary: Callable[[Callable[..., Awaitable[Any]]], Callable[..., Awaitable[Any]]],
    streaming: Callable[[Callable[..., AsyncIterator[Any]]], Callable[..., AsyncIterator[Any]]],
) -> grpc.RpcMethodHandler:
    """The same kind of handler with its behaviour wrapped (unary-response or streaming-response)."""
    ser, de = handler.response_serializer, handler.request_deserializer
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(unary(handler.unary_unary), de, ser)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(unary(handler.stream_unary), de, ser)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(streaming(handler.unary_stream), de, ser)
    return grpc.stream_stream_rpc_method_handler(streaming(handler.stream_stream), de, ser)


def _metadata(details: grpc.HandlerCallDetails) -> dict[str, str]:
    return {k: v for k, v in (details.invocation_metadata or ()) if isinstance(v, str)}


class AuthInterceptor(aio.ServerInterceptor):
    """Rejects calls without 'authorization: Bearer <token>' with UNAUTHENTICATED before the handler runs."""

    def __init__(self, token: str, service: str) -> None:
        self._expected = f"Bearer {token}".encode()
        self._service = service

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None or handler_call_details.method.startswith(_OPEN_PREFIXES):
            return handler
        given = _metadata(handler_call_details).get("authorization", "").encode()
        if hmac.compare_digest(given, self._expected):
            return handler
        reason = "missing" if not given else "wrong"
        RPC_REJECTED.labels(self._service, f"auth_{reason}").inc()

        async def deny_unary(request: Any, context: aio.ServicerContext) -> Any:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, f"{reason} bearer token")

        async def deny_stream(request: Any, context: aio.ServicerContext) -> AsyncIterator[Any]:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, f"{reason} bearer token")
            yield  # pragma: no cover - makes this an async generator

        return _wrap_handler(handler, lambda _b: deny_unary, lambda _b: deny_stream)


class ObservabilityInterceptor(aio.ServerInterceptor):
    """Request id in a contextvar (and echoed back), latency metrics, and ServiceError -> status code."""

    def __init__(self, service: str) -> None:
        self._service = service

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method
        rid = _metadata(handler_call_details).get(REQUEST_ID_KEY) or uuid.uuid4().hex
        service = self._service

        async def _enter(context: aio.ServicerContext) -> tuple[float, Any]:
            token = request_id_var.set(rid)
            context.set_trailing_metadata(((REQUEST_ID_KEY, rid),))
            RPC_IN_FLIGHT.labels(service).inc()
            return time.perf_counter(), token

        async def _handle_error(exc: BaseException, context: aio.ServicerContext) -> None:
            if isinstance(exc, ServiceError):
                await context.abort(exc.code, clip_details(exc.message))
            log.exception("unhandled error in %s", method)
            await context.abort(grpc.StatusCode.INTERNAL, f"internal error (request id {rid})")

        def _exit(context: aio.ServicerContext, started: float, token: Any, code: str) -> None:
            RPC_IN_FLIGHT.labels(service).dec()
            RPC_LATENCY.labels(service, method, code).observe(time.perf_counter() - started)
            request_id_var.reset(token)

        def _code_of(context: aio.ServicerContext, exc: BaseException | None) -> str:
            if isinstance(exc, ServiceError):
                return exc.code.name
            if isinstance(exc, asyncio.CancelledError):
                return "CANCELLED"
            code = context.code()
            if isinstance(code, grpc.StatusCode):
                return code.name
            return "OK" if exc is None else "INTERNAL"

        def unary(behavior: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
            async def wrapped(request: Any, context: aio.ServicerContext) -> Any:
                started, token = await _enter(context)
                exc: BaseException | None = None
                try:
                    return await behavior(request, context)
                except aio.AbortError:
                    raise
                except BaseException as e:
                    exc = e
                    if isinstance(e, asyncio.CancelledError):
                        raise
                    await _handle_error(e, context)
                finally:
                    _exit(context, started, token, _code_of(context, exc))

            return wrapped

        def streaming(behavior: Callable[..., AsyncIterator[Any]]) -> Callable[..., AsyncIterator[Any]]:
            async def wrapped(request: Any, context: aio.ServicerContext) -> AsyncIterator[Any]:
                started, token = await _enter(context)
                exc: BaseException | None = None
                try:
                    async for item in behavior(request, context):
                        yield item
                except aio.AbortError:
                    raise
                except BaseException as e:
                    exc = e
                    if isinstance(e, (asyncio.CancelledError, GeneratorExit)):
                        raise
                    await _handle_error(e, context)
                finally:
                    _exit(context, started, token, _code_of(context, exc))

            return wrapped

        return _wrap_handler(handler, unary, streaming)
