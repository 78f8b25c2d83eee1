"""Components from configuration: registry, online stores (with the cache in front),
lineage sink, emitter and graph.

The one module that maps config kinds to concrete adapter classes. Every command builds
what it needs from here (``serve`` through ``runtime``; ``materialize``, ``apply``,
``lineage consume`` and the registry commands directly), so adding an adapter means
adding one branch here and its contract-suite entry.

Backends of an extra (``featurestore/extras.py``) are imported in their branch, after
``require`` has checked the extra is installed, so a core install runs without them.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Final

from featurestore.admission import FrequencySketch
from featurestore.bypass import CacheBypass
from featurestore.cache import CachedSource, LRUCache
from featurestore.config import Config, StoreConfig
from featurestore.emitter import EmitterConfig, LineageEmitter
from featurestore.errors import InvalidArgument
from featurestore.extras import require
from featurestore.model import FeatureView
from featurestore.registry.base import Registry
from featurestore.registry.file import FileRegistry
from featurestore.sources.base import OnlineSource
from featurestore.sources.clickhouse import ClickHouseOptions, check_embedded_workers
from featurestore.sources.memory import MemorySource
from featurestore.sources.redis import RedisOptions, RedisSource
from featurestore.streaming.serving import StreamSource
from featurestore.streaming.store import MemoryTileStore, TileStore
from featurestore.supervisor import WORKER_ENV
from lineage.graph.base import LineageGraph
from lineage.graph.memory import InMemoryGraph
from lineage.runs import RunListener, RunRecorder, RunSink
from lineage.sinks import InProcessSink, KafkaSink, LineageSink

if TYPE_CHECKING:  # imported where a graph server is configured: it needs tenacity
    from featurestore.graph_writer import GraphWriter


def make_registry(config: Config) -> Registry:
    reg = config.registry
    if reg.kind == "file":
        return FileRegistry(reg.path, config.project)
    if reg.kind == "etcd":
        require("aetcd", "registry.kind: etcd")
        from featurestore.registry.etcd import EtcdRegistry
        from featurestore.registry.etcd_client import EtcdAccess

        access = EtcdAccess(
            reg.username, reg.password.get_secret_value(), reg.ca_file, reg.cert_file, reg.key_file
        )
        try:
            return EtcdRegistry(
                reg.endpoints,
                config.project,
                access=access,
                max_request_bytes=reg.max_request_bytes,
                timeout=reg.timeout_seconds,
            )
        except ValueError as e:
            raise InvalidArgument(str(e)) from None
    raise InvalidArgument(f"registry.kind {reg.kind!r} is not supported; use 'file' or 'etcd'")


def _redis_options(name: str, sc: StoreConfig) -> RedisOptions:
    try:
        return RedisOptions.from_mapping(dict(sc.options))
    except (TypeError, ValueError) as e:
        raise InvalidArgument(f"stores.{name}: {e}") from None


def make_store(name: str, sc: StoreConfig, config: Config) -> OnlineSource:
    """The raw adapter for one configured store (no cache in front)."""
    if sc.kind == "memory":
        if sc.options:  # a URL or a typo must not leave the server on an empty in-process store
            raise InvalidArgument(
                f"stores.{name}: kind memory takes no options; got "
                # password_file was read into password by then: name both
                + ", ".join(
                    "password (or password_file)" if o == "password" else o for o in sorted(sc.options)
                )
            )
        return MemorySource(name)
    if sc.kind == "redis":
        options = _redis_options(name, sc)
        return RedisSource(name, config.project, options)
    if sc.kind == "clickhouse":
        try:
            ch = ClickHouseOptions.from_mapping(dict(sc.options))
        except (TypeError, ValueError) as e:
            raise InvalidArgument(f"stores.{name}: {e}") from None
        check_embedded_workers(ch, config.workers)
        require_clickhouse(ch, f"stores.{name}")
        from featurestore.sources.clickhouse.source import ClickHouseOnlineSource

        return ClickHouseOnlineSource(name, config.project, ch)
    raise InvalidArgument(f"stores.{name}.kind {sc.kind!r} is not supported by this build")


def require_clickhouse(options: ClickHouseOptions, wanted_by: str) -> None:
    """clickhouse-connect for any ClickHouse, and chdb too for the in-process engine,
    whose extra (``embedded``) brings both: named whichever of the two is missing, as
    the ``clickhouse`` extra would leave chdb out."""
    if options.embedded:
        for module in ("clickhouse_connect", "chdb"):
            require(module, f"{wanted_by} (dsn {options.dsn})", extra="embedded")
    else:
        require("clickhouse_connect", f"{wanted_by} (kind: clickhouse)")


# What a round trip to a store is worth in missed keys, by its kind, when the config names
# no figure (featurestore/bypass.py): on Redis under load a full hit saved 20 µs of server
# CPU per batch-1 join and a missed key cost 40 (0.50; at batch 10: 20 and 9, 2.14):
# auto-pipelined reads share their round trips (`python -m benchmarks.cache_figures`,
# 2026-12-03; earlier that day 26 and 36, 0.72, and an ad hoc run 25 and 46, 0.54; that
# table: `git show 247a389:benchmarks/results/cache-figures.md`): 0.5, the cautious side
# (a lower figure skips sooner). Re-measured on the store's own connection
# (2026-12-05) a full hit saves no CPU on a loopback Redis under load (-7 and -25 µs), so
# consulting does not pay there; 0.5 is kept (a two-view batch-1 read consults from 83%
# hits, one key of one view from 67%; benchmarks/RESULTS.md, "The cache's figure on the
# store's own connection"). A ClickHouse point read costs ~3.4 ms
# (benchmarks/RESULTS.md, "ClickHouse"), ~70 missed keys: 50, the cautious side of it.
FILLS_PER_ROUND_TRIP: Final[Mapping[str, float]] = MappingProxyType({"redis": 0.5, "clickhouse": 50.0})


def with_cache(store: OnlineSource, sc: StoreConfig, config: Config) -> OnlineSource:
    """Remote stores get the LRU cache in front unless the config turns it off."""
    if store.kind == "memory" or not (sc.cache and config.cache.enabled):
        return store
    cc = config.cache
    sketch = FrequencySketch(cc.max_entries) if cc.admission == "tinylfu" else None
    cache = LRUCache(cc.max_entries, cc.ttl_seconds, admission=sketch)
    per_trip = cc.fills_per_round_trip
    if per_trip is None:
        per_trip = FILLS_PER_ROUND_TRIP.get(store.kind, FILLS_PER_ROUND_TRIP["redis"])
    bypass = CacheBypass(per_trip, trial_every=cc.ttl_seconds)
    return CachedSource(store, cache, bypass)


def make_serving_stores(config: Config) -> dict[str, OnlineSource]:
    """Every configured store as the join engine reads it (cache in front where due),
    and beside each memory or standalone Redis store its stream views' tile reader
    (``stream:<store>``, never cached: a window's value moves with the clock)."""
    stores = {
        name: with_cache(make_store(name, sc, config), sc, config) for name, sc in config.stores.items()
    }
    for name, sc in config.stores.items():
        # the parsed options: from the environment ``cluster`` is the text "false", truthy
        if sc.kind == "memory" or (sc.kind == "redis" and not _redis_options(name, sc).cluster):
            # the Redis store's health probe is the tile reader's circuit breaker
            health = stores[name] if sc.kind == "redis" else None
            tiles = make_tile_store(name, sc, config, files_checked=sc.kind == "redis")  # (by the source)
            reader = StreamSource(name, tiles, health=health)
            stores[reader.name] = reader
    return stores


def make_tile_store(name: str, sc: StoreConfig, config: Config, files_checked: bool = False) -> TileStore:
    """Where the stream views of store ``name`` keep their tiles (docs/streaming.md).
    ``files_checked``: the store's TLS files were checked already (by its ``RedisSource``,
    built beside it in a serving process)."""
    if sc.kind == "memory":
        return MemoryTileStore(name)
    if sc.kind == "redis":
        options = _redis_options(name, sc)
        if not files_checked:
            # redis-py loads them at the first connect: an encrypted key asked for its
            # passphrase, a missing CA was retried for ever, neither named (stream run)
            options.check_files(name)
        from featurestore.streaming.redis_store import RedisTileStore

        return RedisTileStore(
            name,
            config.project,
            options.url,
            cluster=options.cluster,
            pool_size=options.pool_size,
            socket_connect_timeout=options.connect_timeout_ms / 1000,
            **options.connection_kwargs(),
        )
    raise InvalidArgument(f"stores.{name}: stream views are kept in memory or redis stores, not {sc.kind}")


def make_graph(config: Config) -> LineageGraph:
    lc = config.lineage
    if lc.graph == "memory":
        return InMemoryGraph()
    if lc.graph == "bolt":
        require("neo4j", "lineage.graph: bolt")
        from lineage.graph.bolt import BoltGraph

        bolt = lc.bolt
        try:
            return BoltGraph(
                bolt.uri,
                bolt.user,
                bolt.password.get_secret_value(),
                bolt.database or None,
                ca_file=bolt.ca_file,
            )
        except ValueError as e:
            raise InvalidArgument(str(e)) from None
    raise InvalidArgument(f"lineage.graph {lc.graph!r} is not supported; use memory or bolt")


@dataclass
class Lineage:
    """The serving process's lineage parts: emitter, and the graph GraphQL reads."""

    emitter: LineageEmitter
    graph: LineageGraph | None  # None when this process does not serve GraphQL
    runs: RunRecorder  # job runs in this process (lineage/runs.py) go through its sink
    # A graph server's schema and definitions, written in the background (graph_writer.py);
    # None for the in-process graph, written inline.
    writer: GraphWriter | None = None

    async def close(self) -> None:
        await self.emitter.close()
        for listener in self.runs.listeners:  # OpenLineage: sends what is queued, off the loop
            await asyncio.to_thread(listener.close)
        if self.writer is not None:
            await self.writer.close()
        if self.graph is not None:
            await self.graph.close()


async def build_lineage(config: Config, stores: Mapping[str, OnlineSource]) -> Lineage | None:
    """The started emitter (and graph, when this process serves GraphQL or writes the
    in-process graph), or None when lineage is off."""
    lc = config.lineage
    if not lc.enabled:
        return None
    if lc.sink == "memory" and lc.graph != "memory":
        raise InvalidArgument("lineage.sink memory writes the in-process graph: set lineage.graph to memory")
    if lc.sink not in ("memory", "kafka"):
        raise InvalidArgument(f"lineage.sink {lc.sink!r} is not supported; use memory or kafka")
    if lc.sink == "kafka" and lc.graph == "memory" and lc.graphql:
        # Events go to Kafka, and the consumer writes them into the Bolt graph: this
        # process's own in-process graph would get definitions only, never an event, and
        # its /graphql and page would say "not served yet" for everything.
        raise InvalidArgument(
            "lineage.sink kafka sends events to the consumer's graph, which an in-process graph never "
            "sees: set lineage.graph to bolt (to serve that graph) or lineage.graphql to false"
        )
    if lc.sink == "kafka":
        require("confluent_kafka", "lineage.sink: kafka")
    if lc.graphql:
        require("strawberry", "lineage.graphql: true (set it to false to serve without /graphql)")
    graph = make_graph(config) if (lc.graphql or lc.sink == "memory") else None
    writer = None
    if graph is not None and lc.graph == "memory":
        await graph.start()
    elif graph is not None:  # a graph server down or hung must not keep serving from starting
        writer = graph_writer(graph)
    sink: LineageSink
    if lc.sink == "memory":
        assert graph is not None
        sink = InProcessSink(graph, lc.window_seconds)
    else:
        sink = KafkaSink(lc.kafka)

    def table_uri(view: FeatureView) -> str | None:
        store = stores.get(view.serving_store)
        return None if store is None else store.table_uri(view)

    emitter = LineageEmitter(
        sink, table_uri, EmitterConfig(lc.window_seconds, lc.queue_size, service=service_identity(config))
    )
    await emitter.start()
    return Lineage(emitter, graph, RunRecorder(sink, run_listeners(config)), writer)


def graph_writer(graph: LineageGraph) -> GraphWriter:
    """The started background writer of a graph server (featurestore/graph_writer.py)."""
    require("tenacity", "lineage.graph: bolt", extra="neo4j")
    from featurestore.graph_writer import GraphWriter
    from lineage.graph.bolt import BoltGraph

    writer = GraphWriter(graph)
    if isinstance(graph, BoltGraph):  # its gauge follows GraphQL's reads too
        graph.on_answer = writer.answered
    writer.start()
    return writer


def run_listeners(config: Config) -> list[RunListener]:
    """Who else hears of job runs: OpenLineage, when ``lineage.openlineage`` is on."""
    ol = config.lineage.openlineage
    if not ol.enabled:
        return []
    require("openlineage.client", "lineage.openlineage.enabled: true")
    from lineage.openlineage import OpenLineageListener

    try:
        return [OpenLineageListener.from_settings(ol)]
    except ValueError as e:
        raise InvalidArgument(f"lineage.openlineage: {e}") from None


async def make_run_recorder(
    config: Config, skip_seconds: float | None = None
) -> tuple[RunRecorder, Callable[[], Awaitable[None]]]:
    """The recorder of a job (``materialize``, ``stream run``), and what closes it after the job.
    Runs reach a graph only where this process can write one: Kafka (the consumer writes
    them) or a Bolt graph written directly (``GraphRuns``: after a report that finds it
    unavailable, the reports of the next ``skip_seconds``, None: of the whole job, skip it).
    With the in-process graph of a server there is no graph here: the runs are held
    (``BufferedRuns``) for ``serve --demo`` to hand over."""
    from lineage.runs import BufferedRuns

    lc = config.lineage
    listeners = run_listeners(config)

    async def close_listeners() -> None:
        for listener in listeners:
            await asyncio.to_thread(listener.close)

    if not lc.enabled:
        return RunRecorder(None, listeners), close_listeners
    sink: RunSink
    closing: LineageSink | LineageGraph | None = None
    if lc.sink == "kafka":
        require("confluent_kafka", "lineage.sink: kafka")
        kafka = KafkaSink(lc.kafka)
        await kafka.start()
        sink = closing = kafka
    elif lc.graph == "bolt":  # the schema with the first report: a graph down never fails the job
        graph = make_graph(config)
        require("tenacity", "lineage.graph: bolt", extra="neo4j")
        from featurestore.graph_writer import GraphRuns

        sink, closing = GraphRuns(graph, skip_seconds=skip_seconds), graph
    else:
        sink = BufferedRuns()

    async def close() -> None:
        await close_listeners()
        if closing is not None:
            await closing.close()

    return RunRecorder(sink, listeners), close


def service_identity(config: Config) -> str:
    """This serving process as lineage names it: host, port, and worker slot."""
    service = f"featurestore@{socket.gethostname()}:{config.http.port}"
    worker = os.environ.get(WORKER_ENV)
    if worker is not None:
        # Workers of one server must not share an identity: lineage events are keyed
        # by (window, feature, service), and equal keys count once.
        service += f"/w{worker}"
    return service
