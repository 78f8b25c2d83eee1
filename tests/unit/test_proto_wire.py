"""The hand-written JoinResponse encoder writes the bytes the generated protobuf classes
would: compared on random results of every dtype, status and null pattern. (Two shapes
the server never sends differ from the encoder it replaced: an empty metadata message,
which is left out, and a zero-row vector column, whose empty list is written; a join has
at least one row and one entity column.)"""

from __future__ import annotations

import math
import random
import struct
from typing import Any

import numpy as np
import pytest

from featurestore.api import proto_codec, proto_wire
from featurestore.join import JoinResult, ResultColumn
from featurestore.model import DType, Status
from featurestore.outcomes import ViewOutcome
from featurestore.v1 import featurestore_pb2 as pb
from tests.support import listed

INT64_EDGES = [0, 1, 127, 128, 16_383, 16_384, 2**31, 2**62, 2**63 - 1, -1, -128, -(2**63)]


def value(rnd: random.Random, dtype: DType) -> Any:
    if dtype is DType.INT64 or dtype is DType.TIMESTAMP:
        return rnd.choice([rnd.choice(INT64_EDGES), rnd.randrange(-(2**63), 2**63)])
    if dtype is DType.FLOAT64:
        return rnd.choice(
            [0.0, -0.0, 1e-300, -2.5, rnd.uniform(-1e12, 1e12), float("inf"), -float("inf"), float("nan")]
        )
    if dtype is DType.STRING:
        return rnd.choice(["", "DE", "ünïcode ✓", "x" * 200])
    if dtype is DType.BOOL:
        return rnd.random() < 0.5
    return [rnd.uniform(-1, 1) for _ in range(rnd.randrange(0, 4))]  # FLOAT32_VECTOR


def outcome(rnd: random.Random, n: int) -> ViewOutcome:
    statuses = [rnd.choice(list(Status)) if rnd.random() < 0.3 else Status.PRESENT for _ in range(n)]
    ts = [None if rnd.random() < 0.1 else rnd.randrange(0, 2**62) for _ in range(n)]
    return ViewOutcome("v", statuses, ts, all(s is Status.PRESENT for s in statuses))


def random_result(seed: int) -> JoinResult:
    rnd = random.Random(seed)
    n = rnd.choice([0, 1, 2, 15, 16, 17, 100])
    shared = [outcome(rnd, n) for _ in range(3)]
    columns = [ResultColumn("user_id", DType.INT64, [rnd.randrange(1, 10**6) for _ in range(n)], None)]
    for i in range(rnd.randrange(1, 12)):
        dtype = rnd.choice(list(DType))
        values: Any = [None if rnd.random() < 0.15 else value(rnd, dtype) for _ in range(n)]
        name = rnd.choice([f"f{i}", f"prix_€{i}", f"f{i}" * 50])
        out = rnd.choice(shared)
        if dtype is DType.FLOAT64 and rnd.random() < 0.5:  # a derived feature's array: NaN = null
            values = np.array([math.nan if v is None else v for v in values], dtype=np.float64)
            if not out.all_present:  # as the join nulls a derived value whose inputs are not PRESENT
                values[[s is not Status.PRESENT for s in out.statuses]] = math.nan
        columns.append(ResultColumn(name, dtype, values, out))
    plan: Any = None
    return JoinResult(columns, rnd.choice([0, 1, 300, 2**40]), rnd.random() < 0.5, n, plan)


def upb_bytes(result: JoinResult, trace_id: str) -> bytes:
    """The same response built with the generated classes (the encoder before this one)."""
    resp = pb.JoinResponse()
    md = resp.metadata
    md.feature_names.extend(c.name for c in result.columns)
    md.registry_version = result.registry_version
    md.trace_id = trace_id
    md.partial = result.partial
    for c in result.columns:
        col = resp.results.add()
        col.name = c.name
        field = {DType.INT64: "int64_values", DType.FLOAT64: "double_values", DType.STRING: "string_values",
                 DType.BOOL: "bool_values", DType.TIMESTAMP: "timestamp_values",
                 DType.FLOAT32_VECTOR: "vector_values"}[c.dtype]  # fmt: skip
        target = getattr(col, field)
        target.SetInParent()
        if c.dtype is DType.FLOAT32_VECTOR:
            for v in c.values:
                target.values.add().values.extend(v or ())
        else:
            default = {DType.STRING: "", DType.BOOL: False, DType.FLOAT64: 0.0}.get(c.dtype, 0)
            target.values.extend([default if v is None else v for v in listed(c.values)])
        if c.outcome is None:
            col.statuses.extend([pb.PRESENT] * result.rows)
            col.event_timestamps.extend([0] * result.rows)
            continue
        col.statuses.extend(c.outcome.statuses)  # type: ignore[arg-type]
        col.event_timestamps.extend(0 if t is None else t for t in c.outcome.event_ts_us)
        col.null_rows.extend(
            i for i, v in enumerate(listed(c.values)) if v is None and c.outcome.statuses[i] is Status.PRESENT
        )
    return resp.SerializeToString()


