"""The calls waiting in front of a worker's gRPC handlers, where its load shedder cannot
see them.

grpc.aio takes up one call at a time from grpc core: its server loop asks core for the
next call and awaits it, an event-loop iteration at least each. While the loop runs late,
calls that have arrived wait in core, unseen by any handler: under twice the saturation
rate at batch 100 (2026-12-06 18:00, a loaded machine) they waited 100-800 ms there at p99
(from their arrival, as their deadline told it, to their handler) while fewer joins than
the shedder's floor were in flight, so it never cut: answered calls came back 700-900 ms
after they were sent, the deadline 500 ms. Over HTTP nothing waits so: uvicorn reads every
readable connection each iteration, and a request read is a join the shedder counts.

grpc core counts calls as they arrive (channelz's ``callsStarted``), and ``TakeUps``, a
server interceptor (grpc runs it for every call it hands to Python: health, reflection
and unknown methods too), counts those taken up, so the queue in core is the one less the
other. Calls core ends without handing them over would count for ever, so the server
counting its queue has core's own bound on it lifted (``PENDING_OPTIONS``: by default core
ends calls at random past 1,000 waiting and all past 3,000; review 32 saw 35 of 1,400 so
ended); what is left (calls waiting longer than 30 s, which core ends) is set right by an
interval with the loop on time and no call taken up (``count``). Measured with core's bound
at 32 or 64 (2026-12-06 18:39): the calls it ended read as waiting under any steady load,
and the worker shed 66% of half its saturation rate after the overload. A reading costs ~60-130 us (channelz's JSON of the
server's counters), once per 100 ms shedding interval; the interceptor an await a call.

channelz is read through ``grpc._cython.cygrpc``, the module the grpcio-channelz package
itself reads it through (its servicer returns the same JSON, parsed into protobuf):
tests/unit/test_grpc_backlog.py fails if that changes, and a failure here is logged and
leaves the shedder without the queue, never the worker without gRPC.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from prometheus_client import Gauge

log = logging.getLogger(__name__)

QUEUED = Gauge(
    "featurestore_grpc_queued_calls",
    "gRPC calls waiting in grpc core for the worker's event loop to take them up (channelz's "
    "calls started less those taken up), summed over workers, as each worker's load shedder "
    "last read them (once per 100 ms; 0 with limits.shed or limits.shed_grpc_queue off).",
    multiprocess_mode="livesum",
)


# Core's bound on calls waiting for Python, lifted: the queue read here is what bounds them
# (with the shedder), and a call core ended itself would read as waiting. Streams a
# connection may open (grpc.max_concurrent_streams) still bound what a client can queue.
PENDING_OPTIONS = (
    ("grpc.server.max_pending_requests", 1_000_000),
    ("grpc.server.max_pending_requests_hard_limit", 1_000_000),
)


class TakeUps(grpc.aio.ServerInterceptor):  # type: ignore[misc]  # grpc.aio has no type hints
    """Counts the calls grpc hands to Python, and tells ``on_take_up`` of each."""

    def __init__(self, on_take_up: Callable[[], None]) -> None:
        self.taken = 0
        self.on_take_up = on_take_up

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        self.taken += 1
        self.on_take_up()
        return await continuation(handler_call_details)


def _servers() -> list[dict[str, Any]]:
    """channelz's listing of this process's gRPC servers, every page of it."""
    from grpc._cython import cygrpc

    found: list[dict[str, Any]] = []
    while True:
        start = int(found[-1]["ref"]["serverId"]) + 1 if found else 0
        page = json.loads(cygrpc.channelz_get_servers(start))
        found += page.get("server", [])
        if page.get("end", True) or not page.get("server"):
            return found


def server_ids() -> set[int]:
    """The channelz ids of this process's gRPC servers."""
    return {int(s["ref"]["serverId"]) for s in _servers()}


class GrpcBacklog:
    """Calls one gRPC server has started that Python has not taken up yet."""

    __slots__ = ("dropped", "server_id", "take_ups", "taken_at_read")

    def __init__(self, server_id: int, take_ups: TakeUps) -> None:
        self.server_id = server_id
        self.take_ups = take_ups
        self.dropped = 0  # calls core started and ended without handing them over (inferred)
        self.taken_at_read = take_ups.taken

    @classmethod
    def create_server(
        cls, create: Callable[[TakeUps], grpc.aio.Server], on_take_up: Callable[[], None]
    ) -> tuple[grpc.aio.Server, GrpcBacklog | None]:
        """``create(interceptor)``'s server and its backlog: the channelz id that appeared
        with it. None (logged) if channelz cannot be read or not exactly one id appeared (a
        server created on another thread meanwhile): the shedder then sees no queue."""
        take_ups = TakeUps(on_take_up)
        try:
            before = server_ids()
        except Exception:
            log.exception("gRPC's channelz cannot be read: the load shedder sees no gRPC queue")
            return create(take_ups), None
        server = create(take_ups)
        try:
            new = server_ids() - before
        except Exception:
            log.exception("gRPC's channelz cannot be read: the load shedder sees no gRPC queue")
            return server, None
        if len(new) != 1:
            log.warning(
                "gRPC's channelz shows %d new servers, not 1: the load shedder sees no gRPC queue", len(new)
            )
            return server, None
        return server, cls(new.pop(), take_ups)

    def queued(self, on_time: bool) -> int:
        """The calls waiting in core now. ``on_time``: the event loop ran on time over the
        interval since the last reading. A reading that fails (the server stopped, or
        channelz changed) is logged once, and the queue reads none from then on."""
        if self.server_id < 0:
            return 0
        from grpc._cython import cygrpc

        try:
            found = json.loads(cygrpc.channelz_get_server(self.server_id))["server"]["data"]
            started = int(found.get("callsStarted", 0))  # (a count of 0 may be left out)
        except Exception as e:
            log.warning(
                "reading gRPC's channelz failed (%s): the load shedder sees no gRPC queue from now", e
            )
            self.server_id = -1
            QUEUED.set(0)
            return 0
        queued = self.count(started, self.take_ups.taken, on_time)
        QUEUED.set(queued)
        return queued

    def count(self, started: int, taken: int, on_time: bool) -> int:
        """The queue from the counts: calls started less those taken up, less those core
        ended itself (``dropped``): nothing counts these, so an interval with the loop on
        time and no call taken up (a call waiting would have been) sets the queue to none."""
        if on_time and taken == self.taken_at_read:
            self.dropped = started - taken
        self.taken_at_read = taken
        return max(0, started - taken - self.dropped)

    def close(self) -> None:
        """The server is stopping: read no more (its channelz entry goes with it)."""
        self.server_id = -1
        QUEUED.set(0)
