"""rows.conform: what a Parquet load, a materialization or a store's write accepts, and
the errors that name the view, column, row (and element) of what it refuses."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from featurestore import rows
from featurestore.errors import InvalidArgument
from featurestore.model import BatchSource, DType, Entity, Feature, FeatureView
from featurestore.push import to_table
from featurestore.rows import conform
from featurestore.sources.base import ViewQuery, ViewRead
from featurestore.sources.memory import MemorySource

U = Entity("user_id", DType.INT64)
F32_MAX = float(np.finfo(np.float32).max)
VEC = FeatureView("v", (U,), (Feature("vec", DType.FLOAT32_VECTOR),))


def vectors(values: list[Any], element: pa.DataType = pa.float64(), chunks: int = 1) -> pa.Table:
    """A table of ``values`` for VEC, split into ``chunks`` chunks (materialization
    batches and Parquet row groups arrive chunked)."""
    n = len(values)
    step = max(1, -(-n // chunks))
    vec = pa.chunked_array(
        [pa.array(values[i : i + step], pa.list_(element)) for i in range(0, n, step)], pa.list_(element)
    )
    return pa.table(
        {
            "user_id": pa.array(range(n), pa.int64()),
            "vec": vec,
            "event_timestamp": pa.array([1] * n, pa.timestamp("us", tz="UTC")),
        }
    )


@pytest.mark.parametrize("element", [pa.float64(), pa.float32(), pa.int64()])
def test_a_null_vector_element_is_refused_naming_the_column_row_and_element(element: pa.DataType) -> None:
    table = vectors([[1, 2], None, [], [3, 4, None]], element, chunks=2)
    with pytest.raises(InvalidArgument) as e:
        conform(VEC, table)
    assert str(e.value) == "view 'v': column 'vec' row 3: element 2 is null"
    assert e.value.details == [{"column": "vec", "row": 3, "element": 2, "reason": "null"}]


@pytest.mark.parametrize("big", [1e39, -3.5e38])
def test_a_finite_double_beyond_float32s_range_is_refused_not_stored_as_an_infinity(big: float) -> None:
    table = vectors([[0.5], [1.0, 2.0, big]], chunks=2)
    with pytest.raises(InvalidArgument) as e:
        conform(VEC, table)
    assert str(e.value) == f"view 'v': column 'vec' row 1: element 2 is {big!r}, outside the float32 range"
    assert e.value.details[0]["reason"] == "range"


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_a_vector_element_that_is_not_a_finite_number_is_refused(bad: float) -> None:
    with pytest.raises(InvalidArgument) as e:
        conform(VEC, vectors([[1.0], [2.0, bad]]))
    assert str(e.value) == f"view 'v': column 'vec' row 1: element 1 is {bad!r}, not a finite number"
    assert e.value.details[0]["reason"] == "non-finite"


@pytest.mark.parametrize("source", [pa.float64(), pa.float32()])
def test_nan_and_infinities_in_a_float64_column_are_stored_as_null(source: pa.DataType) -> None:
    view = FeatureView("f", (U,), (Feature("x", DType.FLOAT64),))
    values = [math.nan, 1.5, math.inf, None, -math.inf, -0.0]
    table = pa.table(
        {
            "user_id": pa.array(range(6), pa.int64()),
            "x": pa.chunked_array([pa.array(values[:3], source), pa.array(values[3:], source)]),
            "event_timestamp": pa.array([1] * 6, pa.timestamp("us", tz="UTC")),
        }
    )
    out = conform(view, table).column("x")
    assert out.type == pa.float64() and out.to_pylist() == [None, 1.5, None, None, None, -0.0]


def test_a_vector_column_of_valid_elements_is_kept_as_float32() -> None:
    table = vectors([[F32_MAX, -F32_MAX, 0.1], None, []], chunks=2)
    out = conform(VEC, table).column("vec")
    assert out.type == pa.list_(pa.float32())
    assert out.to_pylist() == [[F32_MAX, -F32_MAX, pytest.approx(0.1)], None, []]


async def test_a_parquet_file_with_a_null_vector_element_is_refused_when_the_memory_store_loads_it(
    tmp_path: Path,
) -> None:
    path = tmp_path / "v.parquet"
    pq.write_table(vectors([[1.0, None, 2.0], [3.0]]), path)
    view = FeatureView("v", (U,), VEC.features, batch_source=BatchSource(path=str(path)))
    with pytest.raises(InvalidArgument, match="column 'vec' row 0: element 1 is null"):
        await MemorySource("default").prepare([view])


TS = FeatureView("t", (U,), (Feature("at", DType.TIMESTAMP),))


def times(event: pa.Array, at: pa.Array | None = None) -> pa.Table:
    n = len(event)
    return pa.table(
        {
            "user_id": pa.array(range(n), pa.int64()),
            "at": event if at is None else at,
            "event_timestamp": event,
        }
    )


@pytest.mark.parametrize("zone", [None, "UTC", "Europe/Berlin"])
def test_nanosecond_times_are_floored_to_the_microsecond_they_fall_in(zone: str | None) -> None:
    """pandas' and Spark's default unit: Arrow's safe cast refused any sub-µs part with
    an error naming no column; its unsafe one truncates toward 1970."""
    ns = [1_000_000_001, 1_999, -1, -1_000, -1_001, 0]
    out = conform(TS, times(pa.array(ns, pa.timestamp("ns", tz=zone))))
    want = [1_000_000, 1, -1, -1, -2, 0]
    for name in ("at", "event_timestamp"):
        assert out.column(name).type == pa.timestamp("us", tz="UTC")
        assert out.column(name).cast(pa.int64()).to_pylist() == want


@pytest.mark.parametrize(
    ("unit", "ok", "beyond"),
    [("s", 9_223_372_036_854, 9_223_372_036_855), ("ms", 9_223_372_036_854_775, 9_223_372_036_854_776)],
)
def test_seconds_and_milliseconds_beyond_microseconds_range_are_refused_naming_the_row(
    unit: str, ok: int, beyond: int
) -> None:
    per_us = {"s": 1_000_000, "ms": 1_000}[unit]
    fine = conform(TS, times(pa.array([ok, -ok, 1], pa.timestamp(unit))))
    assert fine.column("at").cast(pa.int64()).to_pylist() == [ok * per_us, -ok * per_us, per_us]
    for bad in (beyond, -beyond, -(2**63)):
        event = pa.array([1, 1], pa.timestamp(unit))
        with pytest.raises(InvalidArgument) as e:
            conform(TS, times(event, pa.array([1, bad], pa.timestamp(unit))))
        assert str(e.value).startswith(f"view 't': column 'at' row 1: {bad} {unit} since 1970 is beyond")
        assert e.value.details == [{"column": "at", "row": 1, "reason": "range"}]


async def test_the_memory_store_loads_nanosecond_parquet_and_keeps_the_later_of_two_rows_in_one_microsecond(
    tmp_path: Path,
) -> None:
    """The row a materialization would load (offline.latest_mask orders by the ns)."""
    path = tmp_path / "ns.parquet"
    view = FeatureView("n", (U,), (Feature("tag", DType.STRING),), batch_source=BatchSource(path=str(path)))
    pq.write_table(
        pa.table(
            {
                "user_id": pa.array([1, 1], pa.int64()),
                "tag": ["later", "earlier"],
                "event_timestamp": pa.array([5_000_999, 5_000_001], pa.timestamp("ns")),
            }
        ),
        path,
    )
    store = MemorySource("default")
    await store.prepare([view])
    [res] = await store.read([ViewQuery(view, [1], [0], 0)])
    assert isinstance(res, ViewRead) and res.columns == [["later"]] and res.event_ts_us == [5_000]


# -- a push's table: checked once, by push --------------------------------------------

PUSHED = FeatureView(
    "p",
    (U,),
    (Feature("a", DType.FLOAT64), Feature("b", DType.FLOAT64), Feature("vec", DType.FLOAT32_VECTOR)),
)


def scans(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Names of conform's float/vector scans, one entry per call from now on."""
    calls: list[str] = []
    for name in ("_check_elements", "_finite_or_null"):
        real = getattr(rows, name)

        def spy(*args: Any, _real: Any = real, _name: str = name) -> Any:
            calls.append(_name)
            return _real(*args)

        monkeypatch.setattr(rows, name, spy)
    return calls


