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
