"""Streaming push: write rows of one view into its current data version.

The whole request is validated against the view's schema before anything is
written: a wrong type is a 400 that names the column (and row), and a request that
fails validation writes nothing. Timestamps are ISO 8601 strings (HTTP) or epoch
microseconds (gRPC's ``timestamp_values``); ``event_timestamp`` defaults to now. An
integer over HTTP is refused naming the column: JSON's habit is epoch seconds, which
taken as microseconds were stored as January 1970 with a 200 (review s55). The write
runs under the request deadline: a store that does not confirm it in time is a
DEADLINE_EXCEEDED (504), never a request that hangs.
"""

from __future__ import annotations

import asyncio
import math
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa

from featurestore.deadlines import engine_budget
from featurestore.errors import DeadlineExceeded, InvalidArgument, NotFound, clipped, quoted
from featurestore.join import JoinEngine
from featurestore.keys import validate_entities
from featurestore.model import INT64_MAX, INT64_MIN, DType, Entity, FeatureView
from featurestore.rows import ARROW_TYPES, EVENT_TIMESTAMP, FLOAT32_MAX, PUSH_CHECKED


@dataclass(frozen=True, slots=True)
class PushRequest:
    view: str
    columns: Mapping[str, Sequence[Any]]
    # gRPC: the typed field each column came in (``PushColumn``'s oneof), checked against
    # the column's dtype; None over HTTP, where JSON's values are checked one by one
    kinds: Mapping[str, str] | None = None


@dataclass(frozen=True, slots=True)
class PushResult:
    rows_written: int
    data_version: int


class PushService:
    def __init__(self, engine: JoinEngine) -> None:
        self.engine = engine

    async def push(self, req: PushRequest, deadline: float | None = None) -> PushResult:
        """Validate and write one request. ``deadline`` is a ``time.monotonic()`` instant;
        by default the configured request deadline from now, less the answer's margin
        (``deadlines.engine_budget``)."""
        if deadline is None:
            deadline = time.monotonic() + engine_budget(self.engine.limits.deadline_seconds)
        state = self.engine.state
        view = state.definitions.views.get(req.view)
        if view is None:
            raise NotFound(
                f"unknown feature view {quoted(req.view)}", details=[{"feature_view": clipped(req.view)}]
            )
        if view.stream is not None:
            raise InvalidArgument(f"{view.name!r} is a stream view: its processor writes it, not push")
        if req.kinds is not None:
            check_kinds(view, req.kinds, state.definitions.entities)
        table = to_table(
            view,
            req.columns,
            self.engine.limits.max_rows,
            state.definitions.entities,
            epoch_us=req.kinds is not None,  # gRPC's timestamp_values; ISO 8601 strings over HTTP
        )
        store = self.engine.stores.get(view.online_store)
        if store is None:
            raise NotFound(f"online store {view.online_store!r} of view {view.name!r} is not configured here")
        version = state.data_versions.get(view.name, 0)
        where = {"feature_view": view.name, "store": view.online_store}
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise DeadlineExceeded(
                f"push to {view.name!r}: the request deadline passed before the write started; "
                "nothing was written",
                details=[where],
            )
        timer = asyncio.timeout(remaining)
        try:
            async with timer:
                n = await store.write(view, table, version, create=False)  # (a push creates no version)
        except TimeoutError:
            if not timer.expired():
                raise  # the store's own error, not the deadline
            raise DeadlineExceeded(
                f"push to {view.name!r}: online store {view.online_store!r} did not confirm the write "
                "within the request deadline; some rows may have been written (a push is an upsert, "
                "so repeating it is safe)",
                details=[where],
            ) from None
        return PushResult(n, version)


# The typed fields of a gRPC push column each dtype takes (int64 for float64, as request
# data): a column in another is a client's mix-up, which the values alone would not show
# (timestamp_values stored into a float64 column or the entity key, review s53).
GRPC_KINDS: dict[DType, tuple[str, ...]] = {
    DType.INT64: ("int64_values",),
    DType.FLOAT64: ("double_values", "int64_values"),
    DType.STRING: ("string_values",),
    DType.BOOL: ("bool_values",),
    DType.TIMESTAMP: ("timestamp_values",),
    DType.FLOAT32_VECTOR: ("vector_values",),
}


