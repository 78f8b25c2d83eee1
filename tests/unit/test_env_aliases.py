"""The short environment names FEATURESTORE_HTTP_PORT / FEATURESTORE_GRPC_PORT are the
variables Kubernetes sets for a Service named featurestore-http / featurestore-grpc
(``tcp://IP:PORT``, review s58 finding 7): such a value is skipped with one warning, not
a start that fails in every pod."""

from __future__ import annotations

import logging

import pytest

from featurestore import env_aliases
from featurestore.config import load_config
from featurestore.errors import InvalidArgument

# What a pod gets for a ClusterIP Service named featurestore-grpc (port 50051) and one
# named featurestore-http (port 8080).
SERVICE_LINKS = {
    "FEATURESTORE_GRPC_SERVICE_HOST": "10.96.0.11",
    "FEATURESTORE_GRPC_SERVICE_PORT": "50051",
    "FEATURESTORE_GRPC_PORT": "tcp://10.96.0.11:50051",
    "FEATURESTORE_GRPC_PORT_50051_TCP": "tcp://10.96.0.11:50051",
    "FEATURESTORE_GRPC_PORT_50051_TCP_PROTO": "tcp",
    "FEATURESTORE_GRPC_PORT_50051_TCP_PORT": "50051",
    "FEATURESTORE_GRPC_PORT_50051_TCP_ADDR": "10.96.0.11",
    "FEATURESTORE_HTTP_SERVICE_HOST": "10.96.0.12",
    "FEATURESTORE_HTTP_PORT": "tcp://10.96.0.12:9000",
    "FEATURESTORE_HTTP_PORT_9000_TCP": "tcp://10.96.0.12:9000",
}


@pytest.fixture(autouse=True)
def fresh_warnings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(env_aliases, "_warned", set())


def test_the_service_links_of_services_named_featurestore_grpc_and_http_leave_the_ports_at_their_defaults(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    for name, value in SERVICE_LINKS.items():
        monkeypatch.setenv(name, value)
    with caplog.at_level(logging.WARNING, logger="featurestore.env_aliases"):
        c = load_config()
        load_config()  # a second load (each command, each worker reads once): no second warning
    assert (c.http.port, c.grpc.port) == (8080, 50051)
    warnings = [r.getMessage() for r in caplog.records if r.name == "featurestore.env_aliases"]
    assert len(warnings) == 2
    assert any(
        w.startswith("FEATURESTORE_GRPC_PORT=tcp://10.96.0.11:50051 is a Kubernetes service link")
        and "featurestore-grpc" in w
        and "FEATURESTORE_GRPC__PORT" in w
        for w in warnings
    )


def test_a_nested_port_name_still_sets_the_port_beside_a_service_link(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FEATURESTORE_GRPC_PORT", "tcp://10.96.0.11:50051")
    monkeypatch.setenv("FEATURESTORE_GRPC__PORT", "50052")
    assert load_config().grpc.port == 50052


def test_a_short_port_name_holding_a_number_still_sets_the_port(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEATURESTORE_GRPC_PORT", "7000")
    assert load_config().grpc.port == 7000


@pytest.mark.parametrize("value", ["tcp://", "http://10.0.0.1:80", "50051x"])
def test_a_short_port_name_holding_anything_else_is_still_refused_naming_it(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("FEATURESTORE_GRPC_PORT", value)
    with pytest.raises(InvalidArgument, match=r"FEATURESTORE_GRPC_PORT \(grpc\.port\)"):
        load_config()
