"""Composition root: configuration -> components -> HTTP + gRPC servers -> lifecycle.

The only module that knows every concrete class. One process runs one event loop
(uvloop) serving uvicorn and grpc.aio side by side over one ``JoinEngine``; several
such processes on a host are the supervisor's job (``featurestore/supervisor.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import socket
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import uvicorn

from featurestore import metrics
from featurestore.api.grpc import GrpcApi, create_server
from featurestore.api.http import HttpApi
from featurestore.cache import CachedSource, LRUCache
from featurestore.config import Config, StoreConfig
from featurestore.definitions.parser import load_definitions
from featurestore.definitions.snapshot import RegistrySnapshot, fingerprint
from featurestore.emitter import EmitterConfig, LineageEmitter
from featurestore.errors import Conflict, FailedPrecondition, InvalidArgument
from featurestore.health import Readiness
from featurestore.join import JoinEngine, Limits
from featurestore.materialize import Materializer, MaterializeResult, Progress
from featurestore.model import FeatureView
from featurestore.offline import OfflineSource
from featurestore.plan import CanaryRoute, ServingState
from featurestore.push import PushService
from featurestore.registry.base import Registry, RegistryState, load_state
from featurestore.registry.etcd import EtcdRegistry
from featurestore.registry.file import FileRegistry
from featurestore.sources.base import OnlineSource
from featurestore.sources.clickhouse import ClickHouseOptions, ClickHouseSource, check_embedded_workers
from featurestore.sources.memory import MemorySource
from featurestore.sources.redis import RedisOptions, RedisSource
from featurestore.supervisor import REUSE_PORT_ENV, WORKER_ENV
from featurestore.tracing import setup_tracing
from lineage.graph.base import LineageGraph, definition_facts
from lineage.graph.bolt import BoltGraph
from lineage.graph.memory import InMemoryGraph
from lineage.graphql import LineageGraphQL
from lineage.sinks import InProcessSink, KafkaSink, KafkaSinkConfig, LineageSink

log = logging.getLogger("featurestore")


# -- components ---------------------------------------------------------------------


def make_registry(config: Config) -> Registry:
    reg = config.registry
    if reg.kind == "file":
        return FileRegistry(reg.path, config.project)
    if reg.kind == "etcd":
        return EtcdRegistry(reg.endpoints, config.project)
    raise InvalidArgument(f"registry.kind {reg.kind!r} is not supported; use 'file' or 'etcd'")


def make_store(name: str, sc: StoreConfig, config: Config) -> OnlineSource:
    """The raw adapter for one configured store (no cache in front)."""
    if sc.kind == "memory":
        return MemorySource(name)
    if sc.kind == "redis":
        try:
            options = RedisOptions.from_mapping(dict(sc.options))
        except (TypeError, ValueError) as e:
            raise InvalidArgument(f"stores.{name}: {e}") from None
        return RedisSource(name, config.project, options)
    if sc.kind == "clickhouse":
        try:
            ch = ClickHouseOptions.from_mapping(dict(sc.options))
        except (TypeError, ValueError) as e:
            raise InvalidArgument(f"stores.{name}: {e}") from None
        check_embedded_workers(ch, config.workers)
        return ClickHouseSource(name, config.project, ch)
    raise InvalidArgument(f"stores.{name}.kind {sc.kind!r} is not supported by this build")


def with_cache(store: OnlineSource, sc: StoreConfig, config: Config) -> OnlineSource:
    """Remote stores get the LRU cache in front unless the config turns it off."""
    if store.kind == "memory" or not (sc.cache and config.cache.enabled):
        return store
    return CachedSource(store, LRUCache(config.cache.max_entries, config.cache.ttl_seconds))


async def apply_on_start(registry: Registry, config: Config) -> RegistrySnapshot | None:
    """Publish ``registry.definitions`` unless current already holds the same content."""
    path = config.registry.definitions
    if path is None:
        return None
    defs = load_definitions(path, config.registry.definitions_base_dir)
    if defs.project != config.project:
        raise InvalidArgument(
            f"{path}: project {defs.project!r} differs from the server's {config.project!r}"
        )
    for _ in range(5):
        current = await registry.current()
        if current is not None and current.fingerprint == fingerprint(defs):
            return current
        try:
            snap = await registry.publish(
                defs,
                expected_version=current.version if current else None,
                message=f"applied on start from {path}",
            )
            log.info("applied %s as registry version %d", path, snap.version)
            return snap
        except Conflict as e:  # a concurrent apply won: re-read and compare again
            log.info("apply on start raced (%s); re-reading", e.message)
    raise FailedPrecondition("could not apply definitions on start: the registry keeps changing")


@dataclass
class Runtime:
    """Everything one serving process runs."""

    config: Config
    registry: Registry
    stores: dict[str, OnlineSource]
    engine: JoinEngine
    lineage: Lineage | None = None
    stopping: bool = False
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    # Set by the registry watch, cleared by the applier once the change is served;
    # stays set while applying it keeps failing.
    registry_dirty: asyncio.Event = field(default_factory=asyncio.Event)
    registry_apply_error: str | None = None

    def readiness(self) -> Readiness:
        reasons = ["shutting down"] if self.stopping else []
        states = {name: s.state().value for name, s in self.stores.items()}
        # A store that is down does not make the process unready: its views answer
        # UNAVAILABLE within the deadline while every other view still answers, and
        # the store is shared by all replicas, so failing readiness would take the
        # whole fleet out of the load balancer over one backend.
        degraded = [f"store {n} is {st}" for n, st in states.items() if st != "ready"]
        if self.registry_apply_error is not None:
            degraded.append(f"registry change not applied: {self.registry_apply_error}")
        health = self.registry.health()
        registry = {
            "kind": self.config.registry.kind,
            "version": self.engine.state.version,
            "connected": health.connected,
            "seconds_since_contact": round(min(health.seconds_since_contact, 1e9), 3),
        }
        # A registry outage does not make the server unready: it keeps serving the
        # last snapshot it has, and says how stale that may be.
        return Readiness(
            ready=not reasons,
            reasons=tuple(reasons),
            details={
                "status": "stopping" if reasons else "degraded" if degraded else "ok",
                "degraded": degraded,
                "registry_version": self.engine.state.version,
                "registry": registry,
                "stores": states,
            },
        )

    async def close(self) -> None:
        for t in self.tasks:
            t.cancel()
        for t in self.tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        if self.lineage is not None:
            await self.lineage.close()
        for s in self.stores.values():
            await s.close()
        await self.registry.close()


@dataclass
class Lineage:
    """The serving process's lineage parts: emitter, and the graph GraphQL reads."""

    emitter: LineageEmitter
    graph: LineageGraph | None  # None when this process does not serve GraphQL

    async def close(self) -> None:
        await self.emitter.close()
        if self.graph is not None:
            await self.graph.close()