def check_kinds(view: FeatureView, kinds: Mapping[str, str], entities: Mapping[str, Entity]) -> None:
    """Each column's typed field is one its dtype takes (columns not in the view are
    ``to_table``'s to report)."""
    dtypes = {f.name: f.dtype for f in view.features}
    dtypes.update({k: entities[k].dtype for k in view.join_keys if k in entities})
    dtypes[EVENT_TIMESTAMP] = DType.TIMESTAMP
    for name, kind in kinds.items():
        dtype = dtypes.get(name)
        if dtype is not None and kind not in GRPC_KINDS[dtype]:
            raise InvalidArgument(
                f"push to {view.name!r}: column {quoted(name)} is {dtype.value}, sent as {kind} "
                f"(send it as {' or '.join(GRPC_KINDS[dtype])})",
                details=[{"column": clipped(name), "expected": dtype.value, "got": kind}],
            )


def to_table(
    view: FeatureView,
    columns: Mapping[str, Sequence[Any]],
    max_rows: int,
    entities: Mapping[str, Entity],
    *,
    epoch_us: bool = False,
) -> pa.Table:
    """The rows of a push as a table of the view's schema. Timestamps are ISO 8601
    strings, or with ``epoch_us`` (gRPC) integers in microseconds since 1970."""
    if not columns:
        raise InvalidArgument("empty push: no columns")
    keys = {k: columns[k] for k in view.join_keys if k in columns}
    missing = [k for k in view.join_keys if k not in columns]
    if missing:
        raise InvalidArgument(
            f"push to {view.name!r}: entity column {missing[0]!r} is missing",
            details=[{"column": missing[0]}],
        )
    n = validate_entities(keys, frozenset(view.join_keys), entities, max_rows)
    expected = {*view.join_keys, *(f.name for f in view.features), EVENT_TIMESTAMP}
    unknown = sorted(set(columns) - expected)
    if unknown:
        raise InvalidArgument(
            f"push to {view.name!r}: column {quoted(unknown[0])} is not in the view",
            details=[{"column": clipped(unknown[0])}],
        )
    arrays: dict[str, pa.Array] = {
        e.name: pa.array(list(keys[e.name]), ARROW_TYPES[e.dtype]) for e in view.entities
    }
    for f in view.features:
        if f.name not in columns:
            raise InvalidArgument(
                f"push to {view.name!r}: feature column {f.name!r} is missing", details=[{"column": f.name}]
            )
        arrays[f.name] = _column(view.name, f.name, f.dtype, columns[f.name], n, True, epoch_us)
    if EVENT_TIMESTAMP in columns:
        arrays[EVENT_TIMESTAMP] = _column(
            view.name, EVENT_TIMESTAMP, DType.TIMESTAMP, columns[EVENT_TIMESTAMP], n, False, epoch_us
        )
    else:
        now = time.time_ns() // 1000
        arrays[EVENT_TIMESTAMP] = pa.array([now] * n, pa.int64()).cast(ARROW_TYPES[DType.TIMESTAMP])
    # Every value passed its check and NaN/inf floats are null already: the store's
    # conform need not scan them again (rows.PUSH_CHECKED).
    return pa.table(arrays, metadata=PUSH_CHECKED)


