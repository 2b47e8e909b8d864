"""Stubs of the services the gateway calls, and the translation of their errors for our callers."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import TypeVar

import grpc
from grpc import aio

from gateway.settings import GatewaySettings
from tagalong.runtime.channels import make_channel
from tagalong.runtime.errors import ServiceError
from tagalong.runtime.settings import ClientSettings
from tagalong.v1 import clusterer_pb2_grpc, embedder_pb2_grpc, labelstore_pb2_grpc

T = TypeVar("T")

# Codes that describe the caller's request: passed through unchanged with the service's message.
CALLER_CODES = frozenset({
    grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.ALREADY_EXISTS, grpc.StatusCode.OUT_OF_RANGE,
    grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
})


class DownstreamError(ServiceError):
    """An error of a called service, carrying its status code to our caller."""

    def __init__(self, service: str, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{service}: {details}")
        self.service = service
        self.code = code if code in CALLER_CODES else grpc.StatusCode.UNAVAILABLE
        self.details = details


@contextmanager
def translated(service: str) -> Iterator[None]:
    """Turns an AioRpcError of `service` into a DownstreamError (the runtime maps it to its code)."""
    try:
        yield
    except aio.AioRpcError as err:
        raise DownstreamError(service, err.code(), err.details() or err.code().name) from None


async def stream_translated(service: str, stream: AsyncIterator[T]) -> AsyncIterator[T]:
    with translated(service):
        async for item in stream:
            yield item


def is_transient(err: BaseException) -> bool:
    """Worth another delivery: the service was unreachable, overloaded or too slow."""
    code = err.code if isinstance(err, DownstreamError) else None
    return code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
                    grpc.StatusCode.RESOURCE_EXHAUSTED) or not isinstance(err, ServiceError)


class Services:
    """Channels and stubs to the embedder, label store and clusterer."""

    def __init__(self, settings: GatewaySettings) -> None:
        client = ClientSettings(
            deadline_seconds=settings.call_deadline_seconds,
            max_message_mb=settings.max_message_mb,
            auth_token=settings.auth_token,
        )
        self._channels = [
            make_channel(settings.embedder_addr, client),
            make_channel(settings.labelstore_addr, client),
            make_channel(settings.clusterer_addr, client),
        ]
        self.embedder = embedder_pb2_grpc.EmbedderStub(self._channels[0])
        self.labelstore = labelstore_pb2_grpc.LabelStoreStub(self._channels[1])
        self.clusterer = clusterer_pb2_grpc.ClustererStub(self._channels[2])

    async def close(self) -> None:
        for ch in self._channels:
            await ch.close()
