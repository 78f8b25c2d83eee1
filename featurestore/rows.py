"""Arrow shapes of a view's rows, shared by every source, materialization and push.

A view row travels as an Arrow table with the view's entity key columns, its feature
columns, and ``event_timestamp`` (timestamp[us, UTC]). ``conform`` turns whatever a
Parquet file or a push request holds into exactly that schema, or fails naming the
column, before anything is written.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Sequence
from typing import Any, NoReturn

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from featurestore.errors import InvalidArgument
from featurestore.model import INT64_MAX, KEY_SEPARATOR, DType, FeatureView
from featurestore.sources.base import EntityKey

EVENT_TIMESTAMP = "event_timestamp"

# Schema metadata push puts on the table it builds (push.to_table): its per-value checks
# already made every float64 finite or null and every vector element a finite float32, so
# conform skips its two Arrow scans for them (about 50 us of a small push). Only push sets
# it; a materialized batch or a Parquet load has no such mark and is scanned here. The
# value is drawn per process, so a file's own metadata cannot carry it by chance or design.
PUSH_CHECKED = {b"featurestore.checked": secrets.token_hex(16).encode()}
_CHECKED_KEY, _CHECKED_VALUE = next(iter(PUSH_CHECKED.items()))
# Field metadata of a column a ClickHouse source read from a ``DateTime`` (uint32 seconds in
# Arrow) and turned into timestamp[s] (offline.py): an int64 or float64 feature takes it back
# as the epoch seconds it loaded as before the conversion (review s55 round 2). Other
# timestamps are refused for a number, as they were.
FROM_DATETIME = {b"featurestore.from": b"clickhouse DateTime"}

ARROW_TYPES: dict[DType, pa.DataType] = {
    DType.INT64: pa.int64(),
    DType.FLOAT64: pa.float64(),
    DType.STRING: pa.string(),
    DType.BOOL: pa.bool_(),
    DType.TIMESTAMP: pa.timestamp("us", tz="UTC"),
    DType.FLOAT32_VECTOR: pa.list_(pa.float32()),
}


def view_schema(view: FeatureView) -> pa.Schema:
    fields = [pa.field(e.name, ARROW_TYPES[e.dtype], nullable=False) for e in view.entities]
    fields += [pa.field(f.name, ARROW_TYPES[f.dtype]) for f in view.features]
    fields.append(pa.field(EVENT_TIMESTAMP, ARROW_TYPES[DType.TIMESTAMP], nullable=False))
    return pa.schema(fields)


def conform(view: FeatureView, table: pa.Table, timestamp_field: str = EVENT_TIMESTAMP) -> pa.Table:
    """Select, rename and cast ``table`` to :func:`view_schema`; raise naming the column.

    Only lossless casts are accepted (int32 -> int64 yes, float -> int no), so a
    schema drift upstream is an error rather than silently truncated values.
    """
    schema = view_schema(view)
    meta = table.schema.metadata
    checked = meta is not None and meta.get(_CHECKED_KEY) == _CHECKED_VALUE
    columns = []
    for field in schema:
        source_name = timestamp_field if field.name == EVENT_TIMESTAMP else field.name
        if source_name not in table.column_names:
            raise InvalidArgument(
                f"view {view.name!r}: column {source_name!r} is missing",
                details=[{"column": source_name, "reason": "missing"}],
            )
        col = table.column(source_name)
        if (
            pa.types.is_timestamp(col.type)
            and col.type.unit == "s"  # (the only unit the source marks: a forged mark on another is refused)
            and not pa.types.is_timestamp(field.type)
            and table.schema.field(source_name).metadata == FROM_DATETIME
        ):
            col = col.cast(pa.int64())  # (timestamp[s]: the seconds)
        col = _cast(view, source_name, col, field, checked)
        if len(view.entities) > 1 and pa.types.is_string(field.type) and field.name in view.join_keys:
            _check_key_part(view, source_name, col)
        columns.append(col)
    return pa.Table.from_arrays(columns, schema=schema)


def _check_key_part(view: FeatureView, name: str, col: pa.ChunkedArray) -> None:
    """Composite keys are stored as their parts joined by ``|``: a part holding one
    would make two different keys one (``a|b`` + ``c`` vs ``a`` + ``b|c``)."""
    bad = pc.match_substring(col, KEY_SEPARATOR)
    if pc.any(bad).as_py():
        row = pc.index(bad, True).as_py()
        raise InvalidArgument(
            f"view {view.name!r}: column {name!r} row {row}: a part of a composite key may not "
            f"contain {KEY_SEPARATOR!r}",
            details=[{"column": name, "row": row, "reason": "separator in key"}],
        )


def _cast(
    view: FeatureView, name: str, col: pa.ChunkedArray, field: pa.Field, checked: bool = False
) -> pa.ChunkedArray:
    target = field.type
    if col.type.equals(target):
        out = col
    elif pa.types.is_dictionary(col.type):
        out = _cast(view, name, col.cast(col.type.value_type), field, checked)
    elif pa.types.is_timestamp(target) and pa.types.is_timestamp(col.type):
        try:
            out = _to_micros(view, name, col).cast(target)  # zone change; naive is taken as UTC
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
            raise _type_error(view, name, col.type, target) from e
    elif pa.types.is_list(target) and (
        pa.types.is_list(col.type)
        or pa.types.is_large_list(col.type)
        or pa.types.is_fixed_size_list(col.type)
    ):  # (fixed-width embeddings come back from Parquet as fixed_size_list)
        try:
            out = col.cast(target, safe=True)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
            raise _type_error(view, name, col.type, target) from e
    else:
        try:
            out = col.cast(target, safe=True)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
            raise _type_error(view, name, col.type, target) from e
        if not _lossless(col.type, target):
            raise _type_error(view, name, col.type, target)
    if checked:
        pass  # push checked every value (PUSH_CHECKED)
    elif pa.types.is_list(target):
        _check_elements(view, name, col)
    elif pa.types.is_float64(target):
        out = _finite_or_null(out)
    if not field.nullable and out.null_count:
        raise InvalidArgument(
            f"view {view.name!r}: column {name!r} has null values",
            details=[{"column": name, "reason": "null"}],
        )
    return out


# The largest finite float32, as a double: a double beyond it is cast to infinity.
FLOAT32_MAX = 3.4028234663852886e38


_PER_SECOND = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}


def _to_micros(view: FeatureView, name: str, col: pa.ChunkedArray) -> pa.ChunkedArray:
    """A timestamp column in microseconds, the model's precision (a naive one as it is).

    Nanoseconds (pandas' and Spark's default) are floored to the microsecond they fall
    in, deliberately: Arrow's safe cast would refuse any sub-µs part and its unsafe one
    truncates toward 1970. Seconds and milliseconds multiply exactly, unless a value is
    beyond what int64 microseconds hold (about ±292,000 years), which is refused naming
    the row rather than wrapped around."""
    unit = col.type.unit
    if unit == "ns":
        naive = col.cast(pa.int64()).cast(pa.timestamp("ns"))  # flooring in UTC, not in a zone
        return pc.floor_temporal(naive, unit="microsecond").cast(pa.timestamp("us"))
    if unit in ("s", "ms"):
        limit = INT64_MAX // (1_000_000 // _PER_SECOND[unit])
        raw = col.cast(pa.int64())
        beyond = pc.or_(pc.greater(raw, limit), pc.less(raw, -limit))
        if pc.any(beyond).as_py():
            row = pc.index(beyond, True).as_py()
            raise InvalidArgument(
                f"view {view.name!r}: column {name!r} row {row}: {raw[row].as_py()} {unit} since 1970 is "
                "beyond what timestamp[us] holds (about 292,000 years either side)",
                details=[{"column": name, "row": row, "reason": "range"}],
            )
    return col.cast(pa.timestamp("us", tz=col.type.tz))


def _finite_or_null(col: pa.ChunkedArray) -> pa.ChunkedArray:
    """A float64 column with NaN and infinities as null. Every encoder then serves the
    same value: JSON cannot write NaN or an infinity (it wrote null where Arrow and gRPC
    served the NaN), and a derived feature reads NaN as null already. One scan per
    column written; serving scans nothing."""
    finite = pc.is_finite(col)  # null stays null
    if pc.all(finite).as_py() is not False:
        return col
    return pc.if_else(finite, col, pa.scalar(None, col.type))


def _check_elements(view: FeatureView, name: str, col: pa.ChunkedArray) -> None:
    """A vector's elements are finite numbers within float32's range. A null element has
    no float32 form (gRPC's ``FloatVector`` cannot carry it); NaN and infinities have no
    JSON form, and a vector is not made null for one element; the cast would turn a
    finite double beyond the range into an infinity without a word. Checked on the
    source values (in the cast ones it is already an infinity); raises naming the
    column, row and element, as a push does."""
    flat = pc.list_flatten(col)
    if not pa.types.is_floating(flat.type):
        if flat.null_count:
            _element_error(view, name, col, pc.is_null(flat))
        return
    within = pc.less_equal(pc.abs(flat), FLOAT32_MAX)  # False for NaN and infinities, null for null
    bad = pc.invert(pc.fill_null(within, False))
    if pc.any(bad).as_py():
        _element_error(view, name, col, bad)


def _element_error(view: FeatureView, name: str, col: pa.ChunkedArray, bad: pa.ChunkedArray) -> NoReturn:
    at = pc.index(bad, True).as_py()
    parents = pc.list_parent_indices(col)
    row = parents[at].as_py()
    element = at - pc.index(parents, row).as_py()
    value = pc.list_flatten(col)[at].as_py()
    if value is None:
        why, reason = "null", "null"
    elif math.isfinite(value):
        why, reason = f"{value!r}, outside the float32 range", "range"
    else:
        why, reason = f"{value!r}, not a finite number", "non-finite"
    raise InvalidArgument(
        f"view {view.name!r}: column {name!r} row {row}: element {element} is {why}",
        details=[{"column": name, "row": row, "element": element, "reason": reason}],
    )


def _lossless(src: pa.DataType, dst: pa.DataType) -> bool:
    t = pa.types
    if t.is_integer(dst):
        return bool(t.is_integer(src))
    if t.is_floating(dst):
        return bool(t.is_floating(src) or t.is_integer(src))
    if t.is_string(dst):
        return bool(t.is_string(src) or t.is_large_string(src))
    if t.is_boolean(dst):
        return bool(t.is_boolean(src))
    return False


def _type_error(view: FeatureView, name: str, src: pa.DataType, dst: pa.DataType) -> InvalidArgument:
    return InvalidArgument(
        f"view {view.name!r}: column {name!r} has type {src}, expected {dst}",
        details=[{"column": name, "reason": "type", "got": str(src), "expected": str(dst)}],
    )


def column_values(col: pa.ChunkedArray | pa.Array, dtype: DType) -> list[Any]:
    """Arrow column -> the Python values the engine carries (timestamps as epoch µs)."""
    if dtype is DType.TIMESTAMP:
        col = col.cast(pa.int64())
    values: list[Any] = col.to_pylist()
    return values


def column_array(col: pa.ChunkedArray, dtype: DType) -> np.ndarray:
    """Arrow column -> a numpy array for fast ``take``; object dtype where needed."""
    if dtype is DType.TIMESTAMP:
        col = col.cast(pa.int64())
    if dtype in (DType.INT64, DType.FLOAT64, DType.BOOL, DType.TIMESTAMP) and col.null_count == 0:
        arr: np.ndarray = col.to_numpy()
        return arr
    if dtype is DType.STRING:
        # Dictionary-encode so repeated strings share one Python object: a 100k-row
        # column of 20 country codes costs 20 strings, not 100k.
        enc = pc.dictionary_encode(col).combine_chunks()
        uniq = np.array([*enc.dictionary.to_pylist(), None], dtype=object)
        idx = enc.indices.fill_null(len(uniq) - 1).to_numpy()
        return uniq[idx]  # type: ignore[no-any-return]
    # fromiter keeps a 1-d array of list objects (np.array would build a 2-d one).
    return np.fromiter(col.to_pylist(), dtype=object, count=len(col))


def row_keys(table: pa.Table, join_keys: Sequence[str]) -> list[EntityKey]:
    """The entity key of every row, as the engine would build it for a request."""
    if len(join_keys) == 1:
        return table.column(join_keys[0]).to_pylist()  # type: ignore[no-any-return]
    parts = [table.column(k).to_pylist() for k in join_keys]
    return list(zip(*parts, strict=True))


def key_text(key: EntityKey) -> str:
    """Storage form of a key: composite parts joined by ``|`` (Redis layout)."""
    if isinstance(key, tuple):
        return KEY_SEPARATOR.join(map(str, key))
    return str(key)
