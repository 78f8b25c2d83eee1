"""Offline (batch) sources that materialization reads: Parquet files, warehouse tables.

An ``OfflineSource`` streams Arrow record batches of the columns asked for, so a
large table never has to fit in memory; ``count`` lets progress show an ETA.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Protocol

import pyarrow as pa
import pyarrow.parquet as pq

from featurestore.errors import FailedPrecondition, InvalidArgument


class OfflineSource(Protocol):
    def describe(self) -> str: ...

    async def count(self) -> int | None: ...

    async def columns(self) -> list[str]: ...

    def batches(self, columns: Sequence[str], batch_rows: int) -> AsyncIterator[pa.RecordBatch]: ...

    async def read_columns(self, columns: Sequence[str]) -> pa.Table:
        """A few whole columns at once (keys and timestamps for deduplication)."""
        ...


class ParquetSource:
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

    async def columns(self) -> list[str]:
        return list(self._file.schema_arrow.names)

    async def read_columns(self, columns: Sequence[str]) -> pa.Table:
        self._check(columns)
        return await asyncio.to_thread(pq.read_table, self.path, columns=list(columns))

    async def batches(self, columns: Sequence[str], batch_rows: int) -> AsyncIterator[pa.RecordBatch]:
        self._check(columns)
        it = self._file.iter_batches(batch_size=batch_rows, columns=list(columns))
        while True:
            batch = await asyncio.to_thread(next, it, None)
            if batch is None:
                return
            yield batch

    def _check(self, columns: Sequence[str]) -> None:
        have = set(self._file.schema_arrow.names)
        missing = [c for c in columns if c not in have]
        if missing:
            raise InvalidArgument(
                f"{self.path}: column {missing[0]!r} is missing", details=[{"column": missing[0]}]
            )
