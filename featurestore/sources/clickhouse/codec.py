"""Values between the join engine and ClickHouse online tables: keys as the bound
parameter (split over queries when they are many), Arrow rows as the stored columns,
result rows lined up with a query's keys."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from featurestore.model import DType, FeatureView
from featurestore.rows import EVENT_TIMESTAMP, key_text, row_keys
from featurestore.sources.base import EntityKey, ViewQuery, ViewRead
from featurestore.sources.clickhouse.sql import KEY_COLUMN, key_type


def param_keys(view: FeatureView, keys: Sequence[EntityKey]) -> list[Any]:
    """The ``keys`` parameter of the point read, as the table's key column holds them."""
    if key_type(view) == "Int64":
        return list(keys)
    return [k if type(k) is str else key_text(k) for k in keys]


# Bytes of the keys parameter per query. clickhouse-connect sends a parameter over 4 KB as
# a multipart form field, which a ClickHouse server caps at http_max_field_value_size
# (128 KiB by default): 10,000 int64 keys take 240 KB, 10,000 37-character ones 480 KB.
MAX_PARAM_BYTES = 100_000


def key_chunks(keys: list[Any], limit: int = MAX_PARAM_BYTES) -> list[list[Any]]:
    """``keys`` (``param_keys``) split so each part's parameter stays under ``limit`` bytes:
    a key costs its text's UTF-8 bytes, up to 4x for escapes, and a separator."""
    if not keys:
        return [keys]
    if type(keys[0]) is int:
        per = max(1, limit // 22)  # "-9223372036854775808" and its ", " separator: 22 bytes
        return [keys[i : i + per] for i in range(0, len(keys), per)]
    chunks: list[list[Any]] = [[]]
    size = 0
    for k in keys:
        cost = 4 * len(k.encode()) + 3
        if size + cost > limit and chunks[-1]:
            chunks.append([])
            size = 0
        chunks[-1].append(k)
        size += cost
    return chunks


def query_chunks(
    sql: str, chunks: list[list[Any]], binary: dict[str, str], settings: dict[str, Any], client: Any
) -> list[Any]:
    """The rows of one read's queries, one per chunk of keys; the chunks after the first
    are not started once the read has run for its timeout (``max_execution_time``): a
    read abandoned at its deadline does not hold its thread for every chunk's timeout."""
    timeout = float(settings["max_execution_time"])
    end = time.monotonic() + timeout
    rows: list[Any] = []
    for i, keys in enumerate(chunks):
        if i and time.monotonic() > end:
            raise TimeoutError(f"the read's {len(chunks)} queries ran past {timeout:g} s")
        rows += client.query(
            sql, parameters={"keys": keys}, column_formats=binary, settings=settings
        ).result_rows
    return rows


def stored_table(view: FeatureView, rows: pa.Table) -> pa.Table:
    """Conformed rows of ``view`` as its online table's columns."""
    keys = row_keys(rows, view.join_keys)
    key_col = (
        pa.array(keys, pa.int64()) if key_type(view) == "Int64" else pa.array([key_text(k) for k in keys])
    )
    columns = [key_col] + [_to_stored(rows.column(f.name), f.dtype) for f in view.features]
    columns.append(rows.column(EVENT_TIMESTAMP))
    names = [KEY_COLUMN, *(f.name for f in view.features), EVENT_TIMESTAMP]
    return pa.Table.from_arrays(columns, names=names)


def align(q: ViewQuery, rows: list[tuple[Any, ...]]) -> ViewRead:
    """Rows come back in table order, only for keys that exist: line them up."""
    width = len(q.features)
    by_key = {r[0]: r for r in rows}
    lookup = q.keys if key_type(q.view) == "Int64" else param_keys(q.view, q.keys)
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
