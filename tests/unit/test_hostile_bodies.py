"""Any request body, on the join and the push, is answered without a 5xx: a 200, or a
4xx whose body is the contract's error object naming the problem. Property-based
(hypothesis) over the in-process ASGI app: arbitrary bytes, arbitrary JSON, bodies
shaped like requests, deep nesting and invalid UTF-8 anywhere. The same bodies reach a
real server in tests/integration/test_hostile_clients.py."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from featurestore.api import bodies
from featurestore.api.http import HttpApi
from featurestore.api.json_codec import decode_join, decode_push
from featurestore.api.routes import JOIN_PATH, PUSH_PATH
from featurestore.definitions.snapshot import new_snapshot
from featurestore.errors import InvalidArgument
from featurestore.health import Readiness
from featurestore.join import JoinEngine, Limits
from featurestore.model import DType, Entity, Feature, FeatureView, make_definitions
from featurestore.plan import ServingState
from featurestore.push import PushService
from featurestore.sources.memory import MemorySource

U = Entity("user_id", DType.INT64)
M = Entity("merchant_id", DType.STRING)
VIEWS = [
    FeatureView("profile", (U,), (Feature("age", DType.INT64), Feature("country", DType.STRING))),
    FeatureView(
        "merchant",
        (M,),
        (
            Feature("risk", DType.FLOAT64),
            Feature("blocked", DType.BOOL),
            Feature("opened_at", DType.TIMESTAMP),
            Feature("embedding", DType.FLOAT32_VECTOR),
        ),
    ),
]
FEATURES = ["profile:age", "profile:country", "merchant:risk", "merchant:embedding", "merchant:opened_at"]
COLUMNS = ["user_id", "merchant_id", "age", "country", "risk", "blocked", "opened_at", "embedding"]

# Enough examples to reach the nested and mis-encoded cases every run, few enough for
# the unit suite (about 2 s each here).
EXAMPLES = 300
PROPERTY = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,  # no example files in the work tree
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


def make_api() -> HttpApi:
    defs = make_definitions("p", [U, M], VIEWS, [])
    engine = JoinEngine(
        {"default": MemorySource("default")},
        ServingState(new_snapshot(defs, 1)),
        Limits(max_rows=100, deadline_seconds=5.0),
    )
    return HttpApi(
        engine, PushService(engine), lambda: Readiness(True), max_body_bytes=64 * 1024, deadline_ms=5000
    )


class Caller:
    """Posts bodies to the in-process app on one event loop for the whole test."""

    def __init__(self) -> None:
        self.runner = asyncio.Runner()
        self.client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=make_api()), base_url="http://featurestore"
        )

    def post(self, path: str, body: bytes) -> httpx.Response:
        return self.runner.run(
            self.client.post(path, content=body, headers={"content-type": "application/json"})
        )

    def close(self) -> None:
        self.runner.run(self.client.aclose())
        self.runner.close()


@pytest.fixture(scope="module")
def caller() -> Iterator[Caller]:
    c = Caller()
    yield c
    c.close()


def assert_answered(response: httpx.Response) -> None:
    """A 200, or a 4xx carrying the contract's error object: never a 5xx."""
    assert response.status_code < 500, response.text
    assert response.headers["content-type"] == "application/json"
    doc = response.json()
    if response.status_code == 200:
        assert set(doc) in ({"metadata", "results"}, {"rows_written", "data_version"})
        return
    assert response.status_code in (400, 404, 413), response.text
    assert set(doc) == {"error"} and set(doc["error"]) == {"code", "message", "details"}
    assert doc["error"]["code"] in ("INVALID_ARGUMENT", "NOT_FOUND", "RESOURCE_EXHAUSTED")
    assert doc["error"]["message"]


# -- strategies -------------------------------------------------------------------------

scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)
column_names = st.sampled_from(COLUMNS) | st.text(max_size=10)
columns = st.dictionaries(column_names, st.lists(scalars | json_values, max_size=5), max_size=4)
join_bodies = st.fixed_dictionaries(
    {},
    optional={
        "entities": columns | json_values,
        "features": st.lists(st.sampled_from(FEATURES) | st.text(max_size=12), max_size=4) | json_values,
        "feature_service": st.text(max_size=10) | json_values,
        "full_feature_names": st.booleans() | json_values,
    },
)
push_bodies = st.fixed_dictionaries(
    {},
    optional={
        "feature_view": st.sampled_from(["profile", "merchant"]) | st.text(max_size=10) | json_values,
        "rows": columns | json_values,
    },
)
paths = st.sampled_from([JOIN_PATH, PUSH_PATH])


@st.composite
def corrupted(draw: st.DrawFn, bodies: st.SearchStrategy[Any]) -> bytes:
    """A JSON body with bytes that are not UTF-8 spliced in somewhere (often in a string)."""
    raw = json.dumps(draw(bodies)).encode()
    at = draw(st.integers(0, len(raw)))
    bad = draw(st.sampled_from([b"\xff", b"\xc3\x28", b"\xe2\x82", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80"]))
    return raw[:at] + bad + raw[at:]


def nested(depth: int, path: str) -> bytes:
    deep = b"[" * depth + b"]" * depth
    if path == JOIN_PATH:
        return b'{"entities":{"user_id":' + deep + b'},"features":["profile:age"]}'
    return b'{"feature_view":"merchant","rows":{"merchant_id":["m"],"embedding":' + deep + b"}}"


# -- properties ------------------------------------------------------------------------


@PROPERTY
@given(path=paths, body=st.binary(max_size=300))
def test_arbitrary_bytes_are_answered_without_a_5xx(caller: Caller, path: str, body: bytes) -> None:
    assert_answered(caller.post(path, body))


@PROPERTY
@given(path=paths, doc=json_values)
def test_arbitrary_json_is_answered_without_a_5xx(caller: Caller, path: str, doc: Any) -> None:
    assert_answered(caller.post(path, json.dumps(doc).encode()))


@PROPERTY
@given(doc=join_bodies)
def test_join_shaped_bodies_are_answered_without_a_5xx(caller: Caller, doc: Any) -> None:
    assert_answered(caller.post(JOIN_PATH, json.dumps(doc).encode()))


@PROPERTY
@given(doc=push_bodies)
def test_push_shaped_bodies_are_answered_without_a_5xx(caller: Caller, doc: Any) -> None:
    assert_answered(caller.post(PUSH_PATH, json.dumps(doc).encode()))


@PROPERTY
@given(path=paths, body=st.one_of(corrupted(join_bodies), corrupted(push_bodies)))
def test_invalid_utf8_anywhere_is_answered_without_a_5xx(caller: Caller, path: str, body: bytes) -> None:
    assert_answered(caller.post(path, body))


@PROPERTY
@given(path=paths, depth=st.integers(1, 20_000))
def test_nesting_of_any_depth_is_answered_without_a_5xx(caller: Caller, path: str, depth: int) -> None:
    assert_answered(caller.post(path, nested(depth, path)))


# -- the two reported cases, by name ---------------------------------------------------


@pytest.mark.parametrize("path", [JOIN_PATH, PUSH_PATH])
def test_a_10000_deep_array_is_a_400_naming_the_nesting(caller: Caller, path: str) -> None:
    response = caller.post(path, nested(10_000, path))
    assert response.status_code == 400
    assert "got `array`" in response.json()["error"]["message"]


@pytest.mark.parametrize(
    ("path", "body", "where"),
    [
        (JOIN_PATH, b'{"entities":{"user_id":[1]},"features":["profile:\xff"]}', "byte 0xff at offset 49"),
        (PUSH_PATH, b'{"feature_view":"\xc3\x28","rows":{}}', "byte 0xc3 at offset 17"),
    ],
)
def test_invalid_utf8_is_a_400_naming_the_byte(caller: Caller, path: str, body: bytes, where: str) -> None:
    response = caller.post(path, body)
    assert response.status_code == 400
    assert f"not valid UTF-8 ({where})" in response.json()["error"]["message"]


@pytest.mark.parametrize(
    "tail",
    [rb'"\ud800"}', rb'"\uDBFF"}', rb'"\ud800x"}  ', rb'"\ud800xxxxxxxx"}'],
    ids=["at-the-end", "upper-case", "two-bytes-before-the-end", "further-in"],
)
def test_an_unpaired_surrogate_escape_is_named_wherever_it_is(tail: bytes) -> None:
    body = b'{"entities":{"user_id":[1]},"feature_service":' + tail
    with pytest.raises(InvalidArgument, match=r"unexpected end of escaped utf-16 surrogate pair \(byte 53\)"):
        decode_join(body)


def test_a_truncated_body_is_still_called_truncated() -> None:
    for body in (
        rb'{"entities":{"user_id":[1]},"feature_service":"\ud83d\ude00',
        b'{"entities":{"user_id":[1',
    ):
        with pytest.raises(InvalidArgument, match="truncated"):
            decode_join(body)
    assert (
        decode_join(rb'{"entities":{"user_id":[1]},"feature_service":"\ud83d\ude00"}').feature_service
        == "\U0001f600"
    )


def test_a_wrong_value_is_located_by_column_name() -> None:
    with pytest.raises(InvalidArgument, match=r"\$\.entities\.merchant_id\[1\]"):
        decode_join(b'{"entities":{"user_id":[1,2],"merchant_id":["a",2.5]}}')
    with pytest.raises(InvalidArgument, match=r"\$\.rows\.embedding\[0\]\[1\]"):
        decode_push(b'{"feature_view":"merchant","rows":{"merchant_id":["m"],"embedding":[[1,[2]]]}}')


@pytest.mark.parametrize(
    ("value", "where"),
    [
        ("5.0", r"got `float` - at `\$\.request_data\.item_price`"),
        ('"5"', r"got `str` - at `\$\.request_data\.item_price`"),
        ("null", r"got `null` - at `\$\.request_data\.item_price`"),
        ("{}", r"got `object` - at `\$\.request_data\.item_price`"),
        ("[[5.0]]", r"got `array` - at `\$\.request_data\.item_price\[0\]`"),
        ("[1e999]", r"out of range - at `\$\.request_data\.item_price\[0\]`"),
    ],
)
def test_a_request_data_field_of_the_wrong_shape_is_named_in_the_message_and_details(
    value: str, where: str
) -> None:
    """Whether or not a requested feature needs it: the shape is decoded before the plan
    knows what the request needs (docs/api.md)."""
    body = b'{"entities":{"user_id":[1]},"request_data":{"fine":[1],"item_price":' + value.encode() + b"}}"
    with pytest.raises(InvalidArgument, match=where) as e:
        decode_join(body)
    assert e.value.details == [{"request_data": "item_price"}]


def test_a_bad_entity_column_carries_no_request_data_details() -> None:
    with pytest.raises(InvalidArgument) as e:
        decode_join(b'{"entities":{"user_id":[1.5]},"request_data":{"item_price":[1.0]}}')
    assert "$.entities.user_id[0]" in str(e.value) and e.value.details == []


@pytest.mark.parametrize(
    ("value", "length"),
    [
        (None, -1),
        (b"", -1),
        (b"12", 12),
        (b"0", 0),
        (b"000", 0),
        (b"0" * 4400 + b"93", 93),  # llhttp takes leading zeros of any length; int() stops at 4,300 digits
        (b"12 \t", 12),  # trailing whitespace: llhttp frames the body by the number before it
        (b"9" * 18, 10**18 - 1),
        (b"9" * 19, bodies.UNBOUNDED),  # over any body limit
        (b"+5", -1),
        (b"-5", -1),
        (b"1e3", -1),
    ],
)
def test_a_declared_length_is_its_number_none_or_past_any_limit(value: bytes | None, length: int) -> None:
    assert bodies.declared_length(value) == length