def make_graph(config: Config) -> LineageGraph:
    lc = config.lineage
    if lc.graph == "memory":
        return InMemoryGraph()
    if lc.graph == "bolt":
        return BoltGraph(lc.bolt.uri, lc.bolt.user, lc.bolt.password, lc.bolt.database or None)
    raise InvalidArgument(f"lineage.graph {lc.graph!r} is not supported; use memory or bolt")


async def build_lineage(config: Config, stores: Mapping[str, OnlineSource]) -> Lineage | None:
    lc = config.lineage
    if not lc.enabled:
        return None
    if lc.sink == "memory" and lc.graph != "memory":
        raise InvalidArgument("lineage.sink memory writes the in-process graph: set lineage.graph to memory")
    graph = make_graph(config) if (lc.graphql or lc.sink == "memory") else None
    if graph is not None:
        await graph.start()
    sink: LineageSink
    if lc.sink == "memory":
        assert graph is not None
        sink = InProcessSink(graph)
    elif lc.sink == "kafka":
        k = lc.kafka
        sink = KafkaSink(
            KafkaSinkConfig(
                bootstrap_servers=k.bootstrap_servers,
                topic=k.topic,
                partitions=k.partitions,
                replication_factor=k.replication_factor,
                buffer_messages=k.buffer_messages,
                buffer_seconds=k.buffer_seconds,
            )
        )
    else:
        raise InvalidArgument(f"lineage.sink {lc.sink!r} is not supported; use memory or kafka")

    def table_uri(view: FeatureView) -> str | None:
        store = stores.get(view.online_store)
        return None if store is None else store.table_uri(view)

    service = f"featurestore@{socket.gethostname()}:{config.http.port}"
    worker = os.environ.get(WORKER_ENV)
    if worker is not None:
        # Workers of one server must not share an identity: lineage events are keyed
        # by (window, feature, service), and equal keys count once.
        service += f"/w{worker}"
    emitter = LineageEmitter(
        sink, table_uri, EmitterConfig(lc.window_seconds, lc.queue_size, service=service)
    )
    await emitter.start()
    return Lineage(emitter, graph)