def test_a_pushed_table_is_not_scanned_again_by_conform_and_conforms_to_the_same_rows(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    columns: dict[str, list[Any]] = {
        "user_id": [1, 2],
        "a": [math.nan, 2.5],
        "b": [math.inf, None],
        "vec": [[0.5] * 64, None],
    }
    pushed = to_table(PUSHED, columns, 100, {"user_id": U})
    assert pushed.column("a").to_pylist() == [None, 2.5]  # push nulls NaN and inf itself
    assert pushed.column("b").to_pylist() == [None, None]
    calls = scans(monkeypatch)
    out = conform(PUSHED, pushed)
    assert calls == []
    unmarked = conform(PUSHED, pushed.replace_schema_metadata(None))
    assert sorted(calls) == ["_check_elements", "_finite_or_null", "_finite_or_null"]
    assert out.equals(unmarked)


@pytest.mark.parametrize("mark", [{b"featurestore.checked": b"push"}, None])
async def test_a_parquet_file_is_scanned_whatever_metadata_it_carries(
    tmp_path: Path, mark: dict[bytes, bytes] | None
) -> None:
    bad = vectors([[1.0, math.nan], [3.0]]).replace_schema_metadata(mark)
    pq.write_table(bad, tmp_path / "bad.parquet")
    view = FeatureView("v", (U,), VEC.features, batch_source=BatchSource(path=str(tmp_path / "bad.parquet")))
    with pytest.raises(InvalidArgument, match="column 'vec' row 0: element 1 is nan, not a finite number"):
        await MemorySource("default").prepare([view])
    floats = pa.table(
        {"user_id": pa.array([1], pa.int64()), "x": [math.nan], "event_timestamp": bad.column(2).slice(0, 1)}
    ).replace_schema_metadata(mark)
    pq.write_table(floats, tmp_path / "nan.parquet")
    view = FeatureView(
        "f",
        (U,),
        (Feature("x", DType.FLOAT64),),
        batch_source=BatchSource(path=str(tmp_path / "nan.parquet")),
    )
    store = MemorySource("default")
    await store.prepare([view])
    [res] = await store.read([ViewQuery(view, [1], [0], 0)])
    assert isinstance(res, ViewRead) and res.columns == [[None]]


def test_a_fixed_size_list_vector_column_is_taken_as_parquet_gives_it_back_and_still_checked(
    tmp_path: Path,
) -> None:
    # fixed-width embeddings come back from Parquet as fixed_size_list: a lossless cast
    ts = pa.array([1, 2, 3], pa.timestamp("us", tz="UTC"))
    mask = pa.array([False, True, False])
    good = pa.FixedSizeListArray.from_arrays(pa.array([1, 2, 9, 9, 3, 4], pa.float32()), 2, mask=mask)
    pq.write_table(
        pa.table({"user_id": [1, 2, 3], "vec": good, "event_timestamp": ts}), tmp_path / "e.parquet"
    )
    table = pq.read_table(tmp_path / "e.parquet")
    assert pa.types.is_fixed_size_list(table.schema.field("vec").type)
    out = conform(VEC, table).column("vec")
    assert out.type == pa.list_(pa.float32()) and out.to_pylist() == [[1.0, 2.0], None, [3.0, 4.0]]
    bad = pa.FixedSizeListArray.from_arrays(pa.array([1, 2, 9, 9, 3, math.nan]), 2, mask=mask)
    with pytest.raises(InvalidArgument, match="column 'vec' row 2: element 1 is nan"):
        conform(VEC, pa.table({"user_id": [1, 2, 3], "vec": bad, "event_timestamp": ts}))
