"""Redis online store (standalone or Cluster): reads on connections of our own over
hiredis (``redis_connection.py``), the rest on redis-py's asyncio client.

Layout (docs/storage.md): ``fs:{project}:{view}:v{data_version}:{entity_key}`` ->
one msgpack array: the view's feature values in schema order, then the event
timestamp in epoch µs. Composite keys join their parts with ``|``. Beside the rows,
``fs:{project}:{view}:v{data_version}`` holds the layout fingerprint of the definition
the rows were written for; every read fetches it in the same MGET, so rows are never
decoded under a definition they were not written for (a renamed feature keeps the
row width, not its meaning).

Reads: standalone Redis gets one MGET per view, all views of a request packed into a
single write on one pooled connection (one round trip); with ``auto_pipeline`` (the
default) the reads of every join of one event-loop tick share that write
(``redis_batch.py``). Redis Cluster spreads keys over slots, so there a read is one
write of GETs per node on connections of our own, by redis-py's slot map
(``redis_cluster_read.py``; through redis-py's cluster pipeline when the map is stale).

Health: a background probe PINGs on an interval. When Redis stops answering the
store is DOWN and reads fail at once (the engine serves UNAVAILABLE) instead of each
request waiting out its deadline; the first successful PING closes the circuit. A PING
failing on a closed connection (not a timeout) is tried once more on a fresh one first. The
same probe checks that the marker of every data version served (but 0) exists: a Redis
restarted empty or flushed answers PING while every row is gone, and the views are
then reported as missing their data (``OnlineSource.missing``), as they are by the first
read that finds a marker gone.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from functools import partial
from typing import Any, TypeVar

import msgspec
import pyarrow as pa
from redis import exceptions as redis_errors
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from featurestore import metrics
from featurestore.errors import Unavailable
from featurestore.model import FeatureView
from featurestore.rows import conform, key_text, view_schema
from featurestore.sources.base import SourceState, ViewQuery, ViewRead
from featurestore.sources.missing import MissingData
from featurestore.sources.redis_batch import AutoPipeline
from featurestore.sources.redis_cluster_read import ClusterReader
from featurestore.sources.redis_options import RedisOptions as RedisOptions  # re-exported
from featurestore.sources.redis_pool import CONNECTION_ERRORS, NOT_RETRIED, LeanPool
from featurestore.sources.redis_read import for_version_keys, pooled_mget
from featurestore.sources.redis_wire import KeyNames, LayoutMismatch, VersionMissing, decode_rows
from featurestore.sources.redis_write import RETIRE_LOOKBACK, unexpired_versions, write_rows

log = logging.getLogger(__name__)
T = TypeVar("T")
Named = tuple[KeyNames, list[str]]  # a query's view version's key names and its keys' text


class RedisSource:
    kind = "redis"

    def __init__(self, name: str, project: str, options: RedisOptions) -> None:
        self._name = name
        self._project = project
        self.options = options
        options.check_files(name)
        self._state = SourceState.STARTING
        self._client: Redis | RedisCluster
        self._pool: LeanPool | None = None  # standalone reads; writes use the client's pool
        self._cluster: ClusterReader | None = None  # Cluster reads
        timeout = options.connect_timeout_ms / 1000
        auth = options.connection_kwargs()  # credentials, TLS and TCP keepalive
        # Reads go on connections of our own (redis_connection.py), with no
        # socket timeout: the join's deadline bounds them.
        opened = metrics.SOURCE_CONNECTIONS_OPENED.labels(name).inc
        counters = {  # auto-pipelining's, per held
            held: (
                metrics.pipeline_writes(name, str(held).lower()),
                metrics.pipeline_reads(name, str(held).lower()),
            )
            for held in (False, True)
        }
        if options.cluster:
            self._client = RedisCluster.from_url(
                options.url, socket_connect_timeout=timeout, max_connections=options.pool_size, **auth
            )
            reread = partial(metrics.REDIS_CLUSTER_REREADS.labels, name)
            self._cluster = ClusterReader(self._client, options, opened, counters, lambda r: reread(r).inc())
        else:
            self._pool = LeanPool(options.url, options.pool_size, timeout, opened, **auth)
            self._client = Redis.from_url(options.url, socket_connect_timeout=timeout, **auth)
        self._auto: AutoPipeline | None = None
        if self._pool is not None and options.auto_pipeline:
            self._auto = AutoPipeline(self._pool, options.hold_iterations, counters)
        # PINGs travel on their own small client with a socket timeout, so a frozen
        # Redis cannot tie up the request pool and every probe ends on time.
        client: type[Redis] | type[RedisCluster] = RedisCluster if options.cluster else Redis
        self._probe_client: Redis | RedisCluster = client.from_url(
            options.url, socket_connect_timeout=timeout, socket_timeout=timeout, max_connections=2, **auth
        )
        self._prefixes: dict[tuple[str, int], KeyNames] = {}
        self._health: asyncio.Task[None] | None = None
        self._closing = False
        self._up = metrics.SOURCE_UP.labels(name, self.kind)
        self._retries = metrics.SOURCE_READ_RETRIES.labels(name)
        self._missing = MissingData(name)

    @property
    def name(self) -> str:
        return self._name

    def table_uri(self, view: FeatureView) -> str:
        return f"redis://fs/{self._project}/{view.name}"

    def state(self) -> SourceState:
        return self._state

    def serving(self, versions: Mapping[str, int]) -> None:
        self._missing.serving(versions)

    def missing(self) -> Mapping[str, str]:
        return self._missing.report

    def _set_state(self, state: SourceState, reason: str = "") -> None:
        if state is not self._state:
            if state is SourceState.DOWN:
                log.warning("redis store %s is down: %s", self._name, reason)
            elif self._state is SourceState.DOWN:
                log.info("redis store %s is back", self._name)
                # sockets idle through the outage are dead: reconnect on next use
                if self._pool is not None:
                    self._pool.reset()
                if self._cluster is not None:
                    self._cluster.reset()
            self._state = state
        self._up.set(1 if state is SourceState.READY else 0)

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        await self._probe()
        if self._cluster is not None:
            self._cluster.refresh()  # the slot map, off the start's path
        self._health = asyncio.create_task(self._health_loop(), name=f"redis-health-{self._name}")

    async def close(self) -> None:
        self._closing = True  # a read failing now is the close's, not a stale socket's
        if self._health is not None:  # ends at its next check of the flag if the cancel is lost
            self._health.cancel()
            await asyncio.wait([self._health])
        await self._probe_client.aclose()
        if self._auto is not None:
            await self._auto.close()
        if self._pool is not None:
            await self._pool.close()
        if self._cluster is not None:
            await self._cluster.close()
        await self._client.aclose()

    async def prepare(self, views: Sequence[FeatureView]) -> None:
        """Nothing to load: rows live in Redis."""

    async def _probe(self) -> None:
        checked = self._missing.checked()
        try:
            try:
                exists = await self._ping(checked)
            except NOT_RETRIED:
                raise
            except CONNECTION_ERRORS:
                if self._closing:
                    raise
                # As a read is: a connection closed under the probe (CLIENT KILL, a proxy
                # restarted, a NAT reset) is tried once more on a fresh one, or one reset
                # would fail every read for a health interval while Redis answers.
                if isinstance(self._probe_client, Redis):
                    await self._probe_client.connection_pool.disconnect()
                exists = await self._ping(checked)
        except (*CONNECTION_ERRORS, redis_errors.RedisError) as e:
            if not self._closing:  # (a probe cut short by close() says nothing of Redis)
                self._set_state(SourceState.DOWN, repr(e))
            return
        if self._closing:  # a cancel lost in the probe: READY would reset a pool close() closed
            return
        self._set_state(SourceState.READY)
        if checked:
            for (view, version), n in zip(checked, exists, strict=True):
                if not n:
                    self._missing.found_missing(view, version, self._gone(view, version))
            self._missing.found_present(pair for pair, n in zip(checked, exists, strict=True) if n)

    async def _ping(self, checked: Sequence[tuple[str, int]]) -> list[Any]:
        """PING, then whether each checked version's marker exists (one round trip: a
        pipeline of EXISTS, however many views)."""
        if isinstance(self._probe_client, RedisCluster):
            await self._probe_client.ping(target_nodes=RedisCluster.PRIMARIES)
        else:
            await self._probe_client.ping()
        if not checked:
            return []
        pipe = self._probe_client.pipeline(transaction=False)
        for view, version in checked:
            pipe.exists(self._names(view, version).marker)
        return await pipe.execute()

    def _gone(self, view: str, data_version: int) -> str:
        marker = self._names(view, data_version).marker
        return f"marker {marker} is not in Redis (restarted empty or flushed?): re-materialize the view"

    async def _health_loop(self) -> None:
        interval = self.options.health_interval_ms / 1000
        # The flag, not only cancel(), ends the loop: on Python 3.11 a cancel that lands
        # as the probe's send completes is lost in redis-py's wait_for (gh-86296).
        while not self._closing:
            await asyncio.sleep(interval)
            try:
                if not self._closing:
                    await self._probe()
            except Exception:  # a dead probe would leave the store's state frozen
                log.exception("redis store %s: health probe failed", self._name)

    # -- keys ------------------------------------------------------------------------

    def _names(self, view: str, data_version: int) -> KeyNames:
        names = self._prefixes.get((view, data_version))
        if names is None:
            if len(self._prefixes) > 4096:
                self._prefixes.clear()
            names = self._prefixes[(view, data_version)] = KeyNames(
                f"fs:{self._project}:{view}:v{data_version}"
            )
        return names

    def prefix(self, view: str, data_version: int) -> str:
        return self._names(view, data_version).prefix

    def _named(self, queries: Sequence[ViewQuery]) -> list[Named | None]:
        """Per query, its view version's key names and its keys' text (None: no keys).
        Views keyed alike share the text (and the list: the join dedupes once per join-key
        tuple); one key's text is ``str(k)``, as ``key_text``'s."""
        texts: dict[int, list[str]] = {}
        out: list[Named | None] = []
        for q in queries:
            if not q.keys:
                out.append(None)
                continue
            t = texts.get(id(q.keys))  # (every list is alive here: ids are not reused)
            if t is None:
                text = str if len(q.view.join_keys) == 1 else key_text
                t = texts[id(q.keys)] = list(map(text, q.keys))
            out.append((self._names(q.view.name, q.data_version), t))
        return out

    # -- reads -----------------------------------------------------------------------

    async def read(self, queries: Sequence[ViewQuery]) -> list[ViewRead | BaseException]:
        if self._state is SourceState.DOWN:
            err = Unavailable(f"redis store {self._name!r} is down")
            return [err] * len(queries)
        named = self._named(queries)
        try:
            try:
                raw = await self._fetch(named)
            except NOT_RETRIED:
                raise
            except CONNECTION_ERRORS:
                if self._pool is None or self._closing:  # a Cluster read falls back on its own
                    raise
                # A socket Redis (its `timeout`) or a proxy closed while it idled in the
                # pool fails its first use, and Redis is fine: the read is tried once more,
                # on fresh connections (not after the errors in NOT_RETRIED, nor while
                # the store closes). Only a second failure opens the circuit.
                # Every idle socket is dropped first: the pool hands out the last
                # connection back first, so the one next in line has idled at least as
                # long as the one that failed.
                self._retries.inc()
                self._pool.reset()
                raw = await self._fetch(named)
        except CONNECTION_ERRORS as e:
            if not self._closing:
                self._set_state(SourceState.DOWN, repr(e))
            raise Unavailable(f"redis store {self._name!r}: {e}") from e
        out: list[ViewRead | BaseException] = []
        for q, values in zip(queries, raw, strict=True):
            try:
                out.append(decode_rows(q, values))
            except VersionMissing as e:
                self._missing.found_missing(
                    q.view.name, q.data_version, self._gone(q.view.name, q.data_version)
                )
                out.append(e)
            except LayoutMismatch as e:
                out.append(e)
            except msgspec.DecodeError as e:  # not msgpack: rows another tool wrote
                out.append(Unavailable(f"view {q.view.name!r}: stored rows do not decode: {e}"))
            except (ValueError, TypeError, RecursionError) as e:  # rows that do not fit the view
                out.append(Unavailable(f"view {q.view.name!r}: {e}"))
        return out

    async def _fetch(self, named: list[Named | None]) -> list[list[bytes | None]]:
        if self._pool is not None:  # one MGET per view, packed from the keys' text
            mgets = [None if n is None else (n[0].mget(n[1]), len(n[1]) + 1) for n in named]
            return await pooled_mget(self._pool, self._auto, mgets)
        assert self._cluster is not None
        return await self._cluster.get([[] if n is None else n[0].keys(n[1]) for n in named])

    # -- writes ----------------------------------------------------------------------

    async def write(
        self, view: FeatureView, rows: pa.Table, data_version: int, *, create: bool = True
    ) -> int:
        """Upsert rows (``redis_write.write_rows``)."""
        if self._closing:  # (redis-py would open a connection nobody closes)
            raise Unavailable(f"store {self._name!r} is closed")
        return await write_rows(
            self._client,
            self._idempotent,
            self._names(view.name, data_version),
            view,
            conform(view, rows),
            data_version,
            self.options.write_batch,
            transaction=self._pool is not None,
            create=create,
        )

    async def mark_version(self, view: FeatureView, data_version: int) -> None:
        """Create a data version before its rows are loaded: its marker (a version with
        no rows has one too). A materialization's first step; no push creates one."""
        await self.write(view, view_schema(view).empty_table(), data_version)

    async def _idempotent(self, command: Callable[[], Awaitable[T]]) -> T:
        """Run a command that is safe to repeat; one retry on a fresh socket covers a
        connection that died while idle (e.g. Redis restarted)."""
        for attempt in (1, 2):
            try:
                return await command()
            except CONNECTION_ERRORS as e:
                if attempt == 2:
                    raise Unavailable(f"redis store {self._name!r}: write failed: {e}") from e
                if isinstance(self._client, Redis):
                    await self._client.connection_pool.disconnect()
        raise AssertionError("unreachable")

    async def has_version(self, view: FeatureView, data_version: int) -> bool:
        marker = self._names(view.name, data_version).marker
        return bool(await self._idempotent(lambda: self._client.exists(marker)))

    async def drop_version(self, view: FeatureView, data_version: int) -> int:
        """Delete every key of one data version (leftovers of an interrupted run)."""
        # UNLINK as a raw command: redis-py's ClusterPipeline.unlink() is a coroutine
        # of its own, not a queued command (on a cluster no row was ever deleted).
        n = await for_version_keys(
            self._client,
            self.prefix(view.name, data_version),
            lambda pipe, key: pipe.execute_command("UNLINK", key),
        )
        await self._client.unlink(self._names(view.name, data_version).marker)
        await self._client.unlink(self._profile_key(view, data_version))  # own call: another slot
        return n

    async def expire_version(self, view: FeatureView, data_version: int, seconds: int) -> int:
        """Let every key of one data version expire after ``seconds``. The marker first:
        from then on a push into the version is refused (``write``), and a row a push
        wrote before exists before the scan starts, which then finds it (a scan of many
        keys takes seconds: 5.5 s for 200,000 here; marker last, pushes were accepted
        throughout and half their keys never expired, review 49)."""
        await self._client.expire(self._names(view.name, data_version).marker, seconds)
        n = await for_version_keys(
            self._client, self.prefix(view.name, data_version), lambda pipe, key: pipe.expire(key, seconds)
        )
        await self._client.expire(self._profile_key(view, data_version), seconds)
        return n

    async def unexpired_versions(self, view: FeatureView, below: int) -> list[int]:
        """``VersionedStore``: the versions under ``below`` (the last
        ``RETIRE_LOOKBACK``) that a run killed after publishing left without a TTL."""
        versions = range(max(0, below - RETIRE_LOOKBACK), below)
        keys = [(self._names(view.name, v).marker, self._profile_key(view, v)) for v in versions]
        return await unexpired_versions(self._client, versions, keys)

    def _profile_key(self, view: FeatureView, data_version: int) -> str:
        """Beside the rows, never among them: no entity key can name it."""
        return f"fsprofile:{self._project}:{view.name}:v{data_version}"

    async def write_profile(self, view: FeatureView, data_version: int, blob: bytes) -> None:
        key = self._profile_key(view, data_version)
        await self._idempotent(lambda: self._client.set(key, blob))

    async def read_profile(self, view: FeatureView, data_version: int) -> bytes | None:
        key = self._profile_key(view, data_version)
        raw = await self._idempotent(lambda: self._client.get(key))
        return raw.encode() if isinstance(raw, str) else raw
