"""The CLI's one-line failures carry the API's status name: ``error: CODE: message``."""

from __future__ import annotations

import socket

import pytest

from featurestore.cli import operator_error
from featurestore.client.errors import UnavailableError
from featurestore.errors import InvalidArgument, NotFound


@pytest.mark.parametrize(
    ("error", "line"),
    [
        (InvalidArgument("config x.yaml: http.port: expected a port"), "INVALID_ARGUMENT: config x.yaml"),
        (NotFound("unknown feature view 'nope'"), "NOT_FOUND: unknown feature view 'nope'"),
        (FileNotFoundError(2, "No such file or directory", "defs.yaml"), "NOT_FOUND: No such file"),
        (PermissionError(13, "Permission denied", "/etc/x"), "PERMISSION_DENIED: Permission denied"),
        (ConnectionRefusedError(111, "Connection refused"), "UNAVAILABLE: "),
        (socket.gaierror(-2, "Name or service not known"), "UNAVAILABLE: "),
        (UnavailableError("cannot reach http://x"), "UNAVAILABLE: cannot reach http://x"),
    ],
)
def test_an_operator_error_is_one_line_starting_with_its_code(error: Exception, line: str) -> None:
    message = operator_error(error)
    assert message is not None and message.startswith(line)


def test_a_bug_is_not_an_operator_error() -> None:
    assert operator_error(KeyError("x")) is None


def test_a_kafka_error_is_unavailable_with_its_code_and_message() -> None:
    """confluent-kafka's errors are its C module's (`cimpl`), so they were taken for bugs:
    a traceback, exit 1 (review s57, cli finding 3)."""
    import confluent_kafka
    from confluent_kafka.error import ProduceError

    error = confluent_kafka.KafkaError(confluent_kafka.KafkaError._TRANSPORT, "Failed to get metadata")
    assert operator_error(confluent_kafka.KafkaException(error)) == (
        "UNAVAILABLE: confluent_kafka: KafkaException: _TRANSPORT: Failed to get metadata"
    )
    assert operator_error(ProduceError(error)) == (
        "UNAVAILABLE: confluent_kafka: ProduceError: _TRANSPORT: Failed to get metadata"
    )


def test_an_httpx_timeout_without_text_names_its_request() -> None:
    """`check consistency --url` against a server that never answers printed
    `UNAVAILABLE: httpx: ReadTimeout:` and nothing else (review s57, cli finding 10)."""
    import httpx

    request = httpx.Request("GET", "http://10.0.0.7:8080/v1/registry")
    assert operator_error(httpx.ReadTimeout("", request=request)) == (
        "UNAVAILABLE: httpx: ReadTimeout: GET http://10.0.0.7:8080/v1/registry"
    )
    assert operator_error(httpx.ConnectError("All connection attempts failed", request=request)) == (
        "UNAVAILABLE: httpx: ConnectError: All connection attempts failed"
    )


def test_a_kafka_error_of_the_client_s_own_settings_or_credentials_has_their_status() -> None:
    """A CA file that is not PEM was 'UNAVAILABLE' (review s57 round 2): the status follows
    Kafka's error code."""
    import confluent_kafka

    def line(code: int, text: str) -> str | None:
        return operator_error(confluent_kafka.KafkaException(confluent_kafka.KafkaError(code, text)))

    k = confluent_kafka.KafkaError
    assert line(k._INVALID_ARG, "ssl.ca.location failed") == (
        "INVALID_ARGUMENT: confluent_kafka: KafkaException: _INVALID_ARG: ssl.ca.location failed"
    )
    assert (line(k.SASL_AUTHENTICATION_FAILED, "bad password") or "").startswith("UNAUTHENTICATED: ")
    assert (line(k.TOPIC_AUTHORIZATION_FAILED, "denied") or "").startswith("PERMISSION_DENIED: ")
    assert (line(k._TRANSPORT, "Failed to get metadata") or "").startswith("UNAVAILABLE: ")


def test_a_lineage_graph_that_is_down_is_unavailable_not_a_traceback() -> None:
    """stream run / materialize with a Bolt graph down crashed with GraphUnavailable's
    traceback, exit 1 (review s57 round 2)."""
    from lineage.graph.base import GraphUnavailable

    assert operator_error(GraphUnavailable("bolt://graph:7687: connection refused")) == (
        "UNAVAILABLE: lineage graph: bolt://graph:7687: connection refused"
    )
