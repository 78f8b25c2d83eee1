"""The JSON join response as json_codec.encode_join writes it (orjson): every value type
of the data model, non-finite floats as null, and a view's statuses and timestamps
spliced into each of its columns from 8 rows on exactly as written inline below that."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from featurestore.api import json_codec
from featurestore.api.timestamps import iso_list
from featurestore.join import JoinResult, ResultColumn, ViewOutcome
from featurestore.model import DType, Status
from featurestore.plan import JoinPlan

PLAN = JoinPlan((), (), frozenset(), (), None)
EDGE_VALUES = [  # (dtype, a value, what the JSON holds)
    (DType.FLOAT64, math.nan, None),
    (DType.FLOAT64, math.inf, None),
    (DType.FLOAT64, -math.inf, None),
    (DType.FLOAT64, -0.0, -0.0),
    (DType.FLOAT64, 5e-324, 5e-324),
    (DType.FLOAT64, 1.7976931348623157e308, 1.7976931348623157e308),
    (DType.FLOAT64, 0.1 + 0.2, 0.30000000000000004),
    (DType.FLOAT64, None, None),
    (DType.INT64, None, None),
    (DType.STRING, None, None),
    (DType.BOOL, None, None),
    (DType.FLOAT32_VECTOR, None, None),
    (DType.INT64, 2**63 - 1, 2**63 - 1),
    (DType.INT64, -(2**63), -(2**63)),
    (DType.BOOL, True, True),
    (DType.STRING, 'é "quoted" \\ \n 🙂', 'é "quoted" \\ \n 🙂'),
    (DType.FLOAT32_VECTOR, [0.5, -1.25], [0.5, -1.25]),
    (DType.TIMESTAMP, 1_700_000_000_000_001, "2023-11-14T22:13:20.000001Z"),
]


def result(rows: int) -> JoinResult:
    """Two views: one with every status in turn, one all PRESENT; two columns each."""
    statuses = [list(Status)[i % len(Status)] for i in range(rows)]
    mixed = ViewOutcome("mixed", statuses, [1_000_000 * i for i in range(rows)], all_present=False)
    present = ViewOutcome("present", [Status.PRESENT] * rows, [None] * rows, all_present=True)
    columns = [
        ResultColumn("user_id", DType.INT64, list(range(rows)), None),
        ResultColumn("a", DType.FLOAT64, [i / 3 for i in range(rows)], mixed),
        ResultColumn("b", DType.STRING, [str(i) for i in range(rows)], mixed),
        ResultColumn("c", DType.FLOAT64, [math.nan] * rows, present),
        ResultColumn("d", DType.INT64, [-i for i in range(rows)], present),
    ]
    return JoinResult(columns, registry_version=3, partial=False, rows=rows, plan=PLAN)


@pytest.mark.parametrize(("dtype", "value", "expected"), EDGE_VALUES, ids=lambda v: repr(v)[:24])
def test_every_value_type_is_written_as_the_contract_says(
    dtype: DType, value: object, expected: object
) -> None:
    outcome = ViewOutcome("v", [Status.PRESENT], [None], all_present=True)
    column = ResultColumn("v__x", dtype, [value], outcome)
    raw = json_codec.encode_join(JoinResult([column], 1, False, 1, PLAN), "t")
    assert b"NaN" not in raw and b"Infinity" not in raw  # strict JSON: no parser needs allow_nan
    doc = json.loads(raw)
    assert doc["results"][0]["values"] == [expected]
    if isinstance(expected, float) and expected == 0.0:
        assert math.copysign(1.0, doc["results"][0]["values"][0]) == math.copysign(1.0, expected)


def test_a_float_is_written_in_its_shortest_form_with_a_signed_positive_exponent() -> None:
    outcome = ViewOutcome("v", [Status.PRESENT] * 4, [None] * 4, all_present=True)
    column = ResultColumn("v__x", DType.FLOAT64, [1e16, 0.1, 1.5e-7, 123456789.125], outcome)
    raw = json_codec.encode_join(JoinResult([column], 1, False, 4, PLAN), "t")
    assert b'"values":[1e+16,0.1,1.5e-7,123456789.125]' in raw  # docs/api.md, value types


@pytest.mark.parametrize("rows", [1, 7, 8, 100])
def test_a_response_is_the_same_bytes_with_statuses_spliced_or_inline(
    rows: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(json_codec, "_SHARED_RENDER_ROWS", 1)
    spliced = json_codec.encode_document(result(rows), "trace")  # (one row serves json_row's)
    monkeypatch.setattr(json_codec, "_SHARED_RENDER_ROWS", 10**9)
    assert json_codec.encode_document(result(rows), "trace") == spliced


@pytest.mark.parametrize("rows", [1, 7, 8, 100])
def test_each_views_statuses_and_timestamps_reach_each_of_its_columns(rows: int) -> None:
    doc = json.loads(json_codec.encode_join(result(rows), "trace"))
    names = [list(Status)[i % len(Status)].name for i in range(rows)]
    stamps = [iso_list([1_000_000 * i])[0] for i in range(rows)]
    assert doc["metadata"] == {
        "feature_names": ["user_id", "a", "b", "c", "d"],
        "dtypes": ["int64", "float64", "string", "float64", "int64"],
        "registry_version": 3,
        "trace_id": "trace",
        "partial": False,
    }
    entity, a, b, c, d = doc["results"]
    assert entity == {
        "values": list(range(rows)),
        "statuses": ["PRESENT"] * rows,
        "event_timestamps": [None] * rows,
    }
    assert a["values"] == [i / 3 for i in range(rows)]
    assert a["statuses"] == b["statuses"] == names
    assert a["event_timestamps"] == b["event_timestamps"] == stamps
    assert c["values"] == [None] * rows
    assert c["statuses"] == d["statuses"] == ["PRESENT"] * rows
    assert c["event_timestamps"] == d["event_timestamps"] == [None] * rows


@pytest.mark.parametrize("rows", [8, 9, 100])
def test_a_derived_features_array_is_written_as_the_same_list_would_be_nan_as_null(rows: int) -> None:
    """From derived.evaluate.ARRAY_ROWS rows on a derived float64 feature is a float64
    ndarray, NaN for null: the response is the bytes the list with None would give."""
    rng = np.random.default_rng(rows)
    doubles = rng.integers(0, 2**64, rows, dtype=np.uint64).view(np.float64)
    doubles[~np.isfinite(doubles)] = math.nan
    doubles[:4] = [-0.0, 5e-324, math.nan, 1e16]
    outcome = ViewOutcome("v", [Status.PRESENT] * rows, [1_000_000] * rows, all_present=True)
    as_list = [None if v != v else v for v in doubles.tolist()]

    def encoded(values: object) -> bytes:
        column = ResultColumn("v__x", DType.FLOAT64, values, outcome)  # type: ignore[arg-type]
        return json_codec.encode_join(JoinResult([column], 1, False, rows, PLAN), "t")

    raw = encoded(doubles)
    assert raw == encoded(as_list)
    assert b"NaN" not in raw and json.loads(raw)["results"][0]["values"][2] is None
