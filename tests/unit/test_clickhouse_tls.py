"""A ClickHouse store's DSN scheme decides whether its password travels encrypted:
clickhouse-connect itself ignores the scheme and turns TLS on only for ports 443 and
8443, so the store names the interface. Checked on the bytes a real client sends to a
listening socket (no ClickHouse server installs here)."""

from __future__ import annotations

import socket
import ssl
import threading
from pathlib import Path
from typing import Any

import clickhouse_connect
import pytest
import trustme

from featurestore.errors import InvalidArgument
from featurestore.offline import ClickHouseOfflineSource
from featurestore.sources.clickhouse.options import ClickHouseOptions

PASSWORD = "S3cr3t-CH-password"


class Listener:
    """One accepted connection's first bytes (``tls``: after a TLS handshake with
    ``context``, or the handshake's error)."""

    def __init__(self, context: ssl.SSLContext | None = None) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(1)
        self.port = self.sock.getsockname()[1]
        self.context = context
        self.received = b""
        self.error: Exception | None = None
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        conn, _ = self.sock.accept()
        conn.settimeout(10)
        try:
            if self.context is not None:
                conn = self.context.wrap_socket(conn, server_side=True)
            self.received = conn.recv(65536)
        except (OSError, ssl.SSLError) as e:
            self.error = e
        finally:
            conn.close()
            self.sock.close()

    def connect(self, options: ClickHouseOptions) -> None:
        """A client as the store makes one; it fails (nothing answers like ClickHouse)."""
        with pytest.raises(Exception):  # noqa: B017 - only what reached the socket matters
            clickhouse_connect.get_client(
                **options.client_args(), connect_timeout=5, send_receive_timeout=5, query_retries=0
            )
        self.thread.join(10)


def options(dsn: str, **more: Any) -> ClickHouseOptions:
    return ClickHouseOptions.from_mapping({"dsn": dsn, "username": "fs", "password": PASSWORD, **more})


def test_an_https_dsn_on_a_port_other_than_8443_opens_with_a_tls_handshake_not_the_password() -> None:
    listener = Listener()
    listener.connect(options(f"https://127.0.0.1:{listener.port}"))
    assert listener.received[:1] == b"\x16"  # a TLS record: the handshake
    assert b"POST" not in listener.received and b"GET" not in listener.received


def test_an_http_dsn_on_port_8443_stays_plain_http() -> None:
    args = options("http://ch:8443").client_args()
    assert args["interface"] == "http" and args["secure"] is False
    assert options("https://ch.internal").client_args()["interface"] == "https"


def test_an_http_dsn_speaks_plain_http_as_configured() -> None:
    listener = Listener()
    listener.connect(options(f"http://127.0.0.1:{listener.port}"))
    assert listener.received.split(b" ", 1)[0] in (b"GET", b"POST")


def test_the_ca_file_is_the_ca_the_client_trusts(tmp_path: Path) -> None:
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server)

    trusted = Listener(server)
    trusted.connect(options(f"https://127.0.0.1:{trusted.port}", ca_file=str(tmp_path / "ca.pem")))
    assert trusted.error is None and trusted.received.split(b" ", 1)[0] in (b"GET", b"POST")

    untrusted = Listener(server)  # the system's CAs do not include this one
    untrusted.connect(options(f"https://127.0.0.1:{untrusted.port}"))
    assert isinstance(untrusted.error, ssl.SSLError) and untrusted.received == b""


@pytest.mark.parametrize(
    ("given", "problem"),
    [
        ({"dsn": "clickhouse://ch:9000"}, "dsn: unsupported scheme 'clickhouse'"),
        ({"dsn": "http://ch:8123", "ca_file": "/ca.pem"}, "ca_file: set, but the dsn is not https://"),
        ({"dsn": "chdb:///tmp/x", "ca_file": "/ca.pem"}, "ca_file: set, but the dsn is not https://"),
    ],
)
def test_a_scheme_that_cannot_be_honoured_fails_the_configuration(
    given: dict[str, str], problem: str
) -> None:
    with pytest.raises(ValueError, match=problem):
        ClickHouseOptions.from_mapping(given)


def test_a_clickhouse_dsn_flag_with_an_unknown_scheme_is_refused_naming_the_scheme_only() -> None:
    with pytest.raises(InvalidArgument, match="unsupported scheme 'tcp'") as raised:
        ClickHouseOfflineSource("tcp://fs:S3cr3t@ch:9000", "wh.scores")
    assert "S3cr3t" not in str(raised.value)
