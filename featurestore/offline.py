"""Offline (batch) sources that materialization reads: Parquet files and directories
(hive partitions too), ClickHouse tables.

An ``OfflineSource`` streams Arrow record batches holding the latest row of every
entity key (by event timestamp) among the rows of an event-time range, so a large table
never has to fit in memory and duplicates resolve by time however the batches fall.
Before its first batch the stream fills the ``ScanCounts`` it is given: the source rows
in the range (duplicates included: what a run read) and the rows it will yield (one per
key: what progress counts toward). Contract: tests/contract/test_offline_source.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import re
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from featurestore.errors import FailedPrecondition, InvalidArgument
from featurestore.rows import FROM_DATETIME

if TYPE_CHECKING:
    from featurestore.sources.clickhouse.options import ClickHouseOptions

_R = TypeVar("_R")


@dataclass(frozen=True, slots=True)
class EventTimeRange:
    """Which rows of a source a run reads, by event time (epoch µs, UTC): ``start``
    inclusive, ``end`` exclusive, ``after`` exclusive (an incremental run's watermark).
    None = unbounded."""

    start_us: int | None = None
    end_us: int | None = None
    after_us: int | None = None

    @property
    def bounded(self) -> bool:
        return any(b is not None for b in (self.start_us, self.end_us, self.after_us))


EVERYTHING = EventTimeRange()


@dataclass(slots=True)
class ScanCounts:
    """What a ``latest_batches`` stream tells of its rows, before its first batch (None:
    not known)."""

    in_range: int | None = None  # source rows in the range, duplicates included
    latest: int | None = None  # rows the stream yields, one per key (an estimate is fine: the ETA)


class OfflineSource(Protocol):
    def describe(self) -> str: ...

    async def count(self, timestamp: str, span: EventTimeRange = EVERYTHING) -> int | None:
        """Rows in ``span``, duplicates included."""
        ...

    def latest_batches(
        self,
        columns: Sequence[str],
        keys: Sequence[str],
        timestamp: str,
        batch_rows: int,
        span: EventTimeRange = EVERYTHING,
        counts: ScanCounts | None = None,
    ) -> AsyncIterator[pa.RecordBatch]:
        """``columns`` of the latest row per ``keys`` by ``timestamp`` among the rows in
        ``span``, in batches; ``counts`` filled before the first."""
        ...


def open_source(spec: str, clickhouse: str | ClickHouseOptions | None = None) -> OfflineSource:
    """``clickhouse://db.table`` (read through ``clickhouse``: a DSN, or a store's options
    with its credentials), or a Parquet file or directory (of files, or hive partitions
    ``key=value/``)."""
    if spec.startswith("clickhouse://"):
        if not clickhouse:
            raise InvalidArgument(f"{spec}: name the ClickHouse to read it from (--clickhouse-dsn)")
        return ClickHouseOfflineSource(clickhouse, spec.removeprefix("clickhouse://"))
    return ParquetOfflineSource(spec.removeprefix("file://"))


class ParquetOfflineSource:
    """A Parquet file, or a directory of them (hive partition directories become
    columns), read with ``pyarrow.dataset``. A pre-pass over the key and timestamp
    columns only marks each key's latest row; the full rows then stream batch by batch.
    Both passes scan in one thread: the mask is aligned by row order, which a threaded
    scan does not promise."""

    def __init__(self, path: str) -> None:
        self.path = path
        try:
            self._dataset = ds.dataset(path, format="parquet", partitioning="hive")
        except (OSError, pa.ArrowInvalid) as e:
            raise FailedPrecondition(f"cannot read Parquet {path}: {e}") from e
        if not self._dataset.files:
            raise FailedPrecondition(f"cannot read Parquet {path}: no Parquet files there")

    def describe(self) -> str:
        return f"file://{self.path}"

    async def count(self, timestamp: str, span: EventTimeRange = EVERYTHING) -> int | None:
        where = self._filter(timestamp, span)
        return int(await self._read(self._dataset.count_rows, filter=where))

    async def _read(self, step: Callable[..., _R], *args: Any, **kwargs: Any) -> _R:
        """One step of a scan, on a thread. Opening the dataset looked at its first file
        only: a later one that is not Parquet, or a part whose column types differ from
        the first's, fails here, named by its path."""
        try:
            return await asyncio.to_thread(step, *args, **kwargs)
        except (OSError, pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as e:
            raise FailedPrecondition(f"cannot read Parquet {self.path}: {e}") from e

    async def latest_batches(
        self,
        columns: Sequence[str],
        keys: Sequence[str],
        timestamp: str,
        batch_rows: int,
        span: EventTimeRange = EVERYTHING,
        counts: ScanCounts | None = None,
    ) -> AsyncIterator[pa.RecordBatch]:
        self._check([*columns, *keys, timestamp])
        where = self._filter(timestamp, span)
        ids = await self._read(
            self._dataset.to_table, columns=[*keys, timestamp], filter=where, use_threads=False
        )
        for k in keys:  # (latest_mask cannot order them: a null is neither equal nor unequal)
            if ids.column(k).null_count:
                raise InvalidArgument(
                    f"{self.path}: key column {k!r} has null values", details=[{"column": k}]
                )
        keep = self._latest(ids, keys, timestamp)
        if counts is not None:
            counts.in_range, counts.latest = len(keep), int(keep.sum())
        del ids
        it = iter(
            self._dataset.to_batches(
                columns=list(columns), filter=where, batch_size=batch_rows, use_threads=False
            )
        )
        offset = 0
        while True:
            batch = await self._read(next, it, None)
            if batch is None:
                break
            if batch.num_rows == 0:
                continue
            mask = keep[offset : offset + batch.num_rows]
            offset += batch.num_rows
            yield batch if mask.all() else batch.filter(pa.array(mask))
        if offset != len(keep):
            raise FailedPrecondition(
                f"{self.path} changed while it was read ({offset} rows, then {len(keep)})"
            )

    def _latest(self, ids: pa.Table, keys: Sequence[str], timestamp: str) -> np.ndarray:
        """``latest_mask`` of the pre-pass's columns. A dictionary-encoded one (a pandas
        Categorical written with ``to_parquet``) is decoded first: Arrow does not sort
        those. One of a type it cannot sort at all is refused naming the columns."""
        for i, name in enumerate(ids.column_names):
            if pa.types.is_dictionary(ids.schema.field(i).type):
                col = ids.column(i)
                ids = ids.set_column(i, name, col.cast(col.type.value_type))
        try:
            return latest_mask(ids, keys, timestamp)
        except (pa.ArrowTypeError, pa.ArrowNotImplementedError) as e:
            types = ", ".join(f"{c!r} {ids.schema.field(c).type}" for c in [*keys, timestamp])
            raise InvalidArgument(
                f"{self.path}: cannot order the rows by their key and event time columns ({types}): {e}",
                details=[{"column": c, "type": str(ids.schema.field(c).type)} for c in [*keys, timestamp]],
            ) from None

    def _filter(self, timestamp: str, span: EventTimeRange) -> pc.Expression | None:
        if not span.bounded:
            return None
        field = self._dataset.schema.field(timestamp) if timestamp in self._dataset.schema.names else None
        if field is None or not pa.types.is_timestamp(field.type):
            raise InvalidArgument(
                f"{self.path}: the event time column {timestamp!r} is missing or not a timestamp",
                details=[{"column": timestamp}],
            )
        unit = field.type.unit
        per_us = {"s": None, "ms": None, "us": 1, "ns": 1000}[unit]

        def at(us: int) -> pa.Scalar:
            value = us * per_us if per_us else us // (1_000_000 if unit == "s" else 1000)
            return pa.scalar(value, pa.timestamp(unit, tz=field.type.tz))

        col = pc.field(timestamp)
        parts = []
        if span.start_us is not None:
            parts.append(col >= at(span.start_us))
        if span.end_us is not None:
            parts.append(col < at(span.end_us))
        if span.after_us is not None:
            parts.append(col > at(span.after_us))
        where = parts[0]
        for part in parts[1:]:
            where = where & part
        return where

    def _check(self, columns: Sequence[str]) -> None:
        have = set(self._dataset.schema.names)
        missing = [c for c in columns if c not in have]
        if missing:
            raise InvalidArgument(
                f"{self.path}: column {missing[0]!r} is missing", details=[{"column": missing[0]}]
            )


def latest_mask(table: pa.Table, keys: Sequence[str], timestamp: str) -> np.ndarray:
    """Boolean mask over ``table``'s rows: True for the latest row of each key (the
    last one in file order among equal timestamps). The key columns hold no nulls."""
    n = table.num_rows
    if n == 0:
        return np.zeros(0, dtype=bool)
    table = table.append_column("__row", pa.array(np.arange(n, dtype=np.int64)))
    order = pc.sort_indices(table, sort_keys=[(k, "ascending") for k in [*keys, timestamp, "__row"]])
    ordered = table.take(order)
    last = np.ones(n, dtype=bool)  # last row of each key group in sorted order
    if n > 1:
        differs = np.zeros(n - 1, dtype=bool)
        for k in keys:
            col = ordered.column(k)
            differs |= pc.not_equal(col.slice(0, n - 1), col.slice(1)).to_numpy(zero_copy_only=False)
        last[:-1] = differs
    mask = np.zeros(n, dtype=bool)
    mask[order.to_numpy()[last]] = True
    return mask


RECEIVE_TIMEOUT_SECONDS = 60  # a warehouse's silence between bytes (ClickHouseOfflineSource)
_TABLE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\.[A-Za-z_][A-Za-z0-9_]*$")


class ClickHouseOfflineSource:
    """A warehouse table in ClickHouse (clickhouse-connect, chdb or HTTP). ClickHouse
    picks the latest row per key itself (``LIMIT 1 BY``) and streams Arrow blocks."""

    def __init__(self, dsn: str | ClickHouseOptions, table: str) -> None:
        if not _TABLE.match(table):
            raise InvalidArgument(f"{table!r} is not a ClickHouse table name of the form db.table")
        from featurestore.extras import require
        from featurestore.sources.clickhouse.options import ClickHouseOptions

        # only materializations from ClickHouse pay the import
        clickhouse_connect = require("clickhouse_connect", f"offline source clickhouse://{table}")
        try:
            options = ClickHouseOptions(dsn=dsn) if isinstance(dsn, str) else dsn
        except ValueError as e:  # (only its scheme, host or port: it may hold a password)
            raise InvalidArgument(f"--clickhouse-dsn: {e}") from None
        if options.embedded:
            require("chdb", f"offline source clickhouse://{table} (dsn {options.dsn})")

        self.table = table
        self._quoted = ".".join(f"`{part}`" for part in table.split("."))
        # Bounded: get_client already queries the server (its version and time zone), and
        # the library's defaults are 10 s to connect and 300 s per read, so a warehouse
        # that accepts and never answers held a caller (once: the serving loop, review
        # s54) for 5 minutes. Connect within the store's timeout_ms; a read may wait
        # RECEIVE_TIMEOUT_SECONDS between bytes, not in all: ClickHouse sends progress
        # headers while a long LIMIT 1 BY sort runs (clickhouse-connect asks for them at
        # this timeout less 5 s), so a slow scan is not cut, a silent server is.
        args = options.client_args()
        if not options.embedded:  # (chdb runs in-process: no socket, and it warns of them)
            args["connect_timeout"] = math.ceil(options.timeout_ms / 1000)
            args["send_receive_timeout"] = RECEIVE_TIMEOUT_SECONDS
        self._client: Any = clickhouse_connect.get_client(**args)
        self._keys: Sequence[str] = ()

    def describe(self) -> str:
        return f"clickhouse://{self.table}"

    async def count(self, timestamp: str, span: EventTimeRange = EVERYTHING) -> int | None:
        where, params = _where(timestamp, span)
        sql = f"SELECT count() FROM {self._quoted}{where}"
        return int(await asyncio.to_thread(lambda: self._client.command(sql, parameters=params)))

    async def latest_batches(
        self,
        columns: Sequence[str],
        keys: Sequence[str],
        timestamp: str,
        batch_rows: int,
        span: EventTimeRange = EVERYTHING,
        counts: ScanCounts | None = None,
    ) -> AsyncIterator[pa.RecordBatch]:
        types = {
            str(r[0]): str(r[1])
            for r in await asyncio.to_thread(
                lambda: self._client.query(f"DESCRIBE TABLE {self._quoted}").result_rows
            )
        }
        missing = [c for c in [*columns, *keys, timestamp] if c not in types]
        if missing:
            raise InvalidArgument(
                f"{self.table}: column {missing[0]!r} is missing", details=[{"column": missing[0]}]
            )
        seconds = {c for c in columns if _is_datetime(types[c])}
        key_list = ", ".join(f"`{k}`" for k in keys)
        where, params = _where(timestamp, span)
        if counts is not None:
            # The rows in the range, and an estimate of its keys (``uniq``: a fixed-size
            # sketch, about 1% off) for the ETA, in one scan of the key and time columns
            # (the LIMIT 1 BY query reads them again with every other column, and sorts).
            sql = f"SELECT count(), uniq({key_list}) FROM {self._quoted}{where}"
            [(n, latest)] = await asyncio.to_thread(
                lambda: self._client.query(sql, parameters=params).result_rows
            )
            counts.in_range, counts.latest = int(n), int(latest)
        sql = (
            f"SELECT {', '.join(f'`{c}`' for c in columns)} FROM {self._quoted}{where} "
            f"ORDER BY {key_list}, `{timestamp}` DESC LIMIT 1 BY {key_list}"
        )
        stream = await asyncio.to_thread(
            lambda: self._client.query_arrow_stream(
                sql, parameters=params, settings={"max_block_size": batch_rows}, use_strings=True
            )
        )
        blocks = stream.__enter__()
        ended = False
        try:
            while True:
                block = await asyncio.to_thread(next, blocks, None)
                if block is None:
                    ended = True
                    return
                for batch in block.to_batches() if isinstance(block, pa.Table) else [block]:
                    yield _as_timestamps(batch, seconds) if seconds else batch
        finally:
            # An unfinished stream (the consistency check gave up, or a read failed) is
            # closed without reading the rest: query_arrow_stream's source is urllib3's
            # response, whose close() closes the connection (an exit while the server kept
            # streaming took 0.0 s, clickhouse-connect 1.12 / urllib3 2, 2026-12-07).
            with contextlib.suppress(Exception) if not ended else contextlib.nullcontext():
                await asyncio.to_thread(stream.__exit__, None, None, None)


def _is_datetime(ch_type: str) -> bool:
    """A ClickHouse ``DateTime`` (time zone or not, Nullable or not; not ``DateTime64``)."""
    for wrapper in ("LowCardinality(", "Nullable("):
        if ch_type.startswith(wrapper):
            ch_type = ch_type[len(wrapper) : -1]
    return ch_type == "DateTime" or ch_type.startswith("DateTime(")


def _as_timestamps(batch: pa.RecordBatch, names: set[str]) -> pa.RecordBatch:
    """ClickHouse's Arrow output gives a ``DateTime`` as uint32 seconds since 1970 (only
    ``DateTime64`` becomes an Arrow timestamp), which no view dtype takes: timestamp[s,
    UTC] instead, the instant it holds (its time zone is only how ClickHouse prints it)."""
    for i, field in enumerate(batch.schema):
        if field.name in names:
            col = batch.column(i)
            if pa.types.is_dictionary(col.type):  # (LowCardinality)
                col = col.dictionary_decode()
            if pa.types.is_integer(col.type):
                # marked: an int64 or float64 feature takes it as epoch seconds (rows.conform)
                as_time = pa.field(field.name, pa.timestamp("s", tz="UTC"), metadata=FROM_DATETIME)
                batch = batch.set_column(i, as_time, col.cast(pa.int64()).cast(as_time.type))
    return batch


def _where(timestamp: str, span: EventTimeRange) -> tuple[str, dict[str, int]]:
    """The WHERE clause of an event-time range, bounds as server-side parameters (µs):
    DateTime and DateTime64 columns compare alike."""
    micros = f"toUnixTimestamp64Micro(toDateTime64(`{timestamp}`, 6))"
    parts, params = [], {}
    for name, op, value in (
        ("start", ">=", span.start_us),
        ("end", "<", span.end_us),
        ("after", ">", span.after_us),
    ):
        if value is not None:
            parts.append(f"{micros} {op} {{{name}:Int64}}")
            params[name] = value
    return (" WHERE " + " AND ".join(parts) if parts else ""), params
