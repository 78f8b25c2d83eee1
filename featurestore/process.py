"""One serving process: HTTP (uvicorn) and gRPC (grpc.aio) listeners over one runtime
on one uvloop event loop, signals, and the drain on stop.

Only ``featurestore serve`` imports this module. Several such processes on a host are
the supervisor's job (``featurestore/supervisor.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import resource
import signal
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import uvicorn

from featurestore.api.connections import ConnectionGuard, ConnectionLimits
from featurestore.api.grpc import GrpcApi, create_server
from featurestore.api.http import HttpApi
from featurestore.config import Config, HttpConfig
from featurestore.errors import FailedPrecondition
from featurestore.push import PushService
from featurestore.runtime import Runtime, build_runtime
from featurestore.supervisor import REUSE_PORT_ENV
from featurestore.tracing import setup_tracing

log = logging.getLogger("featurestore")

DRAIN_SECONDS = 10


class _UvicornServer(uvicorn.Server):
    """uvicorn without its own signal handling: the process owns signals."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _reuse_port() -> bool:
    """Only supervised workers share their ports (see ``supervisor.py``)."""
    return os.environ.get(REUSE_PORT_ENV) == "1"


def _listen(host: str, port: int, backlog: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if _reuse_port():
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(backlog)
    sock.set_inheritable(True)
    _warn_if_capped(backlog)
    return sock


def _warn_if_capped(backlog: int) -> None:
    """The kernel silently caps a listen queue at net.core.somaxconn (128 before Linux
    5.4, and in many container images). A full queue drops SYNs, and the client's
    kernel sends them again after 1 s: requests that take 1.0-1.25 s (docs/api.md)."""
    try:
        somaxconn = int(Path("/proc/sys/net/core/somaxconn").read_text())
    except (OSError, ValueError):
        return
    if somaxconn < backlog:
        log.warning(
            "http.backlog %d is capped at net.core.somaxconn %d: bursts of new connections "
            "beyond it wait 1 s for a SYN retransmit (raise the sysctl)", backlog, somaxconn,
        )  # fmt: skip


def _connection_limits(http: HttpConfig) -> ConnectionLimits:
    limits = ConnectionLimits(
        keep_alive=http.keep_alive_seconds,
        header_timeout=http.header_timeout_seconds,
        body_timeout=http.body_timeout_seconds,
        max_header_bytes=http.max_header_bytes,
        max_connections=http.max_connections,
    )
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and limits.max_connections + _OTHER_FILES > soft:
        log.warning(
            "http.max_connections %d is close to the open-file limit %d (ulimit -n): connections "
            "beyond what the limit leaves are refused by accept(), not answered 503",
            limits.max_connections, soft,
        )  # fmt: skip
    return limits


# Files a process holds besides HTTP connections: store pools, gRPC, etcd, logs.
_OTHER_FILES = 200


class Listeners:
    """The HTTP and gRPC servers of one process over one runtime."""

    def __init__(self, rt: Runtime) -> None:
        config = rt.config
        push = PushService(rt.engine)
        mounts: dict[str, Any] = {}
        if rt.lineage is not None and rt.lineage.graph is not None and config.lineage.graphql:
            from lineage.graphql import LineageGraphQL  # the graphql extra: checked by build_lineage

            mounts["/graphql"] = LineageGraphQL(rt.lineage.graph)
        http_api = HttpApi(
            rt.engine,
            push,
            rt.readiness,
            mounts=mounts,
            max_body_bytes=config.limits.max_body_bytes,
            deadline_ms=config.limits.deadline_ms,
        )
        self.grpc_api = GrpcApi(rt.engine, push, config.limits.deadline_ms)
        self.grpc = create_server(config.limits.max_body_bytes, config.grpc, reuse_port=_reuse_port())
        self.grpc_api.register(self.grpc)
        target = f"{config.grpc.host}:{config.grpc.port}"
        if self.grpc.add_insecure_port(target) == 0:
            raise FailedPrecondition(f"cannot bind gRPC on {target}")
        self.sock = _listen(config.http.host, config.http.port, config.http.backlog)
        self.guard = ConnectionGuard(_connection_limits(config.http))
        self.http = _UvicornServer(
            self.guard.uvicorn_config(
                http_api,
                access_log=config.access_log,
                backlog=config.http.backlog,
                timeout_graceful_shutdown=DRAIN_SECONDS,
            )
        )
        self.http_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Serve on both ports; returns once both accept requests (or raises)."""
        await self.grpc.start()
        self.http_task = asyncio.create_task(self.http.serve(sockets=[self.sock]), name="http")
        # uvicorn exposes no startup event, only the flag.
        while not self.http.started and not self.http_task.done():  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        if self.http_task.done():
            await self.http_task  # surfaces the bind/startup error
        await self.grpc_api.set_serving(True)

    async def drain(self) -> None:
        """Stop accepting, let in-flight requests finish (up to ``DRAIN_SECONDS``)."""
        await self.grpc_api.set_serving(False)
        self.http.should_exit = True
        pending = [self.grpc.stop(grace=DRAIN_SECONDS)]
        if self.http_task is not None:
            pending.append(self.http_task)
        await asyncio.gather(*pending, return_exceptions=True)
        self.guard.close()


async def serve(config: Config, on_ready: Callable[[], None] | None = None) -> None:
    """Run one serving process until SIGINT/SIGTERM, then drain and exit."""
    setup_tracing(config.tracing)
    rt = await build_runtime(config)
    listeners = Listeners(rt)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await listeners.start()
    assert listeners.http_task is not None
    # Everything allocated so far (modules, registry, loaded data) lives as long as the
    # process: keep it out of the collector's sight, or each full collection walks the
    # whole heap and stalls the loop for tens of milliseconds.
    gc.collect()
    gc.freeze()
    log.info(
        "serving registry version %d: http://%s:%d grpc %s:%d (pid %d)",
        rt.engine.state.version, config.http.host, config.http.port, config.grpc.host, config.grpc.port, os.getpid(),
    )  # fmt: skip
    if on_ready is not None:
        on_ready()

    stop_wait = asyncio.create_task(stop.wait())
    await asyncio.wait([stop_wait, listeners.http_task], return_when=asyncio.FIRST_COMPLETED)
    log.info("draining in-flight requests")
    rt.stopping = True
    await listeners.drain()
    stop_wait.cancel()
    await rt.close()
    log.info("stopped")


def run_process(config: Config, on_ready: Callable[[], None] | None = None) -> None:
    import uvloop

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(serve(config, on_ready))
