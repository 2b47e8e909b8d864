"""Errors that pure service code raises and the server turns into the right gRPC status code.

Cores never import grpc: they raise these, and the error-mapping interceptor aborts the call with the
matching code and the message. Anything else that escapes a handler is a bug: INTERNAL, logged.
"""

from __future__ import annotations

from collections.abc import Iterable

import grpc


class ServiceError(Exception):
    """Base class: a caller-visible error with a gRPC status code."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(ServiceError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(ServiceError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(ServiceError):
    code = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(ServiceError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class ResourceExhausted(ServiceError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unavailable(ServiceError):
    code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceeded(ServiceError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class Unauthenticated(ServiceError):
    code = grpc.StatusCode.UNAUTHENTICATED


# gRPC sends the status message percent-encoded in the grpc-message trailer. A client refuses trailers over its
# metadata limit (8 KiB soft, 16 KiB hard by default) and then reports RESOURCE_EXHAUSTED "Stream removed"
# instead of the real status, so a message that quotes a huge input (a 20 kB path) would lose its code.
MAX_DETAILS_BYTES = 2048


def _wire_bytes(text: str) -> int:
    return sum(1 if 0x20 <= b <= 0x7E and b != 0x25 else 3 for b in text.encode("utf-8", "surrogatepass"))


def clip_details(message: str, limit: int = MAX_DETAILS_BYTES) -> str:
    """`message` cut in the middle so that its percent-encoded form (what goes on the wire) stays within `limit`
    bytes. The start and the end, where the reason usually is, are kept: two thirds and one third of the room."""
    if _wire_bytes(message) <= limit:
        return message
    room = limit - 64  # for the note in the middle

    def fit(chars: Iterable[str], budget: float) -> int:
        n = used = 0
        for ch in chars:
            used += _wire_bytes(ch)
            if used > budget:
                break
            n += 1
        return n

    head = fit(message, 2 * room / 3)
    tail = fit(reversed(message[head:]), room - _wire_bytes(message[:head]))
    cut = len(message) - head - tail
    return f"{message[:head]} … [{cut} characters cut] … {message[len(message) - tail:]}"
