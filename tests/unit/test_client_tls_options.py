"""The client's TLS settings and token: refused where they would be ignored (a
plaintext address would carry the token in clear), and never shown."""

from __future__ import annotations

import pytest

from featurestore.client import AsyncFeatureClient, FeatureClient


@pytest.mark.parametrize("address", ["http://127.0.0.1:1", "grpc://127.0.0.1:1"])
@pytest.mark.parametrize(
    "tls", [{"ca_file": "ca.pem"}, {"cert_file": "client.pem", "key_file": "client.key"}]
)
def test_tls_files_with_a_plaintext_address_are_refused_rather_than_ignored(
    address: str, tls: dict[str, str]
) -> None:
    with pytest.raises(ValueError, match=r"need a TLS address: https:// or grpcs://"):
        FeatureClient(address, token="t0ken-0123456789abcdef", **tls)
    with pytest.raises(ValueError, match=r"need a TLS address"):
        AsyncFeatureClient(address, **tls)


def test_the_cli_join_refuses_a_ca_with_a_plaintext_url(capsys: pytest.CaptureFixture[str]) -> None:
    from featurestore.cli import main

    code = main(["join", "--url", "http://127.0.0.1:1", "--ca", "ca.pem", "--entity", "user_id=1",
                 "--features", "v:f"])  # fmt: skip
    assert code == 2
    assert "INVALID_ARGUMENT: ca_file, cert_file and key_file need a TLS address" in capsys.readouterr().err


@pytest.mark.parametrize("address", ["https://127.0.0.1:1", "grpcs://127.0.0.1:1"])
def test_the_token_is_not_in_the_client_options_repr(address: str) -> None:
    with FeatureClient(address, token="t0ken-0123456789abcdef") as client:
        assert "t0ken" not in repr(client.options) and "t0ken" not in str(client.options)
        assert client.options.token == "t0ken-0123456789abcdef"
