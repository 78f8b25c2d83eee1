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

The stop. grpc.aio's ``server.stop(grace)`` shuts core down at once (its
``grpc_server_shutdown_and_notify``; the grace only bounds the wait for the calls
handlers have), and core then ends every call it holds that no take-up has matched yet
(its ``ZombifyPending``): the client gets CANCELLED, no handler ever sees the call, and
whatever the grace. Those are calls their clients sent before the stop, queued in core:
with ``grpc.intake_loops`` 0 (grpc.aio's one take-up per wakeup), 4-6 of 8 calls in
flight on a busy worker ended so in every stop (review s55). An outstanding take-up is
matched by an arriving call at once, so core queues none while one is: ``before_stop``
starts ``STOP_LOOPS`` more take-ups of each method given and waits, at most
``SETTLE_SECONDS``, until each has one outstanding; the stop comes next, and the calls
taken up meanwhile are served within its grace. What it cannot help: a call that
reaches core after the stop began, before its client read the GOAWAY (one round trip),
is ended CANCELLED by core on arrival (its ``StartNewRpc``), before Python sees it.
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
# The stop's take-ups per method: as many as the default intake keeps (its calls a
# wakeup), each a pending request in core for the few milliseconds before the stop.
STOP_LOOPS: Final = 16
# How long the stop waits for its take-ups to catch up with the calls core queued: 6-38 ms
# in 6 stops under review s55's gRPC load (8 callers of 3,000-key joins, one worker); 1 s,
# a tenth of the drain, bounds a worker so busy that they never do (it stops anyway).
SETTLE_SECONDS: Final = 1.0
SETTLE_STEP_SECONDS: Final = 0.005


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
        self,
        server: grpc.aio.Server,
        method: str,
        handler: grpc.RpcMethodHandler,
        loops: int,
        *,
        gauged: bool = True,
    ) -> None:
        """``method``: the fully qualified name (``/package.Service/Method``) the handler is
        registered under with ``add_registered_method_handlers``; start after the server.
        ``gauged``: the one intake ``featurestore_grpc_intake_loops`` reports (Join's)."""
        self.method = method
        self.taken = 0  # calls taken up by these loops (grpc's own loop takes up the others)
        self._aio: Any = getattr(server, "_server", None)  # (checked below before any use)
        self._server = server
        self._handler = handler
        self._gauged = gauged
        self._calls: set[asyncio.Task[Any]] = set()  # (the loop holds only weak references)
        self._loops: list[asyncio.Task[None]] = []
        self._waiting = 0  # loops whose take-up is outstanding
        self._resolver: Any = None
        aio: Any = self._aio
        missing = missing_internals(server) if loops > 0 else None
        if missing is None and loops > 0 and not aio.is_running():
            raise RuntimeError("start the gRPC call intake after its server (grpc_intake.py)")
        if loops > 0 and self._prepared(missing):
            self._start(loops)
        self._live = len(self._loops)
        if gauged:
            LOOPS.set(self._live)
            INTERNALS_MISSING.set(1 if loops > 0 and not self._loops else 0)

    def _prepared(self, missing: str | None) -> bool:
        """Whether take-ups can start: grpc's internals are there (``missing`` None) and
        the method's resolver is made; a warning says why not."""
        if missing is None and self._resolver is None:
            try:
                self._resolver = cygrpc._MethodResolver([], {self.method: self._handler})
            except Exception as e:  # (its constructor is not in a signature to check)
                missing = f"cygrpc._MethodResolver([], {{method: handler}}): {e!r}"
        if missing is not None:
            log.warning(
                "grpc %s: %s is not what the gRPC call intake expects; %s calls are taken up "
                "by grpc's own loop alone (one at a time)",
                grpc.__version__,
                missing,
                self.method,
            )
        return missing is None

    def _start(self, loops: int, gauged: bool = True) -> None:
        for _ in range(loops):
            self._loops.append(
                asyncio.create_task(self._take_up(self._aio, self._resolver, gauged), name="grpc-intake")
            )

    async def _take_up(self, aio: Any, resolver: Any, gauged: bool) -> None:
        method, name = self.method.encode(), self.method
        loop = asyncio.get_running_loop()
        calls = self._calls
        try:
            # grpc core fails the outstanding take-ups when the server shuts down; the check
            # and the ask run in one step of the loop, so none is asked for after the stop
            while aio.is_running():
                self._waiting += 1
                try:
                    rpc_state = await aio._request_registered_call(method)
                finally:
                    self._waiting -= 1
                coro = cygrpc._handle_rpc(name, resolver, (), rpc_state, loop, False)
                task = loop.create_task(cygrpc._schedule_rpc_coro(coro, rpc_state, loop, name))
                calls.add(task)
                task.add_done_callback(calls.discard)
                self.taken += 1
        except Exception:
            if not aio.is_running():
                return  # the server's stop: the end of every take-up, not an error
            log.exception("a gRPC call intake loop failed; the others and grpc's own go on")
            if gauged and self._gauged:
                self._live -= 1
                LOOPS.set(self._live)

    def before_stop(self) -> bool:
        """Start the stop's ``STOP_LOOPS`` take-ups (the module docstring, "The stop"); not
        counted in ``featurestore_grpc_intake_loops``. False when grpc's internals are
        missing: nothing started."""
        if not self._prepared(missing_internals(self._server)) or not self._aio.is_running():
            return False
        self._start(STOP_LOOPS, gauged=False)
        return True

    @property
    def outstanding(self) -> bool:
        """One of its take-ups waits in core: core queues no call of its method unmatched."""
        return self._waiting > 0

    async def close(self) -> None:
        """Wait for the loops to end, after the server's stop (which failed their take-ups)."""
        if self._loops and self._aio.is_running():
            raise RuntimeError("close the gRPC call intake after its server's stop (grpc_intake.py)")
        if self._loops:
            _, pending = await asyncio.wait(self._loops, timeout=CLOSE_SECONDS)
            if pending:  # (not seen)
                log.warning("%d gRPC call intake loops did not end after the server's stop", len(pending))


async def before_stop(intakes: list[Intake]) -> bool:
    """Take up every call core queued for the ``intakes``' methods, so that the server's stop,
    next, cancels none of them (the module docstring, "The stop"); True once each has a
    take-up outstanding, False after ``SETTLE_SECONDS`` without (or with grpc's internals
    missing)."""
    started = [intake for intake in intakes if intake.before_stop()]
    if len(started) < len(intakes):
        return False
    loop = asyncio.get_running_loop()
    began = loop.time()
    while True:
        await asyncio.sleep(SETTLE_STEP_SECONDS)
        if all(intake.outstanding for intake in started):
            log.debug("gRPC stop: calls queued in core taken up in %.3f s", loop.time() - began)
            return True
        if loop.time() - began >= SETTLE_SECONDS:
            log.info(
                "gRPC stop: calls still queued in core after %.1f s; the stop cancels those left",
                SETTLE_SECONDS,
            )
            return False
