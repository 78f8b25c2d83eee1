"""The client's wire layer without a server: arguments it refuses before sending, and
answers that are not the API's, raised as the client's errors (never a KeyError)."""

from __future__ import annotations

import random

import pytest

from featurestore.api.timestamps import iso_list
from featurestore.client import FeatureClient, FeatureServiceError
from featurestore.client.wire import grpc_result, http_error, http_result, iso_utc
from featurestore.v1 import featurestore_pb2 as pb


@pytest.mark.parametrize("address", ["http://127.0.0.1:1", "grpc://127.0.0.1:1"])
def test_features_given_as_one_string_is_refused_not_split_into_characters(address: str) -> None:
    with FeatureClient(address) as client, pytest.raises(TypeError, match="list of 'view:feature' names"):
        client.join({"user_id": [1]}, "user_profile:age")  # a str is a Sequence[str] to mypy too


@pytest.mark.parametrize(
    "body",
    [b"<html>proxy says hi</html>", b'{"unexpected": 1}', b'{"metadata": {"feature_names": ["a"]}}', b"[]"],
)
def test_a_200_without_a_join_result_is_a_feature_service_error(body: bytes) -> None:
    with pytest.raises(FeatureServiceError) as raised:
        http_result(body)
    assert raised.value.code == "UNKNOWN" and raised.value.http_status == 200
    assert "without a join result" in raised.value.message


def test_an_unknown_value_status_is_a_feature_service_error() -> None:
    body = (
        b'{"metadata":{"feature_names":["a"],"registry_version":1,"trace_id":"t","partial":false},'
        b'"results":[{"values":[1],"statuses":["FROM_THE_FUTURE"],"event_timestamps":[null]}]}'
    )
    with pytest.raises(FeatureServiceError, match="FROM_THE_FUTURE"):
        http_result(body)


def test_the_client_renders_every_int64_instant_as_the_server_does() -> None:
    """The client does not import the server's renderer (numpy); its own must agree with
    it everywhere: years 1-9999, below 1000 zero-padded, 0 and before, past 9999."""
    rng = random.Random(20)
    edges = [-(2**63), -(2**63) + 1, 2**63 - 1, 0, -1, 1, -62_135_596_800_000_001, -62_167_219_200_000_000]
    edges += [-30_610_224_000_000_001, 253_402_300_799_999_999, 253_402_300_800_000_000]
    values = edges + [rng.randint(-(2**63), 2**63 - 1) for _ in range(5000)]
    values += [rng.randint(-(10**17), 10**17) for _ in range(5000)]  # years -1200 to 5100
    assert [iso_utc(v) for v in values] == iso_list(values)


def test_a_grpc_answer_the_client_cannot_read_is_a_feature_service_error() -> None:
    resp = pb.JoinResponse()
    resp.metadata.feature_names.append("a")
    col = resp.results.add()
    col.int64_values.values.append(1)
    col.statuses.append(99)  # type: ignore[arg-type]  # a status from a newer server
    col.event_timestamps.append(0)
    with pytest.raises(FeatureServiceError) as raised:
        grpc_result(resp)
    assert raised.value.code == "UNKNOWN" and "without a join result" in raised.value.message


def test_an_event_timestamp_that_is_not_one_is_a_feature_service_error() -> None:
    body = (
        b'{"metadata":{"feature_names":["a"],"registry_version":1,"trace_id":"t","partial":false},'
        b'"results":[{"values":[1],"statuses":["PRESENT"],"event_timestamps":["yesterday"]}]}'
    )
    with pytest.raises(FeatureServiceError, match="yesterday"):
        http_result(body)


SHED_BODY = (
    b'{"error":{"code":"UNAVAILABLE","message":"the server is overloaded and shed this request",'
    b'"details":[{"reason":"latency","retry_after_seconds":1}]}}'
)


@pytest.mark.parametrize(
    ("header", "body", "expected"),
    [
        ("1", SHED_BODY, 1.0),  # the server's shed answer
        (None, SHED_BODY, 1.0),  # the header lost on the way: the body says it too
        ("7", b"<html>busy</html>", 7.0),  # a proxy's 503 with Retry-After
        ("Wed, 21 Oct 2015 07:28:00 GMT", b"", 0.0),  # an HTTP date already past
        ("soon", b"", None),  # neither a number nor a date: no wait asked for
        ("\xb2", b"", None),  # "²" (a Latin-1 byte): str.isdigit says yes, float says no
        ("\u0661\u0662", b"", None),  # Arabic-Indic "12": no HTTP delta-seconds either
        (None, b'{"error":{"code":"UNAVAILABLE","message":"store down","details":[]}}', None),
    ],
)
def test_an_http_error_carries_the_wait_the_server_asked_for(
    header: str | None, body: bytes, expected: float | None
) -> None:
    error = http_error(503, body, header)
    assert error.code == "UNAVAILABLE" and error.retry_after == expected


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (500, "INTERNAL"),
        (502, "UNAVAILABLE"),
        (503, "UNAVAILABLE"),
        (504, "DEADLINE_EXCEEDED"),
        (507, "UNAVAILABLE"),
    ],
)
def test_an_http_error_without_the_apis_body_is_mapped_by_its_status_as_docs_client_md_says(
    status: int, code: str
) -> None:
    # a proxy's page: a bare 500 is INTERNAL (not retried), as the API's own 500 is
    error = http_error(status, b"<html>upstream failed</html>", None)
    assert error.code == code and error.http_status == status
    assert error.message == f"HTTP {status}: <html>upstream failed</html>"