async def prepare_views(stores: Mapping[str, OnlineSource], snapshots: Iterable[RegistrySnapshot]) -> None:
    """Hand every store the complete set of views it serves until the next call: those
    of the snapshots being served now and those about to be. A store may then drop
    whatever it holds for any other view layout. Fails naming a missing store."""
    by_store: dict[str, dict[tuple[str, str], FeatureView]] = {name: {} for name in stores}
    for snapshot in snapshots:
        for view in snapshot.definitions.views.values():
            if view.online_store not in stores:
                raise FailedPrecondition(
                    f"feature view {view.name!r} uses online store {view.online_store!r}, "
                    f"which this server does not configure (stores: {', '.join(sorted(stores))})"
                )
            by_store[view.online_store][(view.name, view.layout)] = view
    for name, views in by_store.items():
        await stores[name].prepare(list(views.values()))


async def build_runtime(config: Config) -> Runtime:
    registry = make_registry(config)
    reg = await load_state(registry)
    if reg.snapshot is None:
        raise FailedPrecondition(
            f"the registry has no snapshot for project {config.project!r}: "
            "run `featurestore apply FILE` or start with --definitions FILE"
        )
    stores = {
        name: with_cache(make_store(name, sc, config), sc, config) for name, sc in config.stores.items()
    }
    for s in stores.values():
        await s.start()
    state = await serving_state(stores, reg, None)
    limits = Limits(max_rows=config.limits.max_rows, deadline_seconds=config.limits.deadline_ms / 1000)
    lineage = await build_lineage(config, stores)
    engine = JoinEngine(stores, state, limits, lineage.emitter if lineage else None)
    engine.swap(state)
    rt = Runtime(config, registry, stores, engine, lineage)
    await _definitions_to_graph(rt, state.snapshot)
    rt.tasks.append(asyncio.create_task(_watch_registry(rt), name="registry-watch"))
    rt.tasks.append(asyncio.create_task(_apply_registry_changes(rt), name="registry-apply"))
    rt.tasks.append(asyncio.create_task(_report_registry_health(rt), name="registry-health"))
    return rt


async def serving_state(
    stores: Mapping[str, OnlineSource], reg: RegistryState, previous: ServingState | None
) -> ServingState:
    """Prepare the stores for every snapshot the state will serve, then build it."""
    assert reg.snapshot is not None
    serving_now = (
        []
        if previous is None
        else [previous.snapshot, *(c.state.snapshot for c in previous.canaries.values())]
    )
    await prepare_views(stores, [*serving_now, reg.snapshot, *(c for _, c in reg.canaries.values())])
    canaries: dict[str, CanaryRoute] = {}
    for service, (canary, candidate) in reg.canaries.items():
        old = previous.canaries.get(service) if previous is not None else None
        prior = old.state if old is not None else None
        cand_state = (
            prior.successor(candidate, reg.data_versions, {})
            if prior is not None
            else ServingState(candidate, reg.data_versions)
        )
        canaries[service] = CanaryRoute(canary.share, canary.entity, cand_state)
    if previous is None:
        return ServingState(reg.snapshot, reg.data_versions, canaries)
    return previous.successor(reg.snapshot, reg.data_versions, canaries)


