"""ClickHouse online store on clickhouse-connect: the in-process engine (chdb) for the
embedded default and tests, a remote server over HTTP in production, one code path.

Online tables are built for point reads: one ``EmbeddedRocksDB`` table per view and
data version, keyed by the entity key (latest write per key wins, as a key-value
store). Of the table designs measured it has the lowest point-read latency; the
numbers are in benchmarks/RESULTS.md ("ClickHouse point reads"). Keys travel only as a
server-side parameter (``IN {keys:Array(Int64)}``); no SQL is ever built from user input.

clickhouse-connect's client is synchronous, so every call runs in a bounded thread
pool with one client per thread: the event loop never blocks, and a saturated pool
fails new reads at once (the view is served UNAVAILABLE) instead of queueing them past
their deadline. Every call is bounded by ``timeout_ms`` (HTTP timeouts, and
``max_execution_time`` on reads), so a read abandoned at its deadline frees its thread
soon after. The health probe runs on a thread and client of its own, so it is never
stuck behind user reads. When ClickHouse cannot be reached the store is DOWN and its
reads fail at once; tables it could not create are retried by the health loop, and
their views read UNAVAILABLE naming the cause until then. Other stores' views are
unaffected either way.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import re
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import clickhouse_connect
import numpy as np
import pyarrow as pa
from clickhouse_connect.driver.exceptions import ClickHouseError, OperationalError

from featurestore import metrics
from featurestore.errors import FailedPrecondition, Unavailable
from featurestore.model import DType, FeatureView
from featurestore.rows import EVENT_TIMESTAMP, conform, key_text, row_keys
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
# The database name is spliced into SQL (identifiers cannot be bound), so it must be
# a plain identifier.
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Smallest accepted value of each integer option: a zero health interval would spin,
# a zero timeout would fail every call.
_MINIMUM = {"threads": 1, "max_queued": 0, "health_interval_ms": 10, "timeout_ms": 10}
# Column lists are cached per (view, layout, projection); clients pick the projection,
# so the cache is bounded.
_SQL_CACHE_SIZE = 1024
# Errors a ClickHouse call can fail with when the backend (not our code) misbehaves.
_BACKEND_ERRORS = (ClickHouseError, OSError, Unavailable)  # OSError covers TimeoutError


@dataclass(frozen=True, slots=True)
class ClickHouseOptions:
    dsn: str = "chdb://data/clickhouse"  # chdb://<dir> (in-process) or http(s)://user:pass@host:8123
    database: str = "featurestore"
    threads: int = 4
    max_queued: int = 16  # reads waiting for a thread beyond this fail at once
    health_interval_ms: int = 1000
    # Bounds every call: HTTP connect and send/receive timeouts (whole seconds, rounded
    # up), max_execution_time of reads and the health probe's wait.
    timeout_ms: int = 5000

    def __post_init__(self) -> None:
        for name, low in _MINIMUM.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name}: expected an integer >= {low}, got {value!r}")
        if not isinstance(self.dsn, str) or not self.dsn:
            raise ValueError(f"dsn: expected chdb://DIR or http(s)://host:port, got {self.dsn!r}")
        if not isinstance(self.database, str) or not _IDENTIFIER.fullmatch(self.database):
            raise ValueError(f"database: expected a name of letters, digits and _, got {self.database!r}")

    @staticmethod
    def from_mapping(options: dict[str, Any]) -> ClickHouseOptions:
        """Options from a store's configuration; a ValueError names the bad option."""
        known = set(ClickHouseOptions.__dataclass_fields__)
        unknown = sorted(set(options) - known)
        if unknown:
            raise ValueError(
                f"unknown clickhouse store option {unknown[0]!r}; known: {', '.join(sorted(known))}"
            )
        # The scheme is checked for configured stores only: offline.py also builds
        # options from a --clickhouse-dsn, where clickhouse-connect has the last word.
        dsn = options.get("dsn")
        if isinstance(dsn, str):
            scheme = urlsplit(dsn).scheme if "://" in dsn else ""
            if scheme not in ("chdb", "http", "https"):
                # only the scheme: the rest of a DSN may hold a password
                raise ValueError(
                    f"dsn: unsupported scheme {scheme!r}; use chdb://DIR or http(s)://user:pass@host:8123"
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


def _select_parts(database: str, view: FeatureView, features: Sequence[int]) -> tuple[str, str]:
    """The SELECT of one projection, split around the table name (which carries the
    data version), so one cached pair serves every data version."""
    cols = [f"`{KEY_COLUMN}`"]
    for j in features:
        f = view.features[j]
        # timestamps leave ClickHouse as epoch µs: no per-value datetime objects
        cols.append(f"toUnixTimestamp64Micro(`{f.name}`)" if f.dtype is DType.TIMESTAMP else f"`{f.name}`")
    cols.append(f"toUnixTimestamp64Micro(`{EVENT_TIMESTAMP}`)")
    return (
        f"SELECT {', '.join(cols)} FROM `{database}`.`",
        f"` WHERE `{KEY_COLUMN}` IN {{keys:Array({key_type(view)})}}",
    )


def _select_sql(database: str, table: str, view: FeatureView, features: Sequence[int]) -> str:
    head, tail = _select_parts(database, view, features)
    return head + table + tail


class ClickHouseSource:
    kind = "clickhouse"

    def __init__(self, name: str, project: str, options: ClickHouseOptions) -> None:
        self._name = name
        self._project = project
        self.options = options
        self._pool = ThreadPoolExecutor(max_workers=options.threads, thread_name_prefix=f"clickhouse-{name}")
        # The health probe and table upkeep get a thread (hence a client) of their own:
        # behind busy user reads a probe would report a hung store late, and upkeep
        # would take slots from reads.
        self._admin_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"clickhouse-{name}-admin")
        self._local = threading.local()
        self._clients: list[Any] = []
        self._clients_lock = threading.Lock()
        # Taken on the loop, given back by the pool future's done-callback: once when a
        # call ends, or when it is cancelled while still queued (then it never runs).
        # A read abandoned at its deadline while running holds its slot until it ends.
        self._in_flight = 0
        self._in_flight_lock = threading.Lock()
        self._tables: set[str] = set()
        # Version-0 tables prepare() could not create: table -> (view, cause). Their
        # views read UNAVAILABLE naming the cause; the health loop keeps creating them.
        self._unprepared: dict[str, tuple[FeatureView, str]] = {}
        self._bootstrapped = False  # database and __expiry exist
        self._upkeep_problem: str | None = None
        self._sql: dict[tuple[str, str, tuple[int, ...]], tuple[str, str]] = {}
        self._read_settings = {"max_execution_time": options.timeout_ms / 1000}
        self._state = SourceState.STARTING
        self._reason = ""
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
        if state is not self._state:
            if state is SourceState.DOWN:
                log.warning("clickhouse store %s is down: %s", self._name, reason)
            elif state is SourceState.DEGRADED:
                log.warning("clickhouse store %s is degraded: %s", self._name, reason)
            elif self._state in (SourceState.DOWN, SourceState.DEGRADED):
                log.info("clickhouse store %s is back", self._name)
        self._state = state
        self._reason = reason
        # degraded still answers (only some views are missing their tables)
        self._up.set(1 if state in (SourceState.READY, SourceState.DEGRADED) else 0)

    # -- thread pool -----------------------------------------------------------------

    def _client(self) -> Any:
        client = getattr(self._local, "client", None)
        if client is None:
            if self.options.embedded:
                client = clickhouse_connect.get_client(dsn=self.options.client_dsn)
            else:
                # The defaults (10 s connect, 300 s receive) would let a hung server keep
                # a thread for minutes after the read was abandoned. clickhouse-connect
                # takes whole seconds; the chdb client has no use for either.
                seconds = max(1, math.ceil(self.options.timeout_ms / 1000))
                client = clickhouse_connect.get_client(
                    dsn=self.options.client_dsn, connect_timeout=seconds, send_receive_timeout=seconds
                )
            self._local.client = client
            with self._clients_lock:
                self._clients.append(client)
        return client

    def _release(self, _: Future[Any]) -> None:
        with self._in_flight_lock:
            self._in_flight -= 1

    async def run(self, fn: Callable[[Any], T]) -> T:
        """Run ``fn(client)`` on a pool thread; fail at once when the pool is saturated."""
        with self._in_flight_lock:
            if self._in_flight >= self.options.threads + self.options.max_queued:
                raise Unavailable(f"clickhouse store {self._name!r}: all {self.options.threads} threads busy")
            self._in_flight += 1
        try:
            future = self._pool.submit(lambda: fn(self._client()))
        except RuntimeError as e:  # the pool is shut down: the call never ran
            with self._in_flight_lock:
                self._in_flight -= 1
            raise Unavailable(f"clickhouse store {self._name!r} is closed") from e
        # Registered before wrap_future: the slot is free by the time the awaiter resumes.
        future.add_done_callback(self._release)
        # Cancelling the awaiter cancels the pool future when it has not started yet.
        return await asyncio.wrap_future(future)

    async def _admin(self, fn: Callable[[Any], T]) -> T:
        """Run ``fn(client)`` on the admin thread, waiting at most ``timeout_ms``."""
        try:
            future = self._admin_pool.submit(lambda: fn(self._client()))
        except RuntimeError as e:  # shut down
            raise Unavailable(f"clickhouse store {self._name!r} is closed") from e
        try:
            async with asyncio.timeout(self.options.timeout_ms / 1000):
                return await asyncio.wrap_future(future)
        except TimeoutError:
            raise TimeoutError(f"no answer from ClickHouse within {self.options.timeout_ms} ms") from None

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        await self.check()
        self._health = asyncio.create_task(self._health_loop(), name=f"clickhouse-health-{self._name}")

    async def close(self) -> None:
        if self._health is not None:
            self._health.cancel()
            await asyncio.wait([self._health], timeout=1.0)
        await asyncio.to_thread(self._shutdown)

    def _shutdown(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._admin_pool.shutdown(wait=True, cancel_futures=True)
        for c in self._clients:
            try:
                c.close()
            except Exception:
                log.debug("closing a clickhouse client failed", exc_info=True)

    async def _health_loop(self) -> None:
        while True:
            await asyncio.sleep(self.options.health_interval_ms / 1000)
            try:
                await self.check()
            except Exception:  # the loop must outlive anything a backend does
                log.exception("clickhouse store %s: health check failed", self._name)

    async def check(self) -> SourceState:
        """One health round (the health loop runs one every ``health_interval_ms``):
        probe, then, if ClickHouse answers, create what is missing and drop expired
        tables. Never waits behind user reads."""
        settings = self._read_settings
        try:
            await self._admin(lambda c: c.command("SELECT 1", settings=settings))
        except Exception as e:  # whatever fails the probe, the store is not serving
            self._set_state(SourceState.DOWN, _describe(e))
            return self._state
        self._upkeep_problem = await self._upkeep()
        self._settle(probed=True)
        return self._state

    def _settle(self, probed: bool = False) -> None:
        """READY or DEGRADED from what upkeep and prepare left; only a probe that
        answered ends DOWN (or STARTING)."""
        if not probed and self._state not in (SourceState.READY, SourceState.DEGRADED):
            return
        problem = self._upkeep_problem
        if problem is None and self._unprepared:
            problem = _unprepared_summary(self._unprepared)
        self._set_state(SourceState.DEGRADED if problem else SourceState.READY, problem or "")

    async def _upkeep(self) -> str | None:
        """What is wrong beyond reachability, or None."""
        try:
            if not self._bootstrapped:
                await self._bootstrap()
            for table, (view, _) in list(self._unprepared.items()):
                try:
                    await self._ensure_table(view, 0)
                except _BACKEND_ERRORS as e:
                    self._unprepared[table] = (view, _describe(e))
                    raise
                self._unprepared.pop(table, None)
                log.info("clickhouse store %s: created %s after an earlier failure", self._name, table)
            await self._drop_expired()
        except _BACKEND_ERRORS as e:
            # e.g. the database was dropped by hand: re-create it next round (idempotent)
            self._bootstrapped = False
            return f"upkeep failed: {_describe(e)}"
        return None

    async def _bootstrap(self) -> None:
        db = self.options.database
        await self._admin(lambda c: c.command(f"CREATE DATABASE IF NOT EXISTS `{db}`"))
        await self._admin(
            lambda c: c.command(
                f"CREATE TABLE IF NOT EXISTS `{db}`.`__expiry` (`table` String, `drop_after` DateTime)"
                " ENGINE = EmbeddedRocksDB PRIMARY KEY `table`"
            )
        )
        self._bootstrapped = True

    async def prepare(self, views: Sequence[FeatureView]) -> None:
        """Create version-0 tables so pushes and reads work before a materialization.

        Never raises for ClickHouse being unreachable or refusing the DDL: that would
        fail the server's start (every other store's views with it) or every registry
        change while ClickHouse is away. The tables not created are recorded, their
        views read UNAVAILABLE naming the cause, and the health loop creates them when
        ClickHouse answers. The DDL is built only from validated definition names and
        a fixed type map, so ClickHouse refusing it is never the definition's fault; a
        bug in building it (not a ClickHouse error) still raises."""
        wanted: dict[str, FeatureView] = {}
        for view in views:
            # two layouts of one view share the version-0 table: the first one builds it
            wanted.setdefault(table_name(self._project, view.name, 0), view)
        self._unprepared = {t: u for t, u in self._unprepared.items() if t in wanted}
        cause = f"the store is down: {self._reason}" if self._state is SourceState.DOWN else None
        for table, view in wanted.items():
            if table in self._tables:
                continue
            if cause is None:
                try:
                    if not self._bootstrapped:
                        await self._bootstrap()
                    await self._ensure_table(view, 0)
                except _BACKEND_ERRORS as e:
                    # The rest would most likely fail alike, each after a timeout: the
                    # health loop retries them all once ClickHouse answers.
                    cause = _describe(e)
                    if not isinstance(e, Unavailable):
                        self._bootstrapped = False
                    if isinstance(e, OperationalError | OSError):  # not reachable at all
                        self._set_state(SourceState.DOWN, cause)
                else:
                    self._unprepared.pop(table, None)
                    continue
            self._unprepared[table] = (view, cause)
        self._settle()

    async def _ensure_table(self, view: FeatureView, data_version: int, *, admin: bool = True) -> str:
        table = table_name(self._project, view.name, data_version)
        if table not in self._tables:
            ddl = online_table_ddl(self.options.database, self._project, view, data_version)
            await (self._admin if admin else self.run)(lambda c: c.command(ddl))
            self._tables.add(table)
        return table

    # -- reads -----------------------------------------------------------------------

    async def read(self, queries: Sequence[ViewQuery]) -> list[ViewRead | BaseException]:
        if self._state is SourceState.DOWN:
            # Fail at once: against a hung server every read would hold a thread for
            # the whole timeout. The health probe closes the circuit.
            err = Unavailable(f"clickhouse store {self._name!r} is down: {self._reason}")
            return [err] * len(queries)
        # One query per view; the views of a request run concurrently on the pool.
        results = await asyncio.gather(*(self._read_view(q) for q in queries), return_exceptions=True)
        return [r if isinstance(r, ViewRead | BaseException) else Unavailable(repr(r)) for r in results]

    async def _read_view(self, q: ViewQuery) -> ViewRead:
        view = q.view
        if not q.keys:
            return ViewRead([], [], [[] for _ in q.features])
        table = table_name(self._project, view.name, q.data_version)
        unprepared = self._unprepared.get(table)
        if unprepared is not None:
            raise Unavailable(
                f"clickhouse view {view.name!r}: table {table} not created yet: {unprepared[1]}"
            )
        sql_key = (view.name, view.layout, tuple(q.features))
        parts = self._sql.get(sql_key)
        if parts is None:
            if len(self._sql) >= _SQL_CACHE_SIZE:
                del self._sql[next(iter(self._sql))]  # the oldest entry
            parts = self._sql[sql_key] = _select_parts(self.options.database, view, q.features)
        sql = parts[0] + table + parts[1]
        params = {"keys": _param_keys(view, q.keys)}
        binary = {
            view.features[j].name: "bytes"
            for j in q.features
            if view.features[j].dtype is DType.FLOAT32_VECTOR
        }
        settings = self._read_settings
        try:
            rows = await self.run(
                lambda c: (
                    c.query(sql, parameters=params, column_formats=binary, settings=settings).result_rows
                )
            )
        except (ClickHouseError, OSError) as e:
            raise Unavailable(f"clickhouse view {view.name!r} (table {table}): {_describe(e)}") from e
        return _align(q, rows)

    # -- writes ----------------------------------------------------------------------

    async def write(self, view: FeatureView, rows: pa.Table, data_version: int) -> int:
        rows = conform(view, rows)
        try:
            if not self._bootstrapped:
                await self._bootstrap()
            table = await self._ensure_table(view, data_version, admin=False)
        except (ClickHouseError, OSError) as e:
            raise Unavailable(
                f"clickhouse store {self._name!r}: cannot create the table of view {view.name!r}: {_describe(e)}"
            ) from e
        if self._unprepared.pop(table, None) is not None:
            self._settle()
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
        except (ClickHouseError, OSError) as e:
            raise Unavailable(
                f"clickhouse store {self._name!r}: write to {table} failed: {_describe(e)}"
            ) from e
        return int(rows.num_rows)

    async def _command(self, what: str, fn: Callable[[Any], T]) -> T:
        try:
            return await self.run(fn)
        except (ClickHouseError, OSError) as e:
            raise Unavailable(f"clickhouse store {self._name!r}: {what} failed: {_describe(e)}") from e

    async def has_version(self, view: FeatureView, data_version: int) -> bool:
        table = table_name(self._project, view.name, data_version)
        db = self.options.database
        return bool(
            await self._command(f"EXISTS {table}", lambda c: c.command(f"EXISTS TABLE `{db}`.`{table}`"))
        )

    async def drop_version(self, view: FeatureView, data_version: int) -> int:
        table = table_name(self._project, view.name, data_version)
        db = self.options.database
        count = 0
        what = f"dropping {table}"
        if await self._command(what, lambda c: c.command(f"EXISTS TABLE `{db}`.`{table}`")):
            count = int(
                await self._command(what, lambda c: c.command(f"SELECT count() FROM `{db}`.`{table}`"))
            )
            await self._command(what, lambda c: c.command(f"DROP TABLE IF EXISTS `{db}`.`{table}`"))
        self._tables.discard(table)
        return count

    async def expire_version(self, view: FeatureView, data_version: int, seconds: int) -> int:
        """Record the table for dropping after ``seconds``; the serving process drops it
        (tables cannot carry a TTL of their own)."""
        table = table_name(self._project, view.name, data_version)
        db = self.options.database
        drop_after = int(time.time()) + seconds
        await self._command(
            f"expiring {table}",
            lambda c: c.command(
                f"INSERT INTO `{db}`.`__expiry` VALUES ({{t:String}}, toDateTime({{d:UInt32}}))",
                parameters={"t": table, "d": drop_after},
            ),
        )
        return 1

    async def _drop_expired(self) -> None:
        db = self.options.database
        due = await self._admin(
            lambda c: (
                c.query(f"SELECT `table` FROM `{db}`.`__expiry` WHERE `drop_after` <= now()").result_rows
            )
        )
        for (table,) in due:
            await self._admin(functools.partial(_drop, db=db, table=str(table)))
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


def _short(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0][:300] if text else type(e).__name__


def _describe(e: BaseException) -> str:
    """One line naming the failure. clickhouse-connect wraps transport failures in an
    OperationalError whose text is generic or carries the request URL (a fresh query id
    each time); the urllib3 reason under it says what happened."""
    cause = e.__cause__
    if isinstance(e, OperationalError) and cause is not None:
        reason = getattr(cause, "reason", None)
        return f"cannot reach ClickHouse: {_short(reason if isinstance(reason, BaseException) else cause)}"
    return _short(e)


def _unprepared_summary(unprepared: dict[str, tuple[FeatureView, str]]) -> str:
    names = sorted({view.name for view, _ in unprepared.values()})
    first_cause = next(iter(unprepared.values()))[1]
    return f"tables of view(s) {', '.join(names)} not created: {first_cause}"


def check_embedded_workers(options: ClickHouseOptions, workers: int) -> None:
    if options.embedded and workers > 1:
        raise FailedPrecondition(
            "an embedded ClickHouse (chdb://) store lives inside one process: serve it with --workers 1, "
            "or point the store at a ClickHouse server (http://)"
        )
