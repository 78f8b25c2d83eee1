"""The ClickHouse online store (``OnlineSource``) on clickhouse-connect: the in-process
engine (chdb) for the embedded default and tests, a remote server over HTTP in
production, one code path. Tables and SQL: ``sql.py``; threads: ``pool.py``.

When ClickHouse cannot be reached the store is DOWN and its reads fail at once; tables
it could not create are retried by the health loop, and their views read UNAVAILABLE
naming the cause until then. Other stores' views are unaffected either way. The health
round also checks that the table of every data version served (but 0) exists: a view
whose table was dropped is reported as missing its data (``OnlineSource.missing``), as
it is by the first read that fails for the missing table.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import pyarrow as pa
from clickhouse_connect.driver.exceptions import ClickHouseError, OperationalError

from featurestore import metrics, tls_files
from featurestore.errors import FailedPrecondition, Unavailable
from featurestore.model import DType, FeatureView
from featurestore.rows import conform, view_schema
from featurestore.sources.base import DataMissing, SourceState, ViewQuery, ViewRead
from featurestore.sources.clickhouse import expiry, profiles
from featurestore.sources.clickhouse.codec import align, key_chunks, param_keys, query_chunks, stored_table
from featurestore.sources.clickhouse.failures import BACKEND_ERRORS, describe, unprepared_summary, write_error
from featurestore.sources.clickhouse.layouts import LayoutMismatch, Layouts
from featurestore.sources.clickhouse.options import ClickHouseOptions
from featurestore.sources.clickhouse.pool import ClickHousePool
from featurestore.sources.clickhouse.sql import (
    EXISTING_TABLES,
    UNKNOWN_TABLE,
    SelectCache,
    online_table_ddl,
    table_name,
)
from featurestore.sources.missing import MissingData

log = logging.getLogger(__name__)
T = TypeVar("T")


class ClickHouseOnlineSource:
    kind = "clickhouse"

    def __init__(self, name: str, project: str, options: ClickHouseOptions) -> None:
        self._name = name
        self._project = project
        self.options = options
        if options.ca_file:  # clickhouse-connect reads it at the first call, a store then down for ever
            tls_files.check_ca(f"stores.{name}.ca_file", options.ca_file)
        self.pool = ClickHousePool(name, options)
        self.selects = SelectCache(options.database)
        self.layouts = Layouts(options.database)
        self._tables: set[str] = set()
        # Version-0 tables prepare() could not create: table -> (view, cause). Their
        # views read UNAVAILABLE naming the cause; the health loop keeps creating them.
        self._unprepared: dict[str, tuple[FeatureView, str]] = {}
        self._bootstrapped = False  # database and __expiry exist
        self._upkeep_problem: str | None = None
        self._read_settings = {"max_execution_time": options.timeout_ms / 1000}
        self._state = SourceState.STARTING
        self._reason = ""
        self._health: asyncio.Task[None] | None = None
        self._closing = False
        self._up = metrics.SOURCE_UP.labels(name, self.kind)
        self._missing = MissingData(name)

    @property
    def name(self) -> str:
        return self._name

    def table_uri(self, view: FeatureView) -> str:
        return f"clickhouse://{self.options.database}.{self._project}__{view.name}"

    def state(self) -> SourceState:
        return self._state

    def serving(self, versions: Mapping[str, int]) -> None:
        self._missing.serving(versions)

    def missing(self) -> Mapping[str, str]:
        return self._missing.report

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

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        await self.check()
        self._health = asyncio.create_task(self._health_loop(), name=f"clickhouse-health-{self._name}")

    async def close(self) -> None:
        self._closing = True  # ends the loop at its next check even if the cancel is lost
        if self._health is not None:
            self._health.cancel()
            await asyncio.wait([self._health])
        await asyncio.to_thread(self.pool.close)

    async def _health_loop(self) -> None:
        while not self._closing:
            await asyncio.sleep(self.options.health_interval_ms / 1000)
            try:
                if not self._closing:
                    await self.check()
            except Exception:  # the loop must outlive anything a backend does
                log.exception("clickhouse store %s: health check failed", self._name)

    async def check(self) -> SourceState:
        """One health round (the health loop runs one every ``health_interval_ms``):
        probe, then, if ClickHouse answers, create what is missing and drop expired
        tables. Never waits behind user reads."""
        settings = self._read_settings
        try:
            await self.pool.admin(lambda c: c.command("SELECT 1", settings=settings))
        except Exception as e:  # whatever fails the probe, the store is not serving
            self._set_state(SourceState.DOWN, describe(e))
            return self._state
        self._upkeep_problem = await self._upkeep()
        self._settle(probed=True)
        await self._check_versions()
        return self._state

    async def _check_versions(self) -> None:
        """Whether the table of every data version served (but 0) exists: one query."""
        tables = {table_name(self._project, v, n): (v, n) for v, n in self._missing.checked()}
        if not tables:
            return
        params = {"db": self.options.database, "names": list(tables)}
        try:
            rows = await self.pool.admin(lambda c: c.query(EXISTING_TABLES, parameters=params).result_rows)
        except BACKEND_ERRORS:
            return  # reachability is the probe's to report; the next round checks again
        existing = {str(name) for (name,) in rows}
        for table, (view, version) in tables.items():
            if table not in existing:
                self._missing.found_missing(view, version, self._gone(table))
        self._missing.found_present(pair for table, pair in tables.items() if table in existing)

    def _gone(self, table: str) -> str:
        return f"table {self.options.database}.{table} does not exist (dropped?): re-materialize the view"

    def _settle(self, probed: bool = False) -> None:
        """READY or DEGRADED from what upkeep and prepare left; only a probe that
        answered ends DOWN (or STARTING)."""
        if not probed and self._state not in (SourceState.READY, SourceState.DEGRADED):
            return
        problem = self._upkeep_problem
        if problem is None and self._unprepared:
            problem = unprepared_summary(self._unprepared)
        self._set_state(SourceState.DEGRADED if problem else SourceState.READY, problem or "")

    async def _upkeep(self) -> str | None:
        """What is wrong beyond reachability, or None."""
        try:
            if not self._bootstrapped:
                await self._bootstrap()
            for table, (view, _) in list(self._unprepared.items()):
                try:
                    await self._ensure_table(view, 0)
                except BACKEND_ERRORS as e:
                    self._unprepared[table] = (view, describe(e))
                    raise
                self._unprepared.pop(table, None)
                log.info("clickhouse store %s: created %s after an earlier failure", self._name, table)
            await self._drop_expired()
        except BACKEND_ERRORS as e:
            # e.g. the database was dropped by hand: re-create it next round (idempotent)
            self._bootstrapped = False
            return f"upkeep failed: {describe(e)}"
        return None

    async def _bootstrap(self) -> None:
        db = self.options.database
        await self.pool.admin(lambda c: c.command(f"CREATE DATABASE IF NOT EXISTS `{db}`"))
        await self.pool.admin(
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
                except BACKEND_ERRORS as e:
                    # The rest would most likely fail alike, each after a timeout: the
                    # health loop retries them all once ClickHouse answers.
                    cause = describe(e)
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
            await (self.pool.admin if admin else self.pool.run)(lambda c: c.command(ddl))
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
        sql = self.selects.sql(view, q.features, table)
        chunks = key_chunks(param_keys(view, q.keys))  # one query each, on one thread
        binary = {
            view.features[j].name: "bytes"
            for j in q.features
            if view.features[j].dtype is DType.FLOAT32_VECTOR
        }
        settings = self._read_settings
        try:
            if q.data_version > 0:  # (layouts.py: version 0 is not checked)
                await self.layouts.check(self.pool.run, view, table)
            rows = await self.pool.run(functools.partial(query_chunks, sql, chunks, binary, settings))
        except (ClickHouseError, OSError) as e:
            if getattr(e, "code", None) == UNKNOWN_TABLE and q.data_version > 0:
                self._missing.found_missing(view.name, q.data_version, self._gone(table))
                raise DataMissing(f"clickhouse view {view.name!r}: {self._gone(table)}") from e
            raise Unavailable(f"clickhouse view {view.name!r} (table {table}): {describe(e)}") from e
        return align(q, rows)

    # -- writes ----------------------------------------------------------------------

    async def write(
        self, view: FeatureView, rows: pa.Table, data_version: int, *, create: bool = True
    ) -> int:
        rows = conform(view, rows)
        try:
            if not self._bootstrapped:
                await self._bootstrap()
            if not create and data_version > 0:
                await self._refuse_if_lost(view, data_version)
            table = await self._ensure_table(view, data_version, admin=False)
        except (ClickHouseError, OSError) as e:
            raise Unavailable(
                f"clickhouse store {self._name!r}: cannot create the table of view {view.name!r}: {describe(e)}"
            ) from e
        if self._unprepared.pop(table, None) is not None:
            self._settle()
        data = stored_table(view, rows)
        target = f"{self.options.database}.{table}"
        try:
            if data_version > 0:
                await self.layouts.check(self.pool.run, view, table)
            await self.pool.run(lambda c: c.insert_arrow(target, data))
        except LayoutMismatch as e:
            raise FailedPrecondition(e.message) from None
        except (ClickHouseError, OSError) as e:
            self._tables.discard(table)  # (it may be gone: the next write checks again)
            raise write_error(self._name, table, data_version, e) from e
        return int(rows.num_rows)

    # -- data versions ---------------------------------------------------------------

    async def _command(self, what: str, fn: Callable[[Any], T]) -> T:
        try:
            return await self.pool.run(fn)
        except (ClickHouseError, OSError) as e:
            raise Unavailable(f"clickhouse store {self._name!r}: {what} failed: {describe(e)}") from e

    async def _refuse_if_lost(self, view: FeatureView, data_version: int) -> None:
        """A push must not create again a version whose table is gone (``OnlineSource.write``)."""
        table = table_name(self._project, view.name, data_version)
        known = table in self._tables and view.name not in self._missing.report
        if not known and not await self.has_version(view, data_version):
            raise DataMissing(f"clickhouse view {view.name!r}: {self._gone(table)}")

    async def mark_version(self, view: FeatureView, data_version: int) -> None:
        await self.write(view, view_schema(view).empty_table(), data_version)  # (creates its table)

    async def has_version(self, view: FeatureView, data_version: int) -> bool:
        table, db = table_name(self._project, view.name, data_version), self.options.database
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
        await self._command(what, lambda c: profiles.drop(c, db, table))
        self._tables.discard(table)
        self.layouts.forget(table)
        return count

    async def write_profile(self, view: FeatureView, data_version: int, blob: bytes) -> None:
        table, db = table_name(self._project, view.name, data_version), self.options.database
        await self._command(f"writing the profile of {table}", lambda c: profiles.write(c, db, table, blob))

    async def read_profile(self, view: FeatureView, data_version: int) -> bytes | None:
        table, db = table_name(self._project, view.name, data_version), self.options.database
        return await self._command(f"reading the profile of {table}", lambda c: profiles.read(c, db, table))

    async def expire_version(self, view: FeatureView, data_version: int, seconds: int) -> int:
        """Record the table for dropping after ``seconds``; the serving process drops it
        (tables cannot carry a TTL of their own)."""
        table, db = table_name(self._project, view.name, data_version), self.options.database
        drop_after = int(time.time()) + seconds
        await self._command(f"expiring {table}", lambda c: expiry.record(c, db, table, drop_after))
        return 1

    async def unexpired_versions(self, view: FeatureView, below: int) -> list[int]:
        """Versions under ``below`` whose table is not recorded for dropping
        (``VersionedStore``)."""
        prefix, db = table_name(self._project, view.name, 0)[:-1], self.options.database
        return await self._command(
            f"listing the tables of {view.name}", lambda c: expiry.unexpired(c, db, prefix, below)
        )

    async def _drop_expired(self) -> None:
        db = self.options.database
        for table in await self.pool.admin(lambda c: expiry.due(c, db)):
            await self.pool.admin(functools.partial(expiry.drop, db=db, table=table))
            self._tables.discard(table)
            self.layouts.forget(table)
            log.info("dropped expired online table %s.%s", db, table)