async def _watch_registry(rt: Runtime) -> None:
    """Flag every published change (snapshot, data version, canary) for the applier.

    The watch is re-armed if it breaks: a server that silently stopped following the
    registry would serve stale definitions forever."""
    while True:
        try:
            async for _ in rt.registry.changes():
                rt.registry_dirty.set()
        except Exception:
            log.exception("registry watch failed; re-arming in 1 s")
        await asyncio.sleep(1.0)


async def _apply_registry_changes(rt: Runtime) -> None:
    """Serve the registry's latest state, retrying until it is served.

    Everything slow (reading snapshots, loading data for new views) happens here, off
    the hot path; the swap itself is one reference assignment. The watch has already
    moved past the event when applying it fails (etcd timing out between reads, a
    store that cannot prepare a new view), so a failure is retried with backoff
    rather than waiting for the next change, which may never come. Bursts of changes
    coalesce: each attempt reads the latest state."""
    backoff = _APPLY_RETRY_MIN_S
    while True:
        await rt.registry_dirty.wait()
        rt.registry_dirty.clear()
        try:
            await _apply_registry_change(rt)
        except Exception as e:
            metrics.REGISTRY_APPLY_FAILURES.inc()
            metrics.REGISTRY_APPLY_PENDING.set(1)
            rt.registry_apply_error = f"{type(e).__name__}: {e}"[:200]
            log.exception(
                "registry change not applied; still serving version %d, retrying in %.2f s",
                rt.engine.state.version, backoff,
            )  # fmt: skip
            rt.registry_dirty.set()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, _APPLY_RETRY_MAX_S)
            continue
        backoff = _APPLY_RETRY_MIN_S
        if rt.registry_apply_error is not None:
            log.info("registry change applied after earlier failures")
        rt.registry_apply_error = None
        metrics.REGISTRY_APPLY_PENDING.set(0)


_APPLY_RETRY_MIN_S = 0.25
_APPLY_RETRY_MAX_S = 5.0


async def _apply_registry_change(rt: Runtime) -> None:
    reg = await load_state(rt.registry)
    if reg.snapshot is None:
        return
    current = rt.engine.state
    new = await serving_state(rt.stores, reg, current)
    if new.same_as(current):
        return
    rt.engine.swap(new)
    canaries = ", ".join(f"{k} -> v{v.state.version} at {v.share:.0%}" for k, v in new.canaries.items())
    log.info("now serving registry version %d%s", new.version, f" (canaries: {canaries})" if canaries else "")
    if new.version != current.version:
        await _definitions_to_graph(rt, new.snapshot)


async def _definitions_to_graph(rt: Runtime, snapshot: RegistrySnapshot) -> None:
    """The lineage graph learns definitions from the snapshots servers swap to, so
    lineage exists before the first read, however the snapshot was published (the
    graph ignores a version older than one it holds: servers may lag)."""
    if rt.lineage is None or rt.lineage.graph is None:
        return
    try:
        await rt.lineage.graph.apply_definitions(definition_facts(snapshot))
    except Exception:
        log.exception("lineage graph: definitions of version %d not written", snapshot.version)


async def _report_registry_health(rt: Runtime) -> None:
    """Once a second: registry health gauges, and fold buffered hot-path metrics in."""
    while True:
        metrics.flush()
        h = rt.registry.health()
        metrics.REGISTRY_CONNECTED.set(1 if h.connected else 0)
        metrics.REGISTRY_STALENESS.set(min(h.seconds_since_contact, 1e9))
        await asyncio.sleep(1.0)


