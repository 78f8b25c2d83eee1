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
call's cancellation), ask again while the server runs. So up to 1 + ``intake_loops`` Join
calls are taken up per wakeup and handled in the same loop iteration, sharing their
wakeups. Measured against none on this 2-core VM (2 workers, Redis, cache off, 32
callers over 4 channels a load process, 3 interleaved rounds; 2026-12-06 20:46,
benchmarks/results/grpc-intake-ab.md): QPS +23% / +13% / +8% at batch 1 / 10 / 100,
server CPU a call -19% / -14% / -2%. Registering Join as a method of its own
(``add_registered_method_handlers``, public API) instead of through a generic handler is
part of it: in scratch runs with 16 channels a process (benchmarks/results/experiments.md,
"gRPC call intake") it gave about half of the +18% QPS (-16% CPU) that 8 take-ups gave at
batch 100. 4, 16 and 64 take-ups measured the same at batch 100; 16 is among them (an
outstanding take-up costs core one pending request).

What differs from grpc's loop: grpc's server interceptors and ``maximum_concurrent_rpcs``
are not applied to the calls these loops take up (Python cannot read them from the
server); ``create_server`` sets neither, and tests/unit/test_grpc_intake.py fails if it
does. A loop whose take-up fails while the server runs ends, logged and counted down in
``featurestore_grpc_intake_loops``; the others and grpc's own loop go on (where grpc's own
loop fails, grpc.aio logs it and shuts the whole server down: its
``_serving_task_crash_handler``).

What it reaches into (grpc 1.85; tests/unit/test_grpc_intake.py fails when one of them
changes): ``grpc.aio.Server._server`` (the ``cygrpc.AioServer``), its
``_request_registered_call(method: bytes)`` and ``is_running()``, and cygrpc's
``_MethodResolver``, ``_handle_rpc`` and ``_schedule_rpc_coro``. If one is missing at
start, the intake logs a warning, ``featurestore_grpc_intake_internals_missing`` reads 1,
and Join calls are taken up by grpc.aio's loop alone.
Order matters, and is checked: an intake starts on a running server and closes after its
stop. A take-up outstanding in core holds memory of its Python object, so cancelling one
on a running server (or asking core for one after its stop) crashes the process
(reproduced on grpc 1.85.1).
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
    "lowest worker's: grpc.intake_loops, fewer when one ended on an error, 0 when configured "
    "so or when the grpc internals the intake uses are missing (Join calls are then taken up "
    "one per event loop wakeup). A worker stopping keeps its value.",
    multiprocess_mode="livemin",
)
LOOPS.set(math.inf)  # (a worker starting up is not one with a broken intake)
INTERNALS_MISSING = Gauge(
    "featurestore_grpc_intake_internals_missing",
    "1 when a worker found the grpc internals the gRPC call intake uses missing or changed "
    "(logged at start: grpc upgraded past what it was built for) and takes Join calls up "
    "one per event loop wakeup; 0 otherwise, and when grpc.intake_loops is 0 (nothing is "
    "checked then): it tells a fallback's 0 in featurestore_grpc_intake_loops from a "
    "configured one.",
    multiprocess_mode="livemax",
)

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
REQUEST: Final = ("method",)
# For the loops to see their take-ups failed after the stop: core fails them as the stop
# begins and the loops end in the next iterations (how long that takes was not measured;
# none was left over in review 35's 12 rounds of random stops under load, with 5 s);
# bounded so a drain cannot hang on one.
CLOSE_SECONDS: Final = 1.0


def missing_internals(server: grpc.aio.Server) -> str | None:
    """What of grpc's internals the intake needs is missing or changed; None: all there."""
    aio = getattr(server, "_server", None)
    for where, fn, params in (
        (
            "grpc.aio.Server._server._request_registered_call",
            getattr(aio, "_request_registered_call", None),
            REQUEST,
        ),
        ("grpc.aio.Server._server.is_running", getattr(aio, "is_running", None), ()),
        ("cygrpc._handle_rpc", getattr(cygrpc, "_handle_rpc", None), HANDLE_RPC),
        ("cygrpc._schedule_rpc_coro", getattr(cygrpc, "_schedule_rpc_coro", None), SCHEDULE_RPC_CORO),
    ):
        if _parameters(fn) != params:
            return f"{where}{params}"
    if not isinstance(getattr(cygrpc, "_MethodResolver", None), type):
        return "cygrpc._MethodResolver"
    return None


def _parameters(fn: Any) -> tuple[str, ...] | None:
    try:
        return tuple(inspect.signature(fn).parameters) if callable(fn) else None
    except (TypeError, ValueError):  # no signature to read
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
        self._aio: Any = getattr(server, "_server", None)  # (checked below before any use)
        self._calls: set[asyncio.Task[Any]] = set()  # (the loop holds only weak references)
        self._loops: list[asyncio.Task[None]] = []
        aio: Any = self._aio
        missing = missing_internals(server) if loops > 0 else None
        if missing is None and loops > 0 and not aio.is_running():
            raise RuntimeError("start the gRPC call intake after its server (grpc_intake.py)")
        resolver = None
        if missing is None and loops > 0:
            try:
                resolver = cygrpc._MethodResolver([], {method: handler})
            except Exception as e:  # (its constructor is not in a signature to check)
                missing = f"cygrpc._MethodResolver([], {{method: handler}}): {e!r}"
        if missing is not None:
            log.warning(
                "grpc %s: %s is not what the gRPC call intake expects; Join calls are taken up "
                "by grpc's own loop alone (one at a time)",
                grpc.__version__,
                missing,
            )
        elif loops > 0:
            self._loops = [
                asyncio.create_task(self._take_up(aio, resolver), name="grpc-intake") for _ in range(loops)
            ]
        self._live = len(self._loops)
        LOOPS.set(self._live)
        INTERNALS_MISSING.set(0 if missing is None else 1)

    async def _take_up(self, aio: Any, resolver: Any) -> None:
        method, name = self.method.encode(), self.method
        loop = asyncio.get_running_loop()
        calls = self._calls
        try:
            # grpc core fails the outstanding take-ups when the server shuts down; the check
            # and the ask run in one step of the loop, so none is asked for after the stop
            while aio.is_running():
                rpc_state = await aio._request_registered_call(method)
                coro = cygrpc._handle_rpc(name, resolver, (), rpc_state, loop, False)
                task = loop.create_task(cygrpc._schedule_rpc_coro(coro, rpc_state, loop, name))
                calls.add(task)
                task.add_done_callback(calls.discard)
                self.taken += 1
        except Exception:
            if not aio.is_running():
                return  # the server's stop: the end of every take-up, not an error
            log.exception("a gRPC call intake loop failed; the others and grpc's own go on")
            self._live -= 1
            LOOPS.set(self._live)

    async def close(self) -> None:
        """Wait for the loops to end, after the server's stop (which failed their take-ups)."""
        if self._loops and self._aio.is_running():
            raise RuntimeError("close the gRPC call intake after its server's stop (grpc_intake.py)")
        if self._loops:
            _, pending = await asyncio.wait(self._loops, timeout=CLOSE_SECONDS)
            if pending:  # (not seen)
                log.warning("%d gRPC call intake loops did not end after the server's stop", len(pending))