@pytest.mark.parametrize("seed", range(300))
def test_a_random_result_encodes_to_the_bytes_of_the_generated_classes(seed: int) -> None:
    result = random_result(seed)
    trace = "" if seed % 7 == 0 else f"{seed:032x}"
    assert proto_codec.encode_join(result, trace) == upb_bytes(result, trace)


@pytest.mark.parametrize("n", [1, 127, 128, 300, 16_383, 16_384, 2**21 + 5])
def test_lengths_are_varints_as_protobuf_writes_them(n: int) -> None:
    assert pb.JoinMetadata(trace_id="t" * n).SerializeToString() == b"\x1a" + proto_wire.varint(n) + b"t" * n


@pytest.mark.parametrize("v", INT64_EDGES)
def test_an_int64_is_the_varint_of_its_twos_complement(v: int) -> None:
    assert proto_wire.varint(v & 0xFFFF_FFFF_FFFF_FFFF) == pb.Int64List(values=[v]).SerializeToString()[2:]


def test_a_response_decodes_to_the_values_the_join_served() -> None:
    result = random_result(3)
    msg = pb.JoinResponse.FromString(proto_codec.encode_join(result, "t"))
    for col, got in zip(result.columns, msg.results, strict=True):
        if col.dtype not in (DType.FLOAT64, DType.FLOAT32_VECTOR):  # exact types (float32 rounds)
            assert proto_codec.column_values(got) == [
                v if col.outcome is None or s is Status.PRESENT else None
                for v, s in zip(
                    listed(col.values),
                    col.outcome.statuses if col.outcome else [Status.PRESENT] * result.rows,
                    strict=True,
                )
            ]


def test_a_stored_null_vector_element_is_written_as_nan_and_never_fails_the_response() -> None:
    """Writes refuse null elements (rows.conform), but a row stored before that, or by
    another tool, may hold one: a FloatVector cannot, so it is served as NaN."""
    out = ViewOutcome("v", [Status.PRESENT] * 3, [1, 1, 1], True)
    vectors = [[1.0, None], None, [None, 2.5, None]]
    columns = [
        ResultColumn("user_id", DType.INT64, [1, 2, 3], None),
        ResultColumn("vec", DType.FLOAT32_VECTOR, vectors, out),
    ]
    plan: Any = None
    result = JoinResult(columns, 1, False, 3, plan)
    msg = pb.JoinResponse.FromString(proto_codec.encode_join(result, "t"))
    got = proto_codec.column_values(msg.results[1])
    assert got[1] is None and got[0][0] == 1.0 and got[2][1] == 2.5
    assert [math.isnan(x) for x in (got[0][1], got[2][0], got[2][2])] == [True] * 3


NULL_DTYPES = [DType.INT64, DType.FLOAT64, DType.STRING, DType.TIMESTAMP, DType.BOOL, DType.FLOAT32_VECTOR]


