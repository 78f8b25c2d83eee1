"""Offline (batch) sources that materialization reads: Parquet files, ClickHouse tables.

An ``OfflineSource`` streams Arrow record batches holding the latest row of every
entity key (by event timestamp), so a large table never has to fit in memory and
duplicates resolve by time however the batches fall. ``count`` gives progress an ETA.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Sequence
from typing import Any, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from featurestore.errors import FailedPrecondition, InvalidArgument


class OfflineSource(Protocol):
    def describe(self) -> str: ...

    async def count(self) -> int | None:
        """Rows the stream will yield (an estimate is fine: it only feeds the ETA)."""
        ...

    def latest_batches(
        self, columns: Sequence[str], keys: Sequence[str], timestamp: str, batch_rows: int
    ) -> AsyncIterator[pa.RecordBatch]:
        """``columns`` of the latest row per ``keys`` by ``timestamp``, in batches."""
        ...


def open_source(spec: str, clickhouse_dsn: str | None = None) -> OfflineSource:
    """``clickhouse://db.table`` (read through ``clickhouse_dsn``) or a Parquet path."""
    if spec.startswith("clickhouse://"):
        if not clickhouse_dsn:
            raise InvalidArgument(f"{spec}: name the ClickHouse to read it from (--clickhouse-dsn)")
        return ClickHouseOfflineSource(clickhouse_dsn, spec.removeprefix("clickhouse://"))
    return ParquetOfflineSource(spec)


class ParquetOfflineSource:
    """A Parquet file read with pyarrow. A pre-pass over the key and timestamp columns
    only marks each key's latest row; the full rows then stream batch by batch."""

    def __init__(self, path: str) -> None:
        self.path = path
        try:
            self._file = pq.ParquetFile(path)
        except (OSError, pa.ArrowInvalid) as e:
            raise FailedPrecondition(f"cannot read Parquet file {path}: {e}") from e

    def describe(self) -> str:
        return f"file://{self.path}"

    async def count(self) -> int | None:
        return int(self._file.metadata.num_rows)

    async def latest_batches(
        self, columns: Sequence[str], keys: Sequence[str], timestamp: str, batch_rows: int
    ) -> AsyncIterator[pa.RecordBatch]:
        self._check([*columns, *keys, timestamp])
        ids = await asyncio.to_thread(pq.read_table, self.path, columns=[*keys, timestamp])
        keep = latest_mask(ids, keys, timestamp)
        del ids
        it = self._file.iter_batches(batch_size=batch_rows, columns=list(columns))
        offset = 0
        while True:
            batch = await asyncio.to_thread(next, it, None)
            if batch is None:
                return
            mask = keep[offset : offset + batch.num_rows]
            offset += batch.num_rows
            yield batch if mask.all() else batch.filter(pa.array(mask))

    def _check(self, columns: Sequence[str]) -> None:
        have = set(self._file.schema_arrow.names)
        missing = [c for c in columns if c not in have]
        if missing:
            raise InvalidArgument(
                f"{self.path}: column {missing[0]!r} is missing", details=[{"column": missing[0]}]
            )


def latest_mask(table: pa.Table, keys: Sequence[str], timestamp: str) -> np.ndarray:
    """Boolean mask over ``table``'s rows: True for the latest row of each key (the
    last one in file order among equal timestamps)."""
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


_TABLE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\.[A-Za-z_][A-Za-z0-9_]*$")


class ClickHouseOfflineSource:
    """A warehouse table in ClickHouse (clickhouse-connect, chdb or HTTP). ClickHouse
    picks the latest row per key itself (``LIMIT 1 BY``) and streams Arrow blocks."""

    def __init__(self, dsn: str, table: str) -> None:
        if not _TABLE.match(table):
            raise InvalidArgument(f"{table!r} is not a ClickHouse table name of the form db.table")
        from featurestore.extras import require
        from featurestore.sources.clickhouse.options import ClickHouseOptions

        # only materializations from ClickHouse pay the import
        clickhouse_connect = require("clickhouse_connect", f"offline source clickhouse://{table}")
        options = ClickHouseOptions(dsn=dsn)
        if options.embedded:
            require("chdb", f"offline source clickhouse://{table} (dsn {dsn})")

        self.table = table
        self._quoted = ".".join(f"`{part}`" for part in table.split("."))
        self._client: Any = clickhouse_connect.get_client(dsn=options.client_dsn)
        self._keys: Sequence[str] = ()

    def describe(self) -> str:
        return f"clickhouse://{self.table}"

    async def count(self) -> int | None:
        return int(await asyncio.to_thread(self._client.command, f"SELECT count() FROM {self._quoted}"))

    async def latest_batches(
        self, columns: Sequence[str], keys: Sequence[str], timestamp: str, batch_rows: int
    ) -> AsyncIterator[pa.RecordBatch]:
        have = {
            str(r[0])
            for r in await asyncio.to_thread(
                lambda: self._client.query(f"DESCRIBE TABLE {self._quoted}").result_rows
            )
        }
        missing = [c for c in [*columns, *keys, timestamp] if c not in have]
        if missing:
            raise InvalidArgument(
                f"{self.table}: column {missing[0]!r} is missing", details=[{"column": missing[0]}]
            )
        key_list = ", ".join(f"`{k}`" for k in keys)
        sql = (
            f"SELECT {', '.join(f'`{c}`' for c in columns)} FROM {self._quoted} "
            f"ORDER BY {key_list}, `{timestamp}` DESC LIMIT 1 BY {key_list}"
        )
        stream = await asyncio.to_thread(
            self._client.query_arrow_stream, sql, settings={"max_block_size": batch_rows}, use_strings=True
        )
        blocks = stream.__enter__()
        try:
            while True:
                block = await asyncio.to_thread(next, blocks, None)
                if block is None:
                    return
                for batch in block.to_batches() if isinstance(block, pa.Table) else [block]:
                    yield batch
        finally:
            await asyncio.to_thread(stream.__exit__, None, None, None)
