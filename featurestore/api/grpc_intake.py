"""How Join calls get from grpc core to their handler: several take-ups outstanding.

grpc.aio takes calls up from grpc core one at a time per method: its server loop asks
core for the next call (``grpc_server_request_registered_call``), awaits it, starts the
call's task and only then asks again. Each take-up waits for an event loop wakeup (core's
completion reaches the loop as a callback, which then wakes the awaiting task), so a busy
loop takes up about one call per iteration, where HTTP's requests are read by the dozen
in one socket read. The calls beyond wait in core, where nothing of ours sees them: not
the load shedder (it counts the joins started) and not the configured deadline (it
counts from the take-up).

``Intake`` keeps ``grpc.intake_loops`` more take-ups of Join outstanding, each a task that
does for one call what grpc.aio's loop does: await the take-up, start the call's task
(grpc's own ``_handle_rpc`` under its ``_schedule_rpc_coro``, which also listens for the
call's cancellation), ask again. Calls taken up together are handled in the same loop
iteration, so their wakeups and their Redis reads are shared. Measured on this 2-core VM
(2 workers, Redis, cache off, closed loop of 64 calls at batch 100 and 32 at batch 1,
interleaved; benchmarks/RESULTS.md, "gRPC and HTTP Join, same server"): Join registered
as a method of its own (``add_registered_method_handlers``, public API) instead of
through a generic handler: +10% QPS at batch 100, +9% at 1; with 16 take-ups besides:
+19% / +21% over the generic handler, server CPU per call -17% / -22%. 4, 16 and 64
take-ups were within each other's noise at batch 100 (1,725, 1,691, 1,707 QPS).

What it reaches into (grpc 1.85; tests/unit/test_grpc_intake.py fails when one of them
changes): ``grpc.aio.Server._server`` (the ``cygrpc.AioServer``), its
``_request_registered_call(method: bytes)``, and cygrpc's ``_MethodResolver``,
``_handle_rpc`` and ``_schedule_rpc_coro``. If one is missing at start, the intake logs a
warning and Join calls are taken up by grpc.aio's loop alone, as before it.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import math
from typing import Any, Final

import grpc
from grpc._cython import cygrpc
from prometheus_client import Gauge

log = logging.getLogger(__name__)

LOOPS = Gauge(
    "featurestore_grpc_intake_loops",
    "Take-ups of gRPC Join calls a worker keeps outstanding besides grpc.aio's own, the "
    "lowest worker's: grpc.intake_loops; fewer when one ended on an error, 0 when the grpc "
    "internals the intake uses are missing (calls then wait in grpc core one take-up at a time).",
    multiprocess_mode="livemin",
)
LOOPS.set(math.inf)  # (a worker starting up is not one with a broken intake)

# The parameters of grpc's internals as the intake calls them (grpc 1.85.1).
HANDLE_RPC: Final = (
    "method_name",
    "method_resolver",
    "interceptors",
    "rpc_state",
    "loop",
    "concurrency_exceeded",
)
SCHEDULE_RPC_CORO: Final = ("rpc_coro", "rpc_state", "loop", "method_name")


def missing_internals(server: grpc.aio.Server) -> str | None:
    """What of grpc's internals the intake needs is missing or changed; None: all there."""
    aio = getattr(server, "_server", None)
    if not callable(getattr(aio, "_request_registered_call", None)):
        return "grpc.aio.Server._server._request_registered_call"
    if not isinstance(getattr(cygrpc, "_MethodResolver", None), type):
        return "cygrpc._MethodResolver"
    for name, params in (("_handle_rpc", HANDLE_RPC), ("_schedule_rpc_coro", SCHEDULE_RPC_CORO)):
        fn = getattr(cygrpc, name, None)
        try:
            if fn is None or tuple(inspect.signature(fn).parameters) != params:
                return f"cygrpc.{name}{params}"
        except (TypeError, ValueError):  # no signature to read
            return f"cygrpc.{name}{params}"
    return None


class Intake:
    """The extra take-ups of one registered method on one running server."""

    def __init__(
        self, server: grpc.aio.Server, method: str, handler: grpc.RpcMethodHandler, loops: int
    ) -> None:
        """``method``: the fully qualified name (``/package.Service/Method``) the handler is
        registered under with ``add_registered_method_handlers``; start after the server."""
        self.method = method
        self.taken = 0  # calls taken up by these loops (grpc's own loop takes up the others)
        self._server = server
        self._handler = handler
        self._calls: set[asyncio.Task[Any]] = set()  # (the loop holds only weak references)
        self._loops: list[asyncio.Task[None]] = []
        self._live = 0
        missing = missing_internals(server) if loops > 0 else None
        if missing is not None:
            log.warning(
                "grpc %s: %s is not what the gRPC call intake expects; Join calls are taken up "
                "by grpc's own loop alone (one at a time)",
                grpc.__version__,
                missing,
            )
            loops = 0
        if loops > 0:
            aio: Any = server._server  # (checked above)
            resolver = cygrpc._MethodResolver([], {method: handler})
            self._loops = [
                asyncio.create_task(self._take_up(aio, resolver), name="grpc-intake") for _ in range(loops)
            ]
        self._live = len(self._loops)
        LOOPS.set(self._live)

    async def _take_up(self, aio: Any, resolver: Any) -> None:
        method, name = self.method.encode(), self.method
        loop = asyncio.get_running_loop()
        calls = self._calls
        try:
            while True:
                # grpc core fails the outstanding take-ups when the server shuts down
                rpc_state = await aio._request_registered_call(method)
                coro = cygrpc._handle_rpc(name, resolver, (), rpc_state, loop, False)
                task = loop.create_task(cygrpc._schedule_rpc_coro(coro, rpc_state, loop, name))
                calls.add(task)
                task.add_done_callback(calls.discard)
                self.taken += 1
        except asyncio.CancelledError:
            raise
        except Exception:
            if aio.is_running():  # (stopping: the end of every take-up, not an error)
                log.exception("a gRPC call intake loop failed; the others and grpc's own go on")
        finally:
            self._live -= 1
            LOOPS.set(self._live)

    async def close(self) -> None:
        """End the loops (after the server's stop: its shutdown has failed their take-ups)."""
        for task in self._loops:
            task.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)
