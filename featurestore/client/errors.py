"""One exception type per API error code. Every one carries ``code`` (the gRPC status
name, which the HTTP API uses too), ``message``, ``details`` (structured, HTTP only:
the gRPC API sends a status and a message) and ``retry_after`` (the seconds the server
asked the client to wait before trying again, or None)."""

from __future__ import annotations

from typing import Any


class FeatureServiceError(Exception):
    """The server answered with an error, or could not be reached (``UnavailableError``)."""

    code = "UNKNOWN"

    def __init__(
        self,
        message: str,
        *,
        details: list[dict[str, Any]] | None = None,
        http_status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(f"{self.code}: {message}")
        self.message = message
        self.details = details or []
        self.http_status = http_status  # None over gRPC
        # Seconds the server asked for before another try (HTTP Retry-After, the gRPC
        # retry-after trailer): a shed join. None: the server asked for nothing.
        self.retry_after = retry_after

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickled (a process pool, multiprocessing, a task queue's worker) as it is:
        ``args`` holds ``"CODE: message"``, which ``__init__`` would prefix again, as
        Exception's own pickling calls ``cls(*args)``; the attributes (``code``,
        ``retryable``, ...) travel as the instance's state."""
        return (_unpickled, (type(self), self.args), self.__dict__)


def _unpickled(cls: type[FeatureServiceError], args: tuple[Any, ...]) -> FeatureServiceError:
    error = cls.__new__(cls)
    error.args = args
    return error


class InvalidArgumentError(FeatureServiceError):
    code = "INVALID_ARGUMENT"


class ArgumentTypeError(InvalidArgumentError, TypeError):
    """An argument of the wrong Python type, refused before anything is sent: a string
    where a list goes (``features="view:f"``, an entity column ``"ab"``: a str is a
    sequence of its characters). INVALID_ARGUMENT as every refused request, and a
    TypeError, which the client raised for ``features="view:f"`` before."""


class ArgumentValueError(InvalidArgumentError, ValueError):
    """An argument of the right type but a value the client will not send, refused before
    anything is sent (a ``traceparent`` that is no W3C trace context): INVALID_ARGUMENT
    as every refused request, and a ValueError, as the client's other bad arguments."""


class FailedPreconditionError(FeatureServiceError):
    """FAILED_PRECONDITION: also the client's own, for a join on a client that is closed."""

    code = "FAILED_PRECONDITION"


class NotFoundError(FeatureServiceError):
    code = "NOT_FOUND"


class AbortedError(FeatureServiceError):
    code = "ABORTED"


class ResourceExhaustedError(FeatureServiceError):
    code = "RESOURCE_EXHAUSTED"


class UnauthenticatedError(FeatureServiceError):
    code = "UNAUTHENTICATED"


class PermissionDeniedError(FeatureServiceError):
    code = "PERMISSION_DENIED"


class InternalError(FeatureServiceError):
    code = "INTERNAL"


class UnavailableError(FeatureServiceError):
    """The server said UNAVAILABLE, or the transport failed (refused, reset, TLS), after
    the client's retries."""

    code = "UNAVAILABLE"
    retryable = True  # False where a retry cannot help (a certificate the client does not trust)


class DeadlineExceededError(FeatureServiceError):
    """The call's deadline passed (on the server, or on the client before an answer)."""

    code = "DEADLINE_EXCEEDED"


class CancelledError(FeatureServiceError):
    code = "CANCELLED"


ERRORS: dict[str, type[FeatureServiceError]] = {
    cls.code: cls
    for cls in (
        InvalidArgumentError,
        FailedPreconditionError,
        NotFoundError,
        AbortedError,
        ResourceExhaustedError,
        UnauthenticatedError,
        PermissionDeniedError,
        InternalError,
        UnavailableError,
        DeadlineExceededError,
        CancelledError,
    )
}

# An HTTP answer without the API's error body (a proxy's, say): the code its status means.
CODE_OF_HTTP_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ABORTED",
    413: "RESOURCE_EXHAUSTED",
    429: "UNAVAILABLE",
    500: "INTERNAL",  # (not retried, as the API's own 500; docs/client.md)
    502: "UNAVAILABLE",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


def error_for(
    code: str,
    message: str,
    details: list[dict[str, Any]] | None = None,
    http_status: int | None = None,
    retry_after: float | None = None,
) -> FeatureServiceError:
    """The exception for an API error code (``FeatureServiceError`` with that code when
    the code is one this client does not know)."""
    cls = ERRORS.get(code)
    if cls is None:
        err = FeatureServiceError(message, details=details, http_status=http_status, retry_after=retry_after)
        err.code = code
        err.args = (f"{code}: {message}",)
        return err
    return cls(message, details=details, http_status=http_status, retry_after=retry_after)
