"""One serving process: HTTP (uvicorn) and gRPC (grpc.aio) listeners over one runtime
on one uvloop event loop, signals, and the drain on stop.

Only ``featurestore serve`` imports this module. Several such processes on a host are
the supervisor's job (``featurestore/supervisor.py``).
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import os
import resource
import signal
import socket
import ssl
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from featurestore import collector, metrics, tls_files
from featurestore.api import grpc_intake
from featurestore.api.connections import ConnectionGuard, ConnectionLimits
from featurestore.api.grpc import JOIN_METHOD, PUSH_METHOD, GrpcApi, create_server, server_credentials
from featurestore.api.grpc_intake import Intake
from featurestore.api.http import HttpApi
from featurestore.api.ops import OpsApi
from featurestore.api.uvicorn_server import UvicornServer, start_uvicorn, uvicorn_tls
from featurestore.auth import Authenticator
from featurestore.config import Config, HttpConfig, TlsConfig
from featurestore.errors import FailedPrecondition
from featurestore.overload import LoadShedder
from featurestore.push import PushService
from featurestore.runtime import Runtime, build_runtime
from featurestore.streaming import kernel_load
from featurestore.supervisor import REUSE_PORT_ENV, WORKER_ENV, report_ready
from featurestore.tracing import setup_tracing
from lineage.runs import JobRunEvent

log = logging.getLogger("featurestore")

DRAIN_SECONDS = 10
# How long start-up waits for the stream windows' compiled pass (from the cache: ~0.5 s;
# built first: ~2 s): past it the server starts with numpy and the pass comes in later.
STREAM_KERNEL_WAIT_SECONDS = 20.0


def _reuse_port() -> bool:
    """Only supervised workers share their ports (see ``supervisor.py``)."""
    return os.environ.get(REUSE_PORT_ENV) == "1"


def _listen(host: str, port: int, backlog: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if _reuse_port():
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise FailedPrecondition(f"cannot bind HTTP on {host}:{port}: {e.strerror or e}") from None
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


def connection_limits(http: HttpConfig) -> ConnectionLimits:
    limits = ConnectionLimits(
        keep_alive=http.keep_alive_seconds,
        header_timeout=http.header_timeout_seconds,
        body_timeout=http.body_timeout_seconds,
        write_timeout=http.write_timeout_seconds,
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


def _check_tls(tls: TlsConfig) -> None:
    """Refuse to start on TLS files that cannot be used, naming the setting."""
    if not tls.enabled:
        if tls.key_file or tls.client_ca_file:
            raise FailedPrecondition("tls: key_file and client_ca_file need tls.cert_file")
        return
    if not tls.key_file:
        raise FailedPrecondition("tls.cert_file needs tls.key_file")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    # each file readable, the pair loads (the error says what is wrong, never the key's
    # bytes; never prompts)
    tls_files.load_cert_chain(context, ("tls.cert_file", tls.cert_file), ("tls.key_file", tls.key_file))
    _check_dates(tls.cert_file)
    if tls.client_ca_file:
        tls_files.readable("tls.client_ca_file", tls.client_ca_file)
        try:  # grpc would only say "Failed to bind to address" for a file without a CA
            context.load_verify_locations(tls.client_ca_file)
        except (ssl.SSLError, OSError) as e:
            raise FailedPrecondition(
                f"tls.client_ca_file {tls.client_ca_file}: no PEM CA certificate ({e})"
            ) from None


def _check_dates(cert_file: str) -> None:
    """Refuse an expired serving certificate (every client would refuse it while the
    admin port's /readyz stays 200), warn about one not valid yet (a clock behind the
    issuer's), and export its notAfter per listener for FeatureStoreTLSCertificateExpiry."""
    try:
        not_before, not_after = tls_files.validity(cert_file)
    except (ValueError, IndexError, OSError) as e:  # ssl loaded it: a form this reader does not know
        log.warning(
            "tls.cert_file %s: validity dates not read (%s): its expiry is not exported", cert_file, e
        )
        return
    now = datetime.datetime.now(datetime.UTC)
    if not_after <= now:
        raise FailedPrecondition(
            f"tls.cert_file {cert_file}: the certificate expired on {not_after:%Y-%m-%d %H:%M:%S} UTC: "
            'clients refuse it; renew it (docs/deploy.md, "Certificates")'
        )
    if not_before > now:
        log.warning(
            "tls.cert_file %s: the certificate is not valid before %s UTC: clients refuse it until then "
            "(is this host's clock behind?)", cert_file, f"{not_before:%Y-%m-%d %H:%M:%S}",
        )  # fmt: skip
    for listener in ("http", "grpc"):
        metrics.TLS_CERT_EXPIRY.labels(listener, cert_file).set(not_after.timestamp())


class Listeners:
    """The HTTP and gRPC servers of one process over one runtime (and the admin
    listener, when ``http.admin_port`` is set)."""

    def __init__(self, rt: Runtime) -> None:
        config = rt.config
        _check_tls(config.tls)
        self.auth = Authenticator.from_config(config.auth)
        push = PushService(rt.engine)
        mounts: dict[str, Any] = {}
        if rt.lineage is not None and rt.lineage.graph is not None and config.lineage.graphql:
            from lineage.graphql import LineageGraphQL  # the graphql extra: checked by build_lineage

            mounts["/graphql"] = LineageGraphQL(rt.lineage.graph)
        # One per process: its HTTP and gRPC joins share the event loop they queue on.
        limits = config.limits
        # The shedder samples the loop's lag either way; it sheds only with limits.shed.
        self.shedder = LoadShedder.from_limits(limits)
        shedder = self.shedder if limits.shed else None
        http_api = HttpApi(
            rt.engine,
            push,
            rt.readiness,
            mounts=mounts,
            max_body_bytes=config.limits.max_body_bytes,
            deadline_ms=config.limits.deadline_ms,
            auth=self.auth,
            ops_elsewhere=config.http.admin_port is not None,
            shedder=shedder,
        )
        self.grpc_api = GrpcApi(
            rt.engine, push, config.limits.deadline_ms, self.auth, shedder, unary_join=config.grpc.unary_join
        )
        if "/graphql" in mounts:
            from lineage.page import LineagePage

            # Static and open (a browser cannot send a bearer token with a page load): the
            # page's GraphQL requests carry the token its user enters, when tokens are on.
            page = LineagePage()
            for path in ("/lineage", "/lineage/{asset:path}"):
                http_api.app.add_route(path, page, methods=["GET", "HEAD"], include_in_schema=False)  # type: ignore[arg-type]
        self.grpc = create_server(config.limits.max_body_bytes, config.grpc, reuse_port=_reuse_port())
        self.grpc_api.register(self.grpc)
        host = config.grpc.host
        target = f"[{host}]:{config.grpc.port}" if ":" in host else f"{host}:{config.grpc.port}"  # IPv6: [::]
        try:  # grpc raises RuntimeError where it once returned 0
            if config.tls.enabled:
                bound = self.grpc.add_secure_port(target, server_credentials(config.tls))
            else:
                bound = self.grpc.add_insecure_port(target)
        except RuntimeError:
            bound = 0
        if bound == 0:
            raise FailedPrecondition(
                f"cannot bind gRPC on {target}: the port is in use, or the host is not this machine's"
            )
        conn_limits = connection_limits(config.http)
        self.admin = (
            _AdminListener(config, http_api, conn_limits) if config.http.admin_port is not None else None
        )
        self.sock = _listen(config.http.host, config.http.port, config.http.backlog)
        self.guard = ConnectionGuard(conn_limits, direct=http_api.direct())
        self.http = UvicornServer(
            self.guard.uvicorn_config(
                http_api,
                access_log=config.access_log,
                backlog=config.http.backlog,
                timeout_graceful_shutdown=DRAIN_SECONDS,
                **uvicorn_tls(config.tls),
            ),
            handshake_timeout=config.http.header_timeout_seconds,  # with TLS
        )
        self.http_task: asyncio.Task[None] | None = None
        self.auth_task: asyncio.Task[None] | None = None
        self.shed_task: asyncio.Task[None] | None = None
        self.intake_loops = config.grpc.intake_loops
        self.intakes: list[Intake] = []  # Join's (configured), Push's (at the stop only)

    async def start(self) -> None:
        """Serve on every port; returns once all accept requests (or raises)."""
        await self.grpc.start()
        self.intakes = [
            Intake(self.grpc, JOIN_METHOD, self.grpc_api.handler("Join"), self.intake_loops),
            Intake(self.grpc, PUSH_METHOD, self.grpc_api.handler("Push"), 0, gauged=False),
        ]
        try:
            self.http_task = await start_uvicorn(self.http, self.sock, "http")
            if self.admin is not None:
                self.admin.task = await start_uvicorn(self.admin.server, self.admin.sock, "admin")
        except BaseException:  # the intake's take-ups must end by the server's stop (grpc_intake.py)
            await self.grpc.stop(0)
            for intake in self.intakes:
                await intake.close()
            raise
        if self.auth is not None:
            self.auth_task = asyncio.create_task(self.auth.watch(), name="auth-tokens")
        self.shed_task = asyncio.create_task(self.shedder.watch(), name="load-shedder")
        self.shed_task.add_done_callback(_log_if_failed)
        await self.grpc_api.set_serving(True)

    async def drain(self) -> None:
        """Stop accepting, let in-flight requests finish (up to ``DRAIN_SECONDS``)."""
        await self.grpc_api.set_serving(False)
        self.http.should_exit = True
        # the calls grpc core queued are taken up first: its stop would cancel them
        await grpc_intake.before_stop(self.intakes)
        pending = [self.grpc.stop(grace=DRAIN_SECONDS)]
        if self.http_task is not None:
            pending.append(self.http_task)
        await asyncio.gather(*pending, return_exceptions=True)
        for intake in self.intakes:  # (grpc's stop ended their take-ups)
            await intake.close()
        if self.admin is not None:  # probes answer (readyz: 503, stopping) until the drain ends
            self.admin.server.should_exit = True
            if self.admin.task is not None:
                await asyncio.gather(self.admin.task, return_exceptions=True)
            self.admin.guard.close()
        tasks = [t for t in (self.auth_task, self.shed_task) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.guard.close()


class _AdminListener:
    """/healthz, /readyz and /metrics on ``http.admin_port``: plain HTTP, no token, one
    small uvicorn server beside the serving one, under the same connection limits (a
    client that connects and sends nothing would otherwise hold a socket for ever)."""

    def __init__(self, config: Config, http_api: HttpApi, limits: ConnectionLimits) -> None:
        assert config.http.admin_port is not None
        self.sock = _listen(config.http.host, config.http.admin_port, 128)
        # closes are counted with the serving port's; the open-connections gauge is its alone
        self.guard = ConnectionGuard(limits, count_open=False)
        self.server = UvicornServer(
            self.guard.uvicorn_config(OpsApi(http_api.app), access_log=False, backlog=128)
        )
        self.task: asyncio.Task[None] | None = None


def _log_if_failed(task: asyncio.Task[None]) -> None:
    """A background task that ends by an error says so (the shedder's sampler: its
    watch() has opened the limit, so its worker sheds at the hard cap only)."""
    if not task.cancelled() and (error := task.exception()) is not None:
        log.error("background task %s ended: %r", task.get_name(), error)


async def serve(
    config: Config, on_ready: Callable[[], None] | None = None, runs: Sequence[JobRunEvent] = ()
) -> None:
    """Run one serving process until SIGINT/SIGTERM, then drain and exit. ``runs``: job
    runs of this process recorded before its lineage graph existed (``serve --demo``)."""
    setup_tracing(config.tracing)
    tls_files.check_lineage(config.lineage)  # (stores and registry: where they are built)
    rt = await build_runtime(config)
    # The stream views' compiled windows pass, loading since the stores were prepared: in
    # before the heap is frozen (numba's ~84,000 objects) and before the listeners open (its
    # import in a thread stalls the loop up to ~30 ms). A slow build goes on afterwards.
    await kernel_load.settled(STREAM_KERNEL_WAIT_SECONDS)
    if runs and rt.lineage is not None and rt.lineage.runs.sink is not None:
        await rt.lineage.runs.sink.send_runs(runs)
    listeners = Listeners(rt)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    supervised = WORKER_ENV in os.environ  # started by supervisor.py
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, _on_stop_signal, stop, sig, supervised)
    await listeners.start()
    assert listeners.http_task is not None
    pauses = collector.watch()
    try:
        collector.serve()  # the heap frozen, the serving thresholds (collector.py)
        log.info(
            "serving registry version %d: %s://%s:%d grpc %s:%d%s%s (pid %d)",
            rt.engine.state.version, "https" if config.tls.enabled else "http", config.http.host, config.http.port,
            config.grpc.host, config.grpc.port, " (TLS)" if config.tls.enabled else "",
            "" if config.http.admin_port is None else f", admin http://{config.http.host}:{config.http.admin_port}",
            os.getpid(),
        )  # fmt: skip
        if on_ready is not None:
            on_ready()
        report_ready()  # to the supervisor, if there is one

        stop_wait = asyncio.create_task(stop.wait())
        await asyncio.wait([stop_wait, listeners.http_task], return_when=asyncio.FIRST_COMPLETED)
        log.info("draining in-flight requests")
        rt.stopping = True
        await listeners.drain()
        stop_wait.cancel()
        await rt.close()
    finally:
        collector.unwatch(pauses)
    log.info("stopped")


def _on_stop_signal(stop: asyncio.Event, sig: int, supervised: bool) -> None:
    """The first SIGINT/SIGTERM drains (``serve``); a second one, during the drain,
    exits at once without finishing it (in-flight requests are cut, buffered lineage
    events and metrics lost), with the shell's code for death by that signal.

    A supervisor's worker ignores the repeats: when a whole control group is signalled
    (systemd's default ``KillMode=control-group``, a ``kill`` of every pid) it gets the
    signal once itself and once more forwarded by the supervisor, and that second one
    must not cut its drain. The supervisor escalates for it: SIGKILL after its grace,
    or at once on its own second signal."""
    if not stop.is_set():
        stop.set()
        return
    if supervised:
        log.info("%s again while draining: the supervisor decides when to stop", signal.Signals(sig).name)
        return
    log.warning("second %s while draining: exiting now", signal.Signals(sig).name)
    logging.shutdown()  # the line above reaches its handlers before the exit
    os._exit(128 + sig)


def run_process(
    config: Config, on_ready: Callable[[], None] | None = None, runs: Sequence[JobRunEvent] = ()
) -> None:
    import uvloop

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(serve(config, on_ready, runs))
