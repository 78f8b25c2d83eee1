"""Kafka security settings as librdkafka receives them (lineage.kafka)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from confluent_kafka import Producer
from pydantic import SecretStr

from featurestore.config import load_config
from featurestore.errors import InvalidArgument
from lineage.kafka import KafkaSettings
from tests.security import make_certs


def test_plaintext_adds_nothing_to_the_client_config() -> None:
    assert "security.protocol" not in KafkaSettings().client_config()


def test_sasl_over_tls_reaches_librdkafka_which_accepts_it(tmp_path: Path) -> None:
    certs = make_certs(tmp_path)
    settings = KafkaSettings(
        bootstrap_servers="127.0.0.1:1",
        security_protocol="sasl_ssl",
        sasl_mechanism="SCRAM-SHA-256",
        sasl_username="lineage",
        sasl_password=SecretStr("kafka-pw"),
        ssl_ca_file=str(certs.ca),
        ssl_cert_file=str(certs.client_cert),
        ssl_key_file=str(certs.client_key),
    )
    config = settings.client_config()
    assert config["security.protocol"] == "sasl_ssl" and config["sasl.password"] == "kafka-pw"
    assert config["ssl.ca.location"] == str(certs.ca)
    assert config["ssl.endpoint.identification.algorithm"] == "https"
    Producer(config).flush(0)  # librdkafka checks every name and loads the files; raises if not


def test_kafka_security_comes_from_the_environment_and_secret_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "pw").write_text("from-a-file\n")
    monkeypatch.setenv("FEATURESTORE_LINEAGE__KAFKA__SECURITY_PROTOCOL", "sasl_plaintext")
    monkeypatch.setenv("FEATURESTORE_LINEAGE__KAFKA__SASL_USERNAME", "lineage")
    monkeypatch.setenv("FEATURESTORE_LINEAGE__KAFKA__SASL_PASSWORD_FILE", str(tmp_path / "pw"))
    kafka = load_config().lineage.kafka
    assert kafka.client_config()["sasl.password"] == "from-a-file"
    assert "from-a-file" not in repr(kafka)


def test_sasl_without_credentials_is_refused_naming_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEATURESTORE_LINEAGE__KAFKA__SECURITY_PROTOCOL", "sasl_ssl")
    with pytest.raises(
        InvalidArgument, match=r"lineage.kafka: value error, security_protocol sasl_ssl needs"
    ):
        load_config()


def test_a_secret_of_the_wrong_type_is_refused_without_its_value(tmp_path: Path) -> None:
    f = tmp_path / "config.yaml"
    f.write_text("lineage: {bolt: {password: 12345678}}\n")
    with pytest.raises(InvalidArgument, match=r"lineage.bolt.password: ") as raised:
        load_config(f)
    assert "12345678" not in str(raised.value)


@pytest.mark.parametrize("name", ["partitions", "replication_factor", "session_timeout_ms", "buffer_seconds"])
def test_a_count_that_is_not_positive_is_refused_naming_it(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """0 partitions or a 0 s buffer were taken, to fail at the broker or drop every event."""
    monkeypatch.setenv(f"FEATURESTORE_LINEAGE__KAFKA__{name.upper()}", "0")
    with pytest.raises(
        InvalidArgument, match=rf"\(lineage.kafka.{name}\): expected a positive integer, got 0"
    ):
        load_config()


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("lineage: {kafka: {partitions: true}}", "lineage.kafka.partitions: expected an integer, got True"),
        (
            "stream: {kafka: {buffer_messages: 2.0}}",
            "stream.kafka.buffer_messages: expected an integer, got 2.0",
        ),
        (
            "registry: {max_request_bytes: 2048.0}",
            "registry.max_request_bytes: expected an integer, got 2048.0",
        ),
    ],
)
def test_a_kafka_or_etcd_count_written_as_a_float_or_a_boolean_is_refused_not_converted(
    tmp_path: Path, text: str, problem: str
) -> None:
    f = tmp_path / "config.yaml"
    f.write_text(text + "\n")
    with pytest.raises(InvalidArgument, match=re.escape(problem)):
        load_config(f)


@pytest.mark.parametrize(
    ("protocol", "given", "problem"),
    [
        ("plaintext", {"ssl_ca_file": "/ca.pem"}, "ssl_ca_file is set but security_protocol plaintext has no TLS"),
        ("sasl_plaintext", {"sasl_username": "u", "sasl_password": SecretStr("pw"), "ssl_cert_file": "/c",
                            "ssl_key_file": "/k"}, "ssl_cert_file is set but security_protocol sasl_plaintext has no TLS"),
        ("plaintext", {"sasl_username": "u", "sasl_password": SecretStr("pw")},
         "sasl_username is set but security_protocol plaintext has no SASL"),
        ("ssl", {"sasl_password": SecretStr("pw")}, "sasl_password is set but security_protocol ssl has no SASL"),
    ],
)  # fmt: skip
def test_a_tls_or_sasl_setting_the_protocol_would_ignore_is_refused(
    protocol: str, given: dict[str, object], problem: str
) -> None:
    with pytest.raises(ValueError, match=problem) as raised:
        KafkaSettings(security_protocol=protocol, **given)  # type: ignore[arg-type]
    assert "pw" not in str(raised.value).replace("password", "")
