"""The calls waiting in front of a worker's gRPC handlers, where its load shedder cannot
see them.

grpc.aio takes up one call at a time from grpc core: its server loop asks core for the
next call and awaits it, one event-loop iteration at least each. While the loop runs
late, calls that have arrived wait in core, unseen by any handler: under twice the
saturation rate at batch 100 (2026-12-06 18:00, a loaded machine) they waited 100-800 ms
there at p99 (the time from their arrival, as their deadline told it, to their handler)
while fewer joins than the shedder's floor were in flight, so it never cut: answered calls
came back 700-900 ms after they were sent, the deadline 500 ms. Over HTTP nothing waits
so: uvicorn reads every readable connection each iteration, and a request read is a join
the shedder counts.

grpc core counts calls as they arrive (channelz: ``callsStarted``, and ``callsSucceeded``
+ ``callsFailed`` as they end), so the calls in progress less those in this process's
handlers is the queue in core, and the shedder counts it as joins in flight
(overload.py). Calls that stay open for long outside our handlers (a health ``Watch``, a
reflection stream) would read as queued for ever: a reading taken while the event loop
runs on time (so nothing can be waiting in core for long) is their ``baseline``, taken
off later readings. A reading costs ~60-130 us (a JSON of the server's counters), once
per 100 ms shedding interval.

channelz is read through ``grpc._cython.cygrpc``, the module the grpcio-channelz package
itself reads it through (its servicer returns the same JSON, parsed into protobuf):
tests/unit/test_grpc_backlog.py fails if that changes.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable

import grpc
from grpc._cython import cygrpc
from prometheus_client import Gauge

log = logging.getLogger(__name__)

QUEUED = Gauge(
    "featurestore_grpc_queued_calls",
    "gRPC calls waiting in grpc core for the worker's event loop to take them up (channelz's "
    "calls in progress less those in handlers), summed over workers, as each worker's load "
    "shedder last read them (once per 100 ms): counted by it as joins in flight.",
    multiprocess_mode="livesum",
)


def server_ids() -> set[int]:
    """The channelz ids of this process's gRPC servers."""
    listing = json.loads(cygrpc.channelz_get_servers(0))
    return {int(s["ref"]["serverId"]) for s in listing.get("server", [])}


class GrpcBacklog:
    """Calls one gRPC server has started that none of its handlers has taken up yet.
    ``in_handlers``: the calls in this process's handlers now (``GrpcApi.in_handlers``)."""

    __slots__ = ("baseline", "in_handlers", "server_id")

    def __init__(self, server_id: int, in_handlers: Callable[[], int]) -> None:
        self.server_id = server_id
        self.in_handlers = in_handlers
        self.baseline = 0

    @classmethod
    def create_server(
        cls, create: Callable[[], grpc.aio.Server], in_handlers: Callable[[], int]
    ) -> tuple[grpc.aio.Server, GrpcBacklog | None]:
        """``create()``'s server and its backlog: the channelz id that appeared with it
        (None, and logged, if not exactly one did: the shedder then sees no backlog)."""
        before = server_ids()
        server = create()
        new = server_ids() - before
        if len(new) != 1:
            log.warning(
                "gRPC's channelz shows %d new servers, not 1: the load shedder sees no gRPC backlog", len(new)
            )
            return server, None
        return server, cls(new.pop(), in_handlers)

    def queued(self, on_time: bool) -> int:
        """The calls waiting in core now. ``on_time``: the event loop ran on time over the
        last interval, so what reads as waiting is calls open outside our handlers. A
        reading that fails is logged, and the backlog reads 0 from then on (the shedder
        goes on without it, as it did before it read one)."""
        if self.server_id < 0:
            return 0
        try:
            found = json.loads(cygrpc.channelz_get_server(self.server_id))["server"]["data"]
            started = int(found.get("callsStarted", 0))  # (channelz leaves out a zero count)
            ended = int(found.get("callsSucceeded", 0)) + int(found.get("callsFailed", 0))
        except Exception:
            log.exception("reading gRPC's channelz failed: the load shedder sees no gRPC backlog from now")
            self.server_id = -1
            return 0
        waiting = started - ended - self.in_handlers()
        if on_time:
            self.baseline = max(0, waiting)  # (below 0: a handler's call that ended in between)
        queued = max(0, waiting - self.baseline)
        QUEUED.set(queued)
        return queued
