"""Mapping of the error model to HTTP statuses and gRPC codes (one table each)."""

from __future__ import annotations

import grpc

from featurestore.errors import Code, FeatureStoreError

HTTP_STATUS: dict[Code, int] = {
    Code.INVALID_ARGUMENT: 400,
    Code.UNAUTHENTICATED: 401,
    Code.PERMISSION_DENIED: 403,
    Code.FAILED_PRECONDITION: 400,
    Code.NOT_FOUND: 404,
    Code.ABORTED: 409,
    Code.RESOURCE_EXHAUSTED: 413,
    Code.INTERNAL: 500,
    Code.UNAVAILABLE: 503,
    Code.DEADLINE_EXCEEDED: 504,
}

GRPC_STATUS: dict[Code, grpc.StatusCode] = {
    Code.INVALID_ARGUMENT: grpc.StatusCode.INVALID_ARGUMENT,
    Code.UNAUTHENTICATED: grpc.StatusCode.UNAUTHENTICATED,
    Code.PERMISSION_DENIED: grpc.StatusCode.PERMISSION_DENIED,
    Code.FAILED_PRECONDITION: grpc.StatusCode.FAILED_PRECONDITION,
    Code.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    Code.ABORTED: grpc.StatusCode.ABORTED,
    Code.RESOURCE_EXHAUSTED: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Code.INTERNAL: grpc.StatusCode.INTERNAL,
    Code.UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    Code.DEADLINE_EXCEEDED: grpc.StatusCode.DEADLINE_EXCEEDED,
}


def http_status(error: FeatureStoreError) -> int:
    """The HTTP status of ``error``: its code's, unless its class names its own (a 415:
    cross_site.UnsupportedMediaType is INVALID_ARGUMENT, as gRPC has no such code)."""
    return getattr(error, "http_status", 0) or HTTP_STATUS[error.code]


# The server's own failures (5xx): only these mark a request span as an error.
SERVER_FAULTS: frozenset[Code] = frozenset({Code.INTERNAL, Code.UNAVAILABLE, Code.DEADLINE_EXCEEDED})


def internal_error(e: BaseException) -> FeatureStoreError:
    """What a caller is told of an unexpected exception: its type, not its message
    (which may carry internals such as hostnames or query text)."""
    return FeatureStoreError(f"internal error: {type(e).__name__}")


# The most UTF-8 bytes of a gRPC status message. It travels as the grpc-message trailer,
# percent-encoded (a non-ASCII byte takes three), and a client drops trailers over its
# metadata limit (grpc's defaults: 8 KiB, dropped at random above it, always above
# 16 KiB), failing the call as RESOURCE_EXHAUSTED instead of with its status.
GRPC_MESSAGE_BYTES = 1024
_SHORTENED = "... (message shortened from {} bytes)"


def grpc_message(message: str) -> str:
    """The message as a gRPC status carries it: at most GRPC_MESSAGE_BYTES of UTF-8, cut
    on a character boundary and saying it was shortened."""
    data = message.encode("utf-8", "backslashreplace")  # a lone surrogate as its escape
    if len(data) <= GRPC_MESSAGE_BYTES:
        return data.decode()
    tail = _SHORTENED.format(len(data))
    return data[: GRPC_MESSAGE_BYTES - len(tail)].decode("utf-8", "ignore") + tail
