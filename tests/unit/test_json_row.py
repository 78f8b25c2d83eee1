"""The one-row join response (json_row.encode_row) is byte for byte the document
json_codec.encode_document writes for the same result: every value type, every status,
shared and separate view outcomes, entity columns, partial answers."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest

from featurestore.api import json_codec, json_row
from featurestore.join import JoinResult, ResultColumn, ViewOutcome
from featurestore.model import DType, Status
from tests.unit.test_json_response import EDGE_VALUES, PLAN

VALUES = [(dtype, value) for dtype, value, _ in EDGE_VALUES] + [
    (DType.STRING, 'a,"b"],[{"values":['),  # the fragments' own bytes inside a value
    (DType.STRING, "\x00\x1f\u2028"),
    (DType.FLOAT64, np.float64(0.25)),  # a numpy scalar, as a ClickHouse or Arrow read may give
    (DType.FLOAT32_VECTOR, np.array([0.5, -1.5], dtype=np.float32)),
    (DType.TIMESTAMP, None),
    (DType.TIMESTAMP, -62_135_596_800_000_000),  # 0001-01-01T00:00:00Z
    (DType.INT64, 0),
    (DType.BOOL, False),
]


def outcome(status: Status, ts: int | None) -> ViewOutcome:
    return ViewOutcome("v", [status], [ts], all_present=status is Status.PRESENT)


def both(result: JoinResult, trace_id: str = "4bf92f3577b34da6a3ce929d0e0e4736") -> bytes:
    row = json_row.encode_row(result, trace_id)
    assert row == json_codec.encode_document(result, trace_id)
    assert json_codec.encode_join(result, trace_id) == row  # what a one-row join is answered with
    return row


@pytest.mark.parametrize(("dtype", "value"), VALUES, ids=lambda v: repr(v)[:24])
def test_every_value_type_is_the_documents_bytes(dtype: DType, value: object) -> None:
    column = ResultColumn("v__x", dtype, [value], outcome(Status.PRESENT, 1_700_000_000_000_000))
    json.loads(both(JoinResult([column], 1, False, 1, PLAN)))


@pytest.mark.parametrize("status", list(Status))
@pytest.mark.parametrize("ts", [None, 0, 1_700_000_000_123_456])
def test_every_status_and_event_timestamp_is_the_documents_bytes(status: Status, ts: int | None) -> None:
    value = 0.5 if status is Status.PRESENT else None
    column = ResultColumn("x", DType.FLOAT64, [value], outcome(status, ts))
    doc = json.loads(both(JoinResult([column], 7, status is Status.UNAVAILABLE, 1, PLAN)))
    assert doc["results"][0]["statuses"] == [status.name]


def test_entity_columns_and_views_shared_by_columns_are_the_documents_bytes() -> None:
    a, b = outcome(Status.PRESENT, 5_000_000), outcome(Status.OUTSIDE_MAX_AGE, None)
    columns = [
        ResultColumn("user_id", DType.INT64, [17], None),
        ResultColumn("country", DType.STRING, ["DE"], None),
        ResultColumn("a__x", DType.FLOAT64, [1.5], a),
        ResultColumn("b__y", DType.INT64, [None], b),
        ResultColumn("a__z", DType.STRING, ["z"], a),
        ResultColumn("b__w", DType.BOOL, [None], b),
    ]
    for partial in (False, True):
        doc = json.loads(both(JoinResult(columns, 2**40, partial, 1, PLAN), trace_id='q"\\'))
        assert doc["metadata"] == {
            "feature_names": ["user_id", "country", "a__x", "b__y", "a__z", "b__w"],
            "dtypes": ["int64", "string", "float64", "int64", "string", "bool"],
            "registry_version": 2**40,
            "trace_id": 'q"\\',
            "partial": partial,
        }
        statuses = [r["statuses"][0] for r in doc["results"]]
        assert statuses == ["PRESENT"] * 3 + ["OUTSIDE_MAX_AGE", "PRESENT", "OUTSIDE_MAX_AGE"]


def test_random_results_are_the_documents_bytes() -> None:
    rnd = random.Random(20261207)
    for _ in range(300):
        outcomes = [
            outcome(rnd.choice(list(Status)), rnd.choice([None, rnd.randrange(2**50)])) for _ in range(3)
        ]
        columns = []
        for i in range(rnd.randint(1, 12)):
            dtype, value = rnd.choice(VALUES)
            owner = rnd.choice([None, *outcomes])
            columns.append(ResultColumn(f"c{i}", dtype, [value], owner))
        both(JoinResult(columns, rnd.randrange(10**6), rnd.random() < 0.2, 1, PLAN), f"t{rnd.random()}")


def test_a_value_orjson_cannot_write_fails_as_the_document_does() -> None:
    column = ResultColumn("x", DType.INT64, [2**64], outcome(Status.PRESENT, None))
    result = JoinResult([column], 1, False, 1, PLAN)
    with pytest.raises(TypeError):
        json_codec.encode_document(result, "t")
    with pytest.raises(TypeError):
        json_row.encode_row(result, "t")


def test_a_nan_float_is_null_in_both() -> None:
    column = ResultColumn("x", DType.FLOAT64, [math.nan], outcome(Status.PRESENT, None))
    assert b'"values":[null]' in both(JoinResult([column], 1, False, 1, PLAN))


def test_a_one_row_join_of_no_column_is_answered_as_a_document() -> None:
    """encode_row needs a column to end on: encode_join sends a column-less row past it."""
    result = JoinResult([], 1, False, 1, PLAN)
    assert json.loads(json_codec.encode_join(result, "t"))["results"] == []
    assert json_codec.encode_join(result, "t") == json_codec.encode_document(result, "t")


def test_a_view_marked_all_present_is_written_present_as_the_document_writes_it() -> None:
    column = ResultColumn(
        "x", DType.FLOAT64, [1.0], ViewOutcome("v", [Status.NOT_FOUND], [None], all_present=True)
    )
    assert b'"statuses":["PRESENT"]' in both(JoinResult([column], 1, False, 1, PLAN))
