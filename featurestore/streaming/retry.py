"""Which tile-store failures the stream processor waits out, and the waiting.

The processor's store calls (the batch write, the marks read) are retried until they
succeed or the processor stops, on failures of the store's server rather than of the
call: unreachable, timed out, loading its data, a read-only replica (after a
failover: the client reconnects, in case the address now leads to the new primary),
refusing writes it cannot persist (MISCONF), out of memory, or busy with a long script.
Any other error (a wrong key type, a bug) stops the processor.

Writing a batch again after an error whose outcome is unknown (a timeout: the script
may have run) is safe: the write compares every partition's stored offset first
(``store.py``), so a second write of a batch that landed is refused, and the processor
then finds the stored marks are the batch's own (``StreamProcessor._finish``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, TypeVar

from redis import exceptions as redis_errors
from tenacity import RetryCallState, Retrying, retry_if_exception, wait_exponential

T = TypeVar("T")

# Error replies (their first word) of a server that cannot take the command now, none of
# which means the command itself is wrong.
TRANSIENT_REPLIES = frozenset(
    {"MISCONF", "BUSY", "LOADING", "READONLY", "MASTERDOWN", "NOREPLICAS", "TRYAGAIN", "OOM", "CLUSTERDOWN"}
)
_TRANSIENT_TYPES = (
    redis_errors.ConnectionError,  # refused, reset, BusyLoadingError (LOADING), ...
    redis_errors.TimeoutError,
    redis_errors.ReadOnlyError,  # READONLY: a replica now (failover)
    redis_errors.OutOfMemoryError,  # OOM: maxmemory reached
    redis_errors.TryAgainError,
    redis_errors.ClusterDownError,
    OSError,  # the builtin ConnectionError and TimeoutError too
)


def transient(e: BaseException) -> bool:
    """A failure of the store's server, which a later attempt may not meet."""
    if isinstance(e, _TRANSIENT_TYPES):
        return True
    # redis-py has no class for MISCONF and BUSY replies: a ResponseError with the reply
    return isinstance(e, redis_errors.ResponseError) and str(e).split(" ", 1)[0] in TRANSIENT_REPLIES


def needs_new_connection(e: BaseException) -> bool:
    """A read-only replica answered: its connections stay on it, while the store's
    address may lead to the new primary (failover), so the next attempt reconnects."""
    return isinstance(e, redis_errors.ReadOnlyError) or str(e).startswith("READONLY")


def retrying(
    stop: threading.Event,
    on_retry: Callable[[BaseException], None],
    fn: Callable[..., T],
    *args: Any,
) -> T:
    """``fn(*args)``, tried again after each transient failure (``on_retry`` is told of
    it) until it succeeds or ``stop`` is set, when the last failure is raised (the
    processor's ``run`` ends cleanly on it: a stop, not a failure)."""

    def sleep(seconds: float) -> None:
        stop.wait(seconds)  # a stop ends the wait at once

    def before_sleep(state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        if error is not None:
            on_retry(error)

    for attempt in Retrying(
        retry=retry_if_exception(transient),
        wait=wait_exponential(multiplier=0.1, max=5),
        stop=lambda _state: stop.is_set(),
        sleep=sleep,
        before_sleep=before_sleep,
        reraise=True,
    ):
        with attempt:
            return fn(*args)
    raise AssertionError("unreachable: tenacity either returns or raises")  # pragma: no cover
