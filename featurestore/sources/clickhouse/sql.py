"""The SQL of the ClickHouse online store: table names, the table DDL and the point read.

Online tables are built for point reads: one ``EmbeddedRocksDB`` table per view and
data version, keyed by the entity key (latest write per key wins, as a key-value
store). Of the table designs measured it has the lowest point-read latency; the
numbers are in benchmarks/RESULTS.md ("ClickHouse point reads"). Keys travel only as a
server-side parameter (``IN {keys:Array(Int64)}``); no SQL is ever built from user input.
"""

from __future__ import annotations

from collections.abc import Sequence

from featurestore.model import DType, FeatureView
from featurestore.rows import EVENT_TIMESTAMP

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
# Column lists are cached per (view, layout, projection); clients pick the projection,
# so the cache is bounded.
SELECT_CACHE_SIZE = 1024


# Which of the named tables exist (the health round's check of the data versions served).
EXISTING_TABLES = (
    "SELECT name FROM system.tables WHERE database = {db:String} AND name IN {names:Array(String)}"
)
UNKNOWN_TABLE = 60  # ClickHouse's error code for a table that does not exist


def table_name(project: str, view: str, data_version: int) -> str:
    return f"{project}__{view}__v{data_version}"


def key_type(view: FeatureView) -> str:
    if len(view.entities) == 1 and view.entities[0].dtype is DType.INT64:
        return "Int64"
    return "String"  # string keys, and composite keys as their `|`-joined text


def table_columns(view: FeatureView) -> list[tuple[str, str]]:
    """(name, ClickHouse type) of a view's online table, in order: its layout as ClickHouse
    lists it in ``system.columns`` (``layouts.py`` compares the two)."""
    cols = [(KEY_COLUMN, key_type(view))]
    cols += [(f.name, _CH_TYPES[f.dtype]) for f in view.features]
    cols.append((EVENT_TIMESTAMP, "DateTime64(6, 'UTC')"))
    return cols


def online_table_ddl(database: str, project: str, view: FeatureView, data_version: int) -> str:
    body = ",\n  ".join(f"`{name}` {ch_type}" for name, ch_type in table_columns(view))
    return (
        f"CREATE TABLE IF NOT EXISTS `{database}`.`{table_name(project, view.name, data_version)}` (\n  {body}\n)"
        f" ENGINE = EmbeddedRocksDB PRIMARY KEY `{KEY_COLUMN}`"
    )


def select_parts(database: str, view: FeatureView, features: Sequence[int]) -> tuple[str, str]:
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


def select_sql(database: str, table: str, view: FeatureView, features: Sequence[int]) -> str:
    head, tail = select_parts(database, view, features)
    return head + table + tail


class SelectCache:
    """The point-read SELECT per (view, layout, projection), built once and shared by
    every data version; past ``size`` entries the oldest one goes."""

    def __init__(self, database: str, size: int = SELECT_CACHE_SIZE) -> None:
        self._database = database
        self._size = size
        self._parts: dict[tuple[str, str, tuple[int, ...]], tuple[str, str]] = {}

    def __len__(self) -> int:
        return len(self._parts)

    def sql(self, view: FeatureView, features: Sequence[int], table: str) -> str:
        key = (view.name, view.layout, tuple(features))
        parts = self._parts.get(key)
        if parts is None:
            if len(self._parts) >= self._size:
                del self._parts[next(iter(self._parts))]  # the oldest entry
            parts = self._parts[key] = select_parts(self._database, view, features)
        return parts[0] + table + parts[1]
