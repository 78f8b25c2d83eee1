"""The demo banner's addresses and placeholders for each listener setting (review s58
finding 9); tests/integration/test_demo_banner.py runs what it prints."""

from __future__ import annotations

from typing import Any

import pytest

from featurestore.cli.serve import demo_help
from featurestore.config import load_config

DEMO_STORES = {"default": {"kind": "memory"}, "analytics": {"kind": "clickhouse", "dsn": "chdb:///tmp/ch"}}


def banner(**settings: Any) -> str:
    overrides = {tuple(name.split("__")): value for name, value in settings.items()}
    return demo_help(load_config(None, {("stores",): DEMO_STORES, **overrides}))


@pytest.mark.parametrize(
    ("host", "http", "grpc"),
    [
        ("0.0.0.0", "http://127.0.0.1:8080", "127.0.0.1:50051"),
        ("", "http://127.0.0.1:8080", "127.0.0.1:50051"),
        ("::", "http://[::1]:8080", "[::1]:50051"),
        ("fd00::5", "http://[fd00::5]:8080", "[fd00::5]:50051"),
        ("featurestore.internal", "http://featurestore.internal:8080", "featurestore.internal:50051"),
    ],
)
def test_a_wildcard_host_is_printed_as_loopback_and_an_ipv6_address_in_brackets(
    host: str, http: str, grpc: str
) -> None:
    text = banner(http__host=host, grpc__host=host)
    assert f"POST {http}/v1/feature/join" in text and f"--url {http} " in text
    assert f"--grpc {grpc} " in text and f"metrics: {http}/metrics" in text
    assert "0.0.0.0" not in text


def test_the_default_demo_says_its_stores_and_needs_no_placeholder() -> None:
    text = banner()
    assert "# stores: memory + embedded ClickHouse\n" in text
    assert "CA.pem" not in text and "TOKEN_FILE" not in text


def test_mutual_tls_and_tokens_add_the_client_files_to_both_commands_and_explain_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FEATURESTORE_TLS__CERT_FILE", "/etc/fs/tls.crt")
    monkeypatch.setenv("FEATURESTORE_TLS__KEY_FILE", "/etc/fs/tls.key")
    monkeypatch.setenv("FEATURESTORE_TLS__CLIENT_CA_FILE", "/etc/fs/clients.crt")
    monkeypatch.setenv("FEATURESTORE_AUTH__TOKENS_FILE", "/etc/fs/tokens")
    text = banner(http__admin_port=8081)
    files = "--cert CLIENT.pem --key CLIENT-KEY.pem"
    assert f'curl -s --cacert CA.pem {files} -H "authorization: Bearer $(cat TOKEN_FILE)"' in text
    assert text.count(f"featurestore join --ca CA.pem {files} --token-file TOKEN_FILE ") == 2
    assert "POST https://127.0.0.1:8080/" in text and "metrics: http://127.0.0.1:8081/metrics" in text
    assert "CA.pem: the CA that signed tls.cert_file (/etc/fs/tls.crt)" in text
    assert "tls.client_ca_file (/etc/fs/clients.crt)" in text and "TOKEN_FILE: a file holding a token" in text