async def materialize(
    config: Config,
    view: str,
    source: OfflineSource,
    *,
    batch_rows: int,
    grace_seconds: int,
    on_progress: Callable[[Progress], None] | None = None,
) -> MaterializeResult:
    """Materialize one view with the stores and registry the config names."""
    registry = make_registry(config)
    try:
        snapshot = await registry.current()
        if snapshot is None:
            raise FailedPrecondition("the registry has no snapshot: apply definitions first")
        definition = snapshot.definitions.views.get(view)
        if definition is None:
            raise InvalidArgument(f"unknown feature view {view!r}")
        sc = config.stores.get(definition.online_store)
        if sc is None:
            raise FailedPrecondition(
                f"view {view!r} uses store {definition.online_store!r}, which the config lacks"
            )
        store = make_store(definition.online_store, sc, config)
        await store.start()
        try:
            job = Materializer(registry, store, grace_seconds=grace_seconds)
            return await job.run(view, source, batch_rows=batch_rows, on_progress=on_progress)
        finally:
            await store.close()
    finally:
        await registry.close()


# -- one serving process ---------------------------------------------------------------


class _UvicornServer(uvicorn.Server):
    """uvicorn without its own signal handling: the process owns signals."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _reuse_port() -> bool:
    """Only supervised workers share their ports (see ``supervisor.py``)."""
    return os.environ.get(REUSE_PORT_ENV) == "1"


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if _reuse_port():
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


async def serve(config: Config, on_ready: Callable[[], None] | None = None) -> None:
    """Run one serving process until SIGINT/SIGTERM, then drain and exit."""
    setup_tracing(config.tracing)
    rt = await build_runtime(config)
    push = PushService(rt.engine)
    mounts: dict[str, Any] = {}
    if rt.lineage is not None and rt.lineage.graph is not None and config.lineage.graphql:
        mounts["/graphql"] = LineageGraphQL(rt.lineage.graph)
    http_api = HttpApi(
        rt.engine,
        push,
        rt.readiness,
        mounts=mounts,
        max_body_bytes=config.limits.max_body_bytes,
        deadline_ms=config.limits.deadline_ms,
    )
    grpc_api = GrpcApi(rt.engine, push, config.limits.deadline_ms)
    grpc_server = create_server(config.limits.max_body_bytes, reuse_port=_reuse_port())
    grpc_api.register(grpc_server)
    bound = grpc_server.add_insecure_port(f"{config.grpc.host}:{config.grpc.port}")
    if bound == 0:
        raise FailedPrecondition(f"cannot bind gRPC on {config.grpc.host}:{config.grpc.port}")
    sock = _listen(config.http.host, config.http.port)
    uv = _UvicornServer(
        uvicorn.Config(
            http_api,
            http="httptools",
            loop="none",
            lifespan="off",
            access_log=config.access_log,
            log_config=None,
            timeout_graceful_shutdown=10,
            server_header=False,
        )
    )

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    await grpc_server.start()
    http_task = asyncio.create_task(uv.serve(sockets=[sock]), name="http")
    # uvicorn exposes no startup event, only the flag.
    while not uv.started and not http_task.done():  # noqa: ASYNC110
        await asyncio.sleep(0.01)
    if http_task.done():
        await http_task  # surfaces the bind/startup error
    await grpc_api.set_serving(True)
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
    await asyncio.wait([stop_wait, http_task], return_when=asyncio.FIRST_COMPLETED)
    log.info("draining in-flight requests")
    rt.stopping = True
    await grpc_api.set_serving(False)
    uv.should_exit = True
    await asyncio.gather(grpc_server.stop(grace=10), http_task, return_exceptions=True)
    stop_wait.cancel()
    await rt.close()
    log.info("stopped")


def run_process(config: Config, on_ready: Callable[[], None] | None = None) -> None:
    import uvloop

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(serve(config, on_ready))
