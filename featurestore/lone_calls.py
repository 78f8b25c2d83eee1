"""Calls that reach the event loop one at a time, and how many of them are in flight.

uvicorn hands the loop the requests of a whole socket read at once, so the joins of one
wakeup reach the Redis store in the same tick and share its write (auto-pipelining,
sources/redis_batch.py). grpc.aio hands it about one call per wakeup (Redis's
``total_reads_processed``, its socket reads, counted 0.97-0.99 per gRPC join against
0.07 per HTTP join at batch 1): each call pays its own write, its own reply's wakeup
and its own loop cycle.

A transport like that sets ``LONE_CALLS``, in each call's own task, to the count of its
calls in flight (anything with an int ``value``: the in-flight gauge). A store that
coalesces reads may then hold a tick's write a few loop iterations when, as the write
begins, enough other such calls are in flight, so the reads of the calls the loop takes
next share it (sources/redis_batch.py says how long, and what it measured). A context
variable: set in a call's task, it is seen by that call's awaits (and the tasks they
start) only, never by another call or another transport's requests on the same loop.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import Protocol


class InFlight(Protocol):
    """A count of calls in flight: the transport's in-flight gauge."""

    @property
    def value(self) -> int: ...


LONE_CALLS: ContextVar[InFlight | None] = ContextVar("featurestore_lone_calls", default=None)