def _column(
    view: str, name: str, dtype: DType, values: Sequence[Any], n: int, nullable: bool, epoch_us: bool
) -> pa.Array:
    if len(values) != n:
        raise InvalidArgument(
            f"push to {view!r}: column {name!r} has {len(values)} values, the entity columns {n}",
            details=[{"column": name, "length": len(values), "expected": n}],
        )
    iso = dtype is DType.TIMESTAMP and not epoch_us
    check = _is_iso if iso else _CHECKS[dtype]
    for i, v in enumerate(values):
        if v is None:
            if nullable:
                continue
        elif check(v):
            continue
        got = "null" if v is None else type(v).__name__
        detail: dict[str, Any] = {"column": name, "row": i, "expected": dtype.value, "got": got}
        why = f"{got} ({_show(v)})"
        if iso:
            # epoch seconds, milliseconds or microseconds? JSON cannot say: refused, not guessed
            why += "; over HTTP a timestamp is an ISO 8601 string, e.g. 2024-05-01T10:00:00Z"
            detail["format"] = "ISO 8601"
        elif _numeric_kind(dtype, v):
            why += f", outside the {dtype.value} range"
        elif dtype is DType.FLOAT32_VECTOR and type(v) is list:
            j = next(j for j, x in enumerate(v) if not _is_float32(x))
            detail["element"] = j
            x = v[j]
            why = f"a list whose element {j} is {type(x).__name__} ({_show(x)})"
            if type(x) is float and not math.isfinite(x):
                why += ", not a finite number"
            elif _numeric_kind(DType.FLOAT64, x):
                why += ", outside the float32 range"
        raise InvalidArgument(
            f"push to {view!r}: column {name!r} takes {dtype.value}; row {i} is {why}", details=[detail]
        )
    try:
        if dtype is DType.TIMESTAMP:
            return pa.array([None if v is None else _epoch_us(v) for v in values], pa.int64()).cast(
                ARROW_TYPES[dtype]
            )
        if dtype is DType.FLOAT64:
            # JSON does not tell 3 from 3.0, so an integer is taken as the nearest double;
            # pyarrow would refuse one it cannot represent exactly (above 2**53). NaN and
            # infinities are stored as null (docs/storage.md, "What a write stores"), here
            # rather than by a second scan in rows.conform.
            return pa.array(
                [float(v) if v is not None and math.isfinite(v) else None for v in values],
                ARROW_TYPES[dtype],
            )
        if dtype is DType.FLOAT32_VECTOR:
            return pa.array(
                [None if v is None else [float(x) for x in v] for v in values], ARROW_TYPES[dtype]
            )
        return pa.array(list(values), ARROW_TYPES[dtype])
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError) as e:
        # Every value passed its check, so this is a gap in the checks; still the
        # client's input, answered as such rather than as an internal error.
        raise InvalidArgument(
            f"push to {view!r}: column {name!r} cannot be stored as {dtype.value}: {e}",
            details=[{"column": name, "expected": dtype.value}],
        ) from None


def _show(v: Any) -> str:
    # A 400-digit number or a long list would drown the message.
    r = repr(v)
    return r if len(r) <= 60 else r[:57] + "..."


def _is_int(v: Any) -> bool:
    return type(v) is int and INT64_MIN <= v <= INT64_MAX


_FLOAT64_MAX = sys.float_info.max


def _is_float(v: Any) -> bool:
    return type(v) is float or (type(v) is int and -_FLOAT64_MAX <= v <= _FLOAT64_MAX)


def _is_float32(v: Any) -> bool:
    # A finite number beyond float32's range would be stored as infinity without a word;
    # NaN and infinities have no JSON form (docs/storage.md, "What a write stores"):
    # NaN fails both comparisons.
    return (type(v) is float or type(v) is int) and -FLOAT32_MAX <= v <= FLOAT32_MAX


def _numeric_kind(dtype: DType, v: Any) -> bool:
    """Whether ``v`` is of a kind ``dtype`` takes, so only its magnitude can be wrong."""
    if dtype is DType.FLOAT64:
        return type(v) is int or type(v) is float
    return dtype in (DType.INT64, DType.TIMESTAMP) and type(v) is int


def _is_iso(v: Any) -> bool:
    # Printable ASCII only: CPython 3.11's fromisoformat stops at a NUL, so
    # "2026-11-21T12:00:00Z\x00anything" read as its first 20 characters (review s56).
    if type(v) is not str or not (v.isascii() and v.isprintable()):
        return False
    try:
        _epoch_us(v)
    except ValueError:
        return False
    return True


def _epoch_us(v: int | str) -> int:
    if type(v) is int:
        return v
    dt = datetime.fromisoformat(str(v))
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return (dt - datetime(1970, 1, 1, tzinfo=UTC)) // _MICROSECOND


_MICROSECOND = datetime(1970, 1, 1, 0, 0, 0, 1, tzinfo=UTC) - datetime(1970, 1, 1, tzinfo=UTC)


def _is_str(v: Any) -> bool:
    return type(v) is str


def _is_bool(v: Any) -> bool:
    return type(v) is bool


def _is_vector(v: Any) -> bool:
    return type(v) is list and all(_is_float32(x) for x in v)


_CHECKS: dict[DType, Callable[[Any], bool]] = {
    DType.INT64: _is_int,
    DType.FLOAT64: _is_float,
    DType.STRING: _is_str,
    DType.BOOL: _is_bool,
    DType.TIMESTAMP: _is_int,  # gRPC's epoch µs (``epoch_us``); over HTTP, _is_iso
    DType.FLOAT32_VECTOR: _is_vector,
}
