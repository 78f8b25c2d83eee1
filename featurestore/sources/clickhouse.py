"""ClickHouse online store on clickhouse-connect: the in-process engine (chdb) for the
embedded default and tests, a remote server over HTTP in production, one code path.

Online tables are built for point reads: one ``EmbeddedRocksDB`` table per view and
data version, keyed by the entity key (latest write per key wins, as a key-value
store). Measured on 1M rows, 100 random keys per query (benchmarks/clickhouse_point_reads.py):
RocksDB 2.6 ms p50, MergeTree with index_granularity=256 15.7 ms, ReplacingMergeTree
FINAL 17.2 ms, argMax GROUP BY 15.1 ms. Keys travel only as a server-side parameter
(``IN {keys:Array(Int64)}``); no SQL is ever built from user input.

clickhouse-connect's client is synchronous, so every call runs in a bounded thread
pool with one client per thread: the event loop never blocks, and a saturated pool
fails new reads at once (the view is served UNAVAILABLE) instead of queueing them past
their deadline. Other stores' views are unaffected either way.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import clickhouse_connect
import numpy as np
import pyarrow as pa
from clickhouse_connect.driver.exceptions import ClickHouseError

from featurestore import metrics
from featurestore.errors import FailedPrecondition, Unavailable
from featurestore.model import DType, FeatureView
from featurestore.sources.arrow import EVENT_TIMESTAMP, conform, key_text, row_keys
from featurestore.sources.base import EntityKey, SourceState, ViewQuery, ViewRead

log = logging.getLogger(__name__)
T = TypeVar("T")

KEY_COLUMN = "__key"
_CH_TYPES = {
    DType.INT64: "Nullable(Int64)",
    DType.FLOAT64: "Nullable(Float64)",
    DType.STRING: "Nullable(String)",
    DType.BOOL: "Nullable(Bool)",
    DType.TIMESTAMP: "Nullable(DateTime64(6, 'UTC'))",
    # Arrays cannot be Nullable in ClickHouse; a vector is stored as its float32
    # little-endian bytes so that null stays distinct from [].
    DType.FLOAT32_VECTOR: "Nullable(String)",
}


@dataclass(frozen=True, slots=True)
class ClickHouseOptions:
    dsn: str = "chdb://data/clickhouse"  # chdb://<dir> (in-process) or http(s)://user:pass@host:8123
    database: str = "featurestore"
    threads: int = 4
    max_queued: int = 16  # reads waiting for a thread beyond this fail at once
    health_interval_ms: int = 1000

    @staticmethod
    def from_mapping(options: dict[str, Any]) -> ClickHouseOptions:
        known = set(ClickHouseOptions.__dataclass_fields__)
        unknown = sorted(set(options) - known)
        if unknown:
            raise ValueError(
                f"unknown clickhouse store option {unknown[0]!r}; known: {', '.join(sorted(known))}"
            )
        return ClickHouseOptions(**options)

    @property
    def client_dsn(self) -> str:
        if self.dsn.startswith("chdb://"):
            # chdb compares engine paths literally: always hand it one absolute spelling
            return f"chdb://{Path(self.dsn.removeprefix('chdb://')).resolve()}"
        return self.dsn

    @property
    def embedded(self) -> bool:
        return self.dsn.startswith("chdb://")


def table_name(project: str, view: str, data_version: int) -> str:
    return f"{project}__{view}__v{data_version}"


def key_type(view: FeatureView) -> str:
    if len(view.entities) == 1 and view.entities[0].dtype is DType.INT64:
        return "Int64"
    return "String"  # string keys, and composite keys as their `|`-joined text


def online_table_ddl(database: str, project: str, view: FeatureView, data_version: int) -> str:
    cols = [f"`{KEY_COLUMN}` {key_type(view)}"]
    cols += [f"`{f.name}` {_CH_TYPES[f.dtype]}" for f in view.features]
    cols.append(f"`{EVENT_TIMESTAMP}` DateTime64(6, 'UTC')")
    body = ",\n  ".join(cols)
    return (
        f"CREATE TABLE IF NOT EXISTS `{database}`.`{table_name(project, view.name, data_version)}` (\n  {body}\n)"
        f" ENGINE = EmbeddedRocksDB PRIMARY KEY `{KEY_COLUMN}`"
    )


def _select_sql(database: str, table: str, view: FeatureView, features: Sequence[int]) -> str:
    cols = [f"`{KEY_COLUMN}`"]
    for j in features:
        f = view.features[j]
        # timestamps leave ClickHouse as epoch µs: no per-value datetime objects
        cols.append(f"toUnixTimestamp64Micro(`{f.name}`)" if f.dtype is DType.TIMESTAMP else f"`{f.name}`")
    cols.append(f"toUnixTimestamp64Micro(`{EVENT_TIMESTAMP}`)")
    return (
        f"SELECT {', '.join(cols)} FROM `{database}`.`{table}` "
        f"WHERE `{KEY_COLUMN}` IN {{keys:Array({key_type(view)})}}"
    )


class ClickHouseSource:
    kind = "clickhouse"

    def __init__(self, name: str, project: str, options: ClickHouseOptions) -> None:
        self._name = name
        self._project = project
        self.options = options
        self._pool = ThreadPoolExecutor(max_workers=options.threads, thread_name_prefix=f"clickhouse-{name}")
        self._local = threading.local()
        self._clients: list[Any] = []
        self._clients_lock = threading.Lock()
        # Counted up on the loop, down on the worker thread when the call really ends:
        # a read abandoned at its deadline still holds its thread until then.
        self._in_flight = 0
        self._in_flight_lock = threading.Lock()
        self._tables: set[str] = set()
        # keyed by layout too: a renamed feature must select the new column name
        self._sql: dict[tuple[str, str, int, tuple[int, ...]], str] = {}
        self._state = SourceState.STARTING
        self._health: asyncio.Task[None] | None = None
        self._up = metrics.SOURCE_UP.labels(name, self.kind)

    @property
    def name(self) -> str:
        return self._name

    def table_uri(self, view: FeatureView) -> str:
        return f"clickhouse://{self.options.database}.{self._project}__{view.name}"

    def state(self) -> SourceState:
        return self._state

    def _set_state(self, state: SourceState, reason: str = "") -> None:
        if state is not self._state and state is SourceState.DOWN:
            log.warning("clickhouse store %s is down: %s", self._name, reason)
        self._state = state
        self._up.set(1 if state is SourceState.READY else 0)

    # -- thread pool -----------------------------------------------------------------

    def _client(self) -> Any:
        client = getattr(self._local, "client", None)
        if client is None:
            client = clickhouse_connect.get_client(dsn=self.options.client_dsn)
            self._local.client = client
            with self._clients_lock:
                self._clients.append(client)
        return client

    async def run(self, fn: Callable[[Any], T]) -> T:
        """Run ``fn(client)`` on a pool thread; fail at once when the pool is saturated."""
        with self._in_flight_lock:
            if self._in_flight >= self.options.threads + self.options.max_queued:
                raise Unavailable(f"clickhouse store {self._name!r}: all {self.options.threads} threads busy")
            self._in_flight += 1

        def call() -> T:
            try:
                return fn(self._client())
            finally:
                with self._in_flight_lock:
                    self._in_flight -= 1

        try:
            running = asyncio.get_running_loop().run_in_executor(self._pool, call)
        except RuntimeError as e:  # the pool is shut down: the call never ran
            with self._in_flight_lock:
                self._in_flight -= 1
            raise Unavailable(f"clickhouse store {self._name!r} is closed") from e
        return await running

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        db = self.options.database
        try:
            await self.run(lambda c: c.command(f"CREATE DATABASE IF NOT EXISTS `{db}`"))
            await self.run(
                lambda c: c.command(
                    f"CREATE TABLE IF NOT EXISTS `{db}`.`__expiry` (`table` String, `drop_after` DateTime)"
                    " ENGINE = EmbeddedRocksDB PRIMARY KEY `table`"
                )
            )
        except (ClickHouseError, OSError) as e:
            self._set_state(SourceState.DOWN, str(e))
        else:
            self._set_state(SourceState.READY)
        self._health = asyncio.create_task(self._health_loop(), name=f"clickhouse-health-{self._name}")

    async def close(self) -> None:
        if self._health is not None:
            self._health.cancel()
            await asyncio.wait([self._health], timeout=1.0)
        await asyncio.to_thread(self._shutdown)

    def _shutdown(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        for c in self._clients:
            try:
                c.close()
            except Exception:
                log.debug("closing a clickhouse client failed", exc_info=True)

    async def _health_loop(self) -> None:
        while True:
            await asyncio.sleep(self.options.health_interval_ms / 1000)
            try:
                await self.run(lambda c: c.command("SELECT 1"))
                await self._drop_expired()
            except Unavailable:
                continue  # saturated is not down
            except (ClickHouseError, OSError) as e:
                self._set_state(SourceState.DOWN, str(e))
            else:
                self._set_state(SourceState.READY)

    async def prepare(self, views: Sequence[FeatureView]) -> None:
        """Create version-0 tables so pushes and reads work before a materialization."""
        for view in views:
            await self._ensure_table(view, 0)

    async def _ensure_table(self, view: FeatureView, data_version: int) -> str:
        table = table_name(self._project, view.name, data_version)
        if table not in self._tables:
            ddl = online_table_ddl(self.options.database, self._project, view, data_version)
            await self.run(lambda c: c.command(ddl))
            self._tables.add(table)
        return table

    # -- reads -----------------------------------------------------------------------

    async def read(self, queries: Sequence[ViewQuery]) -> list[ViewRead | BaseException]:
        # One query per view; the views of a request run concurrently on the pool.
        results = await asyncio.gather(*(self._read_view(q) for q in queries), return_exceptions=True)
        return [r if isinstance(r, ViewRead | BaseException) else Unavailable(repr(r)) for r in results]

    async def _read_view(self, q: ViewQuery) -> ViewRead:
        view = q.view
        if not q.keys:
            return ViewRead([], [], [[] for _ in q.features])
        table = table_name(self._project, view.name, q.data_version)
        sql_key = (view.name, view.layout, q.data_version, tuple(q.features))
        sql = self._sql.get(sql_key)
        if sql is None:
            sql = self._sql[sql_key] = _select_sql(self.options.database, table, view, q.features)
        params = {"keys": _param_keys(view, q.keys)}
        binary = {
            view.features[j].name: "bytes"
            for j in q.features
            if view.features[j].dtype is DType.FLOAT32_VECTOR
        }
        try:
            rows = await self.run(
                lambda c: c.query(sql, parameters=params, column_formats=binary).result_rows
            )
        except ClickHouseError as e:
            raise Unavailable(f"clickhouse view {view.name!r} (table {table}): {_short(e)}") from e
        return _align(q, rows)

    # -- writes ----------------------------------------------------------------------

    async def write(self, view: FeatureView, rows: pa.Table, data_version: int) -> int:
        rows = conform(view, rows)
        table = await self._ensure_table(view, data_version)
        keys = row_keys(rows, view.join_keys)
        key_col = (
            pa.array(keys, pa.int64()) if key_type(view) == "Int64" else pa.array([key_text(k) for k in keys])
        )
        columns = [key_col] + [_to_stored(rows.column(f.name), f.dtype) for f in view.features]
        columns.append(rows.column(EVENT_TIMESTAMP))
        names = [KEY_COLUMN, *(f.name for f in view.features), EVENT_TIMESTAMP]
        data = pa.Table.from_arrays(columns, names=names)
        target = f"{self.options.database}.{table}"
        try:
            await self.run(lambda c: c.insert_arrow(target, data))
        except ClickHouseError as e:
            raise Unavailable(f"clickhouse store {self._name!r}: write to {table} failed: {_short(e)}") from e
        return int(rows.num_rows)

    async def has_version(self, view: FeatureView, data_version: int) -> bool:
        table = table_name(self._project, view.name, data_version)
        db = self.options.database
        return bool(await self.run(lambda c: c.command(f"EXISTS TABLE `{db}`.`{table}`")))

    async def drop_version(self, view: FeatureView, data_version: int) -> int:
        table = table_name(self._project, view.name, data_version)
        db = self.options.database
        count = 0
        if await self.run(lambda c: c.command(f"EXISTS TABLE `{db}`.`{table}`")):
            count = int(await self.run(lambda c: c.command(f"SELECT count() FROM `{db}`.`{table}`")))
            await self.run(lambda c: c.command(f"DROP TABLE IF EXISTS `{db}`.`{table}`"))
        self._tables.discard(table)
        return count

    async def expire_version(self, view: FeatureView, data_version: int, seconds: int) -> int:
        """Record the table for dropping after ``seconds``; the serving process drops it
        (tables cannot carry a TTL of their own)."""
        table = table_name(self._project, view.name, data_version)
        db = self.options.database
        drop_after = int(time.time()) + seconds
        await self.run(
            lambda c: c.command(
                f"INSERT INTO `{db}`.`__expiry` VALUES ({{t:String}}, toDateTime({{d:UInt32}}))",
                parameters={"t": table, "d": drop_after},
            )
        )
        return 1

    async def _drop_expired(self) -> None:
        db = self.options.database
        due = await self.run(
            lambda c: (
                c.query(f"SELECT `table` FROM `{db}`.`__expiry` WHERE `drop_after` <= now()").result_rows
            )
        )
        for (table,) in due:
            await self.run(functools.partial(_drop, db=db, table=str(table)))
            self._tables.discard(table)
            log.info("dropped expired online table %s.%s", db, table)


def _drop(client: Any, db: str, table: str) -> None:
    client.command(f"DROP TABLE IF EXISTS `{db}`.`{table}`")
    client.command(f"DELETE FROM `{db}`.`__expiry` WHERE `table` = {{t:String}}", parameters={"t": table})


def _param_keys(view: FeatureView, keys: Sequence[EntityKey]) -> list[Any]:
    if key_type(view) == "Int64":
        return list(keys)
    return [k if type(k) is str else key_text(k) for k in keys]


def _align(q: ViewQuery, rows: list[tuple[Any, ...]]) -> ViewRead:
    """Rows come back in table order, only for keys that exist: line them up."""
    width = len(q.features)
    by_key = {r[0]: r for r in rows}
    lookup = q.keys if key_type(q.view) == "Int64" else _param_keys(q.view, q.keys)
    blank = (None,) * (width + 2)
    ordered = [by_key.get(k, blank) for k in lookup]
    found = [r is not blank for r in ordered]
    cols = list(zip(*ordered, strict=True))
    columns = [list(cols[j + 1]) for j in range(width)]
    for j, fi in enumerate(q.features):
        if q.view.features[fi].dtype is DType.FLOAT32_VECTOR:
            columns[j] = [_from_stored(v) for v in columns[j]]
    return ViewRead(found=found, event_ts_us=list(cols[width + 1]), columns=columns)


def _to_stored(col: pa.ChunkedArray, dtype: DType) -> pa.ChunkedArray | pa.Array:
    if dtype is not DType.FLOAT32_VECTOR:
        return col
    return pa.array(
        [None if v is None else np.asarray(v, dtype="<f4").tobytes() for v in col.to_pylist()], pa.binary()
    )


def _from_stored(value: bytes | None) -> list[float] | None:
    if value is None:
        return None
    vec: list[float] = np.frombuffer(value, dtype="<f4").tolist()
    return vec


def _short(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return text[0][:300] if text else type(e).__name__


def check_embedded_workers(options: ClickHouseOptions, workers: int) -> None:
    if options.embedded and workers > 1:
        raise FailedPrecondition(
            "an embedded ClickHouse (chdb://) store lives inside one process: serve it with --workers 1, "
            "or point the store at a ClickHouse server (http://)"
        )
