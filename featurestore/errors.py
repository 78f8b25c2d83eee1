"""The error model shared by every layer; the API adapters map it to HTTP and gRPC.

A ``FeatureStoreError`` carries a canonical code (the gRPC status name), a message a
user can act on, and optional structured details. Nothing here imports grpc or
starlette: the mapping tables live in the API layer.
"""

from __future__ import annotations

import enum
from typing import Any


class Code(enum.Enum):
    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    NOT_FOUND = "NOT_FOUND"
    RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"  # over a key or body limit (HTTP 413)
    ABORTED = "ABORTED"  # compare-and-swap conflict (HTTP 409)
    FAILED_PRECONDITION = "FAILED_PRECONDITION"
    UNAVAILABLE = "UNAVAILABLE"
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
    INTERNAL = "INTERNAL"
    UNAUTHENTICATED = "UNAUTHENTICATED"  # no valid bearer token (HTTP 401)
    PERMISSION_DENIED = "PERMISSION_DENIED"  # a valid token without the scope the route needs (403)


# A name or value the caller sent is repeated in an error's message and details up to this
# many characters: a 20 KB name would otherwise make a 20 KB error (docs/api.md, "Errors").
SHOWN_CHARS = 100


def quoted(value: object) -> str:
    """A caller's value for an error message: its repr, or, when longer than SHOWN_CHARS,
    the repr of its start and how long it was (``'xxxx'... (20000 characters)``)."""
    if isinstance(value, str):
        if len(value) <= SHOWN_CHARS:
            return repr(value)
        return f"{value[:SHOWN_CHARS]!r}... ({len(value)} characters)"
    try:
        text = repr(value)
    except ValueError:  # an int of more digits than repr writes
        return f"<{type(value).__name__}>"
    return text if len(text) <= SHOWN_CHARS else f"{text[:SHOWN_CHARS]}... ({len(text)} characters)"


def clipped(name: str) -> str:
    """A caller's name for an error's details: as sent, or its first SHOWN_CHARS
    characters and ``...``."""
    return name if len(name) <= SHOWN_CHARS else name[:SHOWN_CHARS] + "..."


class FeatureStoreError(Exception):
    code: Code = Code.INTERNAL

    def __init__(self, message: str, *, details: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or []

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code.value, "message": self.message, "details": self.details}


class InvalidArgument(FeatureStoreError):
    code = Code.INVALID_ARGUMENT


class NotFound(FeatureStoreError):
    code = Code.NOT_FOUND


class LimitExceeded(FeatureStoreError):
    code = Code.RESOURCE_EXHAUSTED


class Conflict(FeatureStoreError):
    code = Code.ABORTED


class FailedPrecondition(FeatureStoreError):
    code = Code.FAILED_PRECONDITION


class Unavailable(FeatureStoreError):
    code = Code.UNAVAILABLE


class Overloaded(Unavailable):
    """A worker shed the request at its start: it could not have answered it within its
    deadline (HTTP 503 with Retry-After; gRPC says RESOURCE_EXHAUSTED instead)."""


class DeadlineExceeded(FeatureStoreError):
    code = Code.DEADLINE_EXCEEDED


class Unauthenticated(FeatureStoreError):
    code = Code.UNAUTHENTICATED


class PermissionDenied(FeatureStoreError):
    code = Code.PERMISSION_DENIED


class DefinitionError(InvalidArgument):
    """Invalid feature definitions; the message names file, object and field."""
