"""What a join returns, the same over HTTP and gRPC: columns in the server's order
(entity columns first), rows in request order, a status per value."""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


class Status(enum.Enum):
    PRESENT = "PRESENT"
    NOT_FOUND = "NOT_FOUND"
    OUTSIDE_MAX_AGE = "OUTSIDE_MAX_AGE"  # older than the view's ttl: value None
    UNAVAILABLE = "UNAVAILABLE"  # the store failed or missed the deadline: value None


@dataclass(frozen=True, slots=True)
class Column:
    """One output column. ``values[i]`` is None where ``statuses[i]`` is not PRESENT (and
    where a PRESENT value is null); ``event_timestamps[i]`` is the value's event time (UTC),
    None for entity columns, values never found, an event time outside years 1-9999
    (which a datetime cannot hold) and, over gRPC only, one of exactly the Unix epoch
    (gRPC's answer uses 0 for none: docs/client.md). Timestamp-typed feature values are ISO 8601 strings,
    as the HTTP API renders them, over both transports.

    ``dtype``: the column's type as the answer tells it, ``int64``, ``float64``,
    ``string``, ``bool``, ``timestamp`` or ``float32_vector``: the feature's declared
    dtype on both transports (gRPC's typed columns, HTTP's ``metadata.dtypes``); from a
    server whose JSON answers carry no ``metadata.dtypes``, the type its values show (a
    timestamp shows as ``string``), None where no value is not null. Not compared: both
    transports' results are equal when their values are."""

    name: str
    values: list[Any]
    statuses: list[Status]
    event_timestamps: list[datetime | None]
    dtype: str | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class JoinResult:
    feature_names: list[str]
    columns: list[Column]
    registry_version: int  # the registry snapshot that answered
    trace_id: str  # quote it to find the request's trace and logs
    partial: bool  # some values are UNAVAILABLE

    def __getitem__(self, name: str) -> Column:
        for column in self.columns:
            if column.name == name:
                return column
        raise KeyError(name)

    def __iter__(self) -> Iterator[Column]:
        return iter(self.columns)

    def __len__(self) -> int:
        """Rows."""
        return len(self.columns[0].values) if self.columns else 0

    def to_dict(self) -> dict[str, list[Any]]:
        """Column name -> values (None where not PRESENT)."""
        return {c.name: c.values for c in self.columns}

    def statuses(self) -> dict[str, list[Status]]:
        return {c.name: c.statuses for c in self.columns}

    def to_arrow(self, *, statuses: bool = False) -> Any:
        """A ``pyarrow.Table`` of the values (pyarrow must be installed), each column of
        its ``dtype`` (``_ARROW_TYPES``; a timestamp is its ISO string, as in ``values``), so
        every batch of a join has one schema; a column without one (from a server whose
        JSON answers carry no dtypes, a column of nulls) is of Arrow's null type, which
        ``Table.cast`` turns into any.
        With ``statuses``, a ``<name>__status`` string column follows each value column
        (a ValueError naming the name when a column is itself named so)."""
        try:
            import pyarrow as pa
        except ImportError:
            raise ImportError("JoinResult.to_arrow needs pyarrow: pip install pyarrow") from None
        arrays: dict[str, Any] = {}
        for c in self.columns:
            of_type = _ARROW_TYPES.get(c.dtype or "")
            arrays[c.name] = pa.array(c.values, None if of_type is None else of_type(pa))
            if statuses:
                arrays[f"{c.name}__status"] = pa.array([s.value for s in c.statuses], pa.string())
        return pa.table(_unclashed(arrays, self.columns, statuses))

    def to_pandas(self, *, statuses: bool = False) -> Any:
        """A ``pandas.DataFrame`` of the values (pandas must be installed), each column of
        the pandas dtype of its ``dtype`` (``_PANDAS_DTYPES``: nullable ``Int64``,
        ``boolean`` and ``string``, so an int64 with a null is not turned into float64,
        which would round values beyond 2**53; float64 with NaN; vectors as lists). With
        ``statuses``, as ``to_arrow``."""
        try:
            import pandas as pd  # type: ignore[import-untyped]
        except ImportError:
            raise ImportError("JoinResult.to_pandas needs pandas: pip install pandas") from None
        data: dict[str, Any] = {}
        for c in self.columns:
            data[c.name] = pd.Series(c.values, dtype=_PANDAS_DTYPES.get(c.dtype or "", object))
            if statuses:
                data[f"{c.name}__status"] = [s.value for s in c.statuses]
        return pd.DataFrame(_unclashed(data, self.columns, statuses))


def _unclashed(table: dict[str, Any], columns: list[Column], statuses: bool) -> dict[str, Any]:
    """``table``, when it holds a key for each column (and each status column): a column
    named as another's ``<name>__status`` overwrote it in the dict, that column's statuses
    gone without a word (review s56). Raises ValueError naming the name taken twice."""
    if len(table) == len(columns) * (2 if statuses else 1):
        return table
    seen: set[str] = set()
    for c in columns:
        for name in (c.name, f"{c.name}__status") if statuses else (c.name,):
            if name in seen:
                raise ValueError(
                    f"two columns would be named {name!r} (a column and another's statuses): "
                    "call without statuses=True and read JoinResult.statuses() instead"
                )
            seen.add(name)
    raise AssertionError("no name taken twice")


# dtype -> its pyarrow type, given the pyarrow module (imported only when used)
_ARROW_TYPES: dict[str, Callable[[Any], Any]] = {
    "int64": lambda pa: pa.int64(),
    "float64": lambda pa: pa.float64(),
    "string": lambda pa: pa.string(),
    "bool": lambda pa: pa.bool_(),
    "timestamp": lambda pa: pa.string(),  # the values are ISO strings (years outside 1-9999 too)
    "float32_vector": lambda pa: pa.list_(pa.float32()),
}
_PANDAS_DTYPES: dict[str, Any] = {
    "int64": "Int64",
    "float64": "float64",
    "string": "string",
    "bool": "boolean",
    "timestamp": "string",
    "float32_vector": object,
}
