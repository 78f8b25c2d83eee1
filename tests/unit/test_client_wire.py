"""The client's wire layer without a server: arguments it refuses before sending, and
answers that are not the API's, raised as the client's errors (never a KeyError)."""

from __future__ import annotations

import pytest

from featurestore.client import FeatureClient, FeatureServiceError
from featurestore.client.wire import http_error, http_result


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
        (None, b'{"error":{"code":"UNAVAILABLE","message":"store down","details":[]}}', None),
    ],
)
def test_an_http_error_carries_the_wait_the_server_asked_for(
    header: str | None, body: bytes, expected: float | None
) -> None:
    error = http_error(503, body, header)
    assert error.code == "UNAVAILABLE" and error.retry_after == expected