@pytest.mark.parametrize("n", [2, 7, 8, 100])
@pytest.mark.parametrize("where", ["first", "last"])
@pytest.mark.parametrize("dtype", NULL_DTYPES)
def test_a_lone_stored_null_at_either_end_of_a_list_is_a_null_row_as_the_generated_classes_write_it(
    dtype: DType, where: str, n: int
) -> None:
    """A list of a view whose rows are all PRESENT is encoded as having no null, its
    encoder refusing one if there is (upb and struct raise on None): a lone null at either
    end of a short or long list, and a null event timestamp, must still come out as the
    generated classes write them."""
    rnd = random.Random(n)
    values: list[Any] = [value(rnd, dtype) for _ in range(n)]
    values[0 if where == "first" else -1] = None
    ts: list[int | None] = [rnd.randrange(0, 2**62) for _ in range(n)]
    ts[-1 if where == "first" else 0] = None
    out = ViewOutcome("v", [Status.PRESENT] * n, ts, True)
    columns = [
        ResultColumn("user_id", DType.INT64, list(range(n)), None),
        ResultColumn("f", dtype, values, out),
    ]
    plan: Any = None
    result = JoinResult(columns, 1, False, n, plan)
    assert proto_codec.encode_join(result, "t") == upb_bytes(result, "t")
    got = pb.JoinResponse.FromString(proto_codec.encode_join(result, "t")).results[1]
    assert list(got.null_rows) == [0 if where == "first" else n - 1]


@pytest.mark.parametrize(("dtype", "bad"), [(DType.INT64, "7"), (DType.FLOAT64, "1.5"), (DType.STRING, 7)])
@pytest.mark.parametrize("n", [1, 100])
def test_a_value_of_another_type_in_a_list_without_a_null_still_fails_its_encoder(
    dtype: DType, bad: Any, n: int
) -> None:
    """The encoder's refusal is read as "a null is there" only where one is: a value of
    the wrong type (a store bug) fails as it did before, never encoded as a null row."""
    values: list[Any] = [value(random.Random(1), dtype)] * n
    values[-1] = bad
    out = ViewOutcome("v", [Status.PRESENT] * n, [1] * n, True)
    columns = [
        ResultColumn("user_id", DType.INT64, list(range(n)), None),
        ResultColumn("f", dtype, values, out),
    ]
    plan: Any = None
    with pytest.raises((TypeError, struct.error)):
        proto_codec.encode_join(JoinResult(columns, 1, False, n, plan), "t")


@pytest.mark.parametrize("stored_null", [False, True])
@pytest.mark.parametrize("status", [Status.NOT_FOUND, Status.OUTSIDE_MAX_AGE, Status.UNAVAILABLE])
@pytest.mark.parametrize("n", [2, 7, 8, 100])
@pytest.mark.parametrize("dtype", NULL_DTYPES)
def test_rows_not_present_are_written_as_their_dtypes_null_and_a_stored_null_beside_them_is_still_a_null_row(
    dtype: DType, n: int, status: Status, stored_null: bool
) -> None:
    """The join's shape: every row not PRESENT holds None (merge.merge), one list shared by
    two columns and the view's timestamps where the view was UNAVAILABLE; such rows are
    written as the dtype's null value, a stored null in a PRESENT row still listed in
    null_rows, and no list the join handed over is changed."""
    rnd = random.Random(n)
    absent = set(range(0, n, 3))
    statuses = [status if i in absent else Status.PRESENT for i in range(n)]
    k = next(i for i in range(n) if i not in absent)
    if status is Status.UNAVAILABLE:
        shared: list[Any] = [None] * n
        columns_values: list[list[Any]] = [shared, shared]
        ts: list[int | None] = shared
        statuses = [Status.UNAVAILABLE] * n
    else:
        columns_values = [[None if i in absent else value(rnd, dtype) for i in range(n)] for _ in range(2)]
        ts = [
            rnd.randrange(0, 2**62) if i not in absent or status is Status.OUTSIDE_MAX_AGE else None
            for i in range(n)
        ]
        if stored_null:
            columns_values[0][k] = None
    before = [list(v) for v in columns_values]
    out = ViewOutcome("v", statuses, ts, False, unavailable=status is Status.UNAVAILABLE)
    columns = [ResultColumn("user_id", DType.INT64, list(range(n)), None)]
    columns += [ResultColumn(f"f{j}", dtype, v, out) for j, v in enumerate(columns_values)]
    plan: Any = None
    result = JoinResult(columns, 1, status is Status.UNAVAILABLE, n, plan)
    encoded = proto_codec.encode_join(result, "t")
    assert encoded == upb_bytes(result, "t")
    msg = pb.JoinResponse.FromString(encoded)
    expected = [k] if stored_null and status is not Status.UNAVAILABLE else []
    assert list(msg.results[1].null_rows) == expected and list(msg.results[2].null_rows) == []
    assert [list(v) for v in columns_values] == before