@pytest.mark.parametrize(
    "body", [b'{"status": 503, "error": "Service Unavailable"}', b'{"error": null}', b'{"error": [1]}']
)
def test_a_proxy_s_json_whose_error_is_not_the_apis_object_is_mapped_by_its_status(body: bytes) -> None:
    error = http_error(503, body, None)
    assert isinstance(error, FeatureServiceError) and error.code == "UNAVAILABLE"  # (retried)


@pytest.mark.parametrize("token", ["secret-token\n", "abc\r\nx-injected: 1", "tök-0123456789", "two words"])
def test_a_token_no_header_can_carry_is_refused_at_once_without_showing_it(token: str) -> None:
    with pytest.raises(ValueError, match="token: not a bearer token") as refused:
        FeatureClient("http://127.0.0.1:1", token=token)
    assert token.strip() not in str(refused.value)


def test_a_bad_entity_key_is_the_same_invalid_argument_over_grpc_as_over_http() -> None:
    from featurestore.client.errors import InvalidArgumentError
    from featurestore.client.request import grpc_request

    for keys in ([1, "a"], [True], [1.5], [None]):
        with pytest.raises(InvalidArgumentError, match="keys must be all integers or all strings"):
            grpc_request({"user_id": keys}, ["v:f"], None, None, False)


def test_numpy_scalars_are_sent_as_the_python_values_they_hold() -> None:
    import json

    import numpy as np

    from featurestore.client.request import grpc_request, http_body

    keys, prices = [np.int64(1), np.int64(2)], [np.int64(5), np.float64(7.5)]
    doc = json.loads(http_body({"user_id": keys}, ["v:f"], None, {"p": prices}, False))
    assert doc["entities"] == {"user_id": [1, 2]} and doc["request_data"] == {"p": [5, 7.5]}
    req = grpc_request({"user_id": keys}, ["v:f"], None, {"p": prices}, False)
    assert list(req.entities[0].int64_values.values) == [1, 2]


def test_numpy_values_that_are_no_scalar_number_are_refused_as_before() -> None:
    import numpy as np

    from featurestore.client.errors import InvalidArgumentError
    from featurestore.client.request import check_request_data, grpc_request

    for values in (
        [np.array([1.0, 2.0]), np.array([3.0, 4.0])],
        [np.datetime64("2024-01-01T00:00:00", "ns")],
    ):
        with pytest.raises(InvalidArgumentError, match="request_data"):
            check_request_data({"p": values})
    with pytest.raises(InvalidArgumentError, match=r"row 1 is str \('a'\)"):
        grpc_request({"user_id": [10**5000, "a"]}, ["v:f"], None, None, False)


def test_an_object_array_s_numpy_scalars_are_sent_and_a_bad_key_row_is_the_one_named() -> None:
    import json

    import numpy as np

    from featurestore.client.errors import InvalidArgumentError
    from featurestore.client.request import check_request_data, grpc_request, http_body

    objects = np.array([np.int64(1), None], dtype=object)
    check_request_data({"p": objects})  # type: ignore[dict-item]  # (as the same list is)
    keys = np.array([np.int64(1), np.int64(2)], dtype=object)
    body = http_body({"k": keys}, ["v:f"], None, None, False)  # type: ignore[dict-item]
    assert json.loads(body)["entities"] == {"k": [1, 2]}
    with pytest.raises(InvalidArgumentError, match=r"row 2 is int \(3\)"):  # (numpy strings are strings)
        grpc_request({"k": [*np.array(["a", "b"]), 3]}, ["v:f"], None, None, False)


@pytest.mark.parametrize(
    ("keys", "named"),
    [
        (
            [1, float("nan")],
            "entity 'user_id': keys must be all integers or all strings; row 1 is float (nan)",
        ),
        ([1, 10**5000], "entity 'user_id': row 1 key an integer of 16610 bits is outside the int64 range"),
        (["a", b"b"], "entity 'user_id': keys must be all integers or all strings; row 1 is bytes (b'b')"),
        (["a", "\udcff"], "entity 'user_id': row 1 key '\\udcff' is not UTF-8 text"),
    ],
)
def test_keys_json_cannot_write_are_invalid_argument_naming_the_row_as_over_grpc(
    keys: list[object], named: str
) -> None:
    """json.dumps raised its own ValueError or TypeError out of join before."""
    from featurestore.client.errors import InvalidArgumentError
    from featurestore.client.request import grpc_request, http_body

    for encode in (http_body, grpc_request):
        with pytest.raises(InvalidArgumentError) as refused:
            encode({"user_id": keys}, ["v:f"], None, None, False)
        assert refused.value.message.startswith(named), (encode.__name__, refused.value.message)


def test_pandas_missing_values_are_nulls_and_its_strings_are_no_column() -> None:
    import pandas as pd  # type: ignore[import-untyped]

    from featurestore.client.errors import InvalidArgumentError
    from featurestore.client.request import as_list

    assert as_list(pd.Series([1, None], dtype="Int64")) == [1, None]
    assert as_list(pd.Series(["a", None], dtype="string")) == ["a", None]
    assert as_list([pd.NaT, pd.NA, 1.5]) == [None, None, 1.5]
    for column in ("ab", b"ab", 5):
        with pytest.raises(InvalidArgumentError, match="entity 'k': a column is a list of values") as e:
            as_list(column, "entity 'k'")
        assert isinstance(e.value, TypeError)
