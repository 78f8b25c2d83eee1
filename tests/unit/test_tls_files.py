"""featurestore/tls_files.py: what the start checks of TLS files say, and the serving
certificate's dates (featurestore/process.py's _check_tls)."""

from __future__ import annotations

import datetime
import re
from pathlib import Path

import pytest
import trustme
from prometheus_client import REGISTRY

from featurestore import tls_files
from featurestore.errors import FailedPrecondition
from featurestore.listener_config import TlsConfig
from featurestore.process import _check_tls
from featurestore.registry.etcd_client import EtcdAccess
from lineage.kafka import KafkaSettings
from tests.security import make_certs

METRIC = "featurestore_tls_certificate_expiry_timestamp_seconds"


def test_the_etcd_registry_tls_files_are_named_with_their_path_at_start(tmp_path: Path) -> None:
    """grpc read them at the first connect: `NOT_FOUND: No such file or directory: <path>`
    without the setting, and an encrypted key failed the handshake."""
    with pytest.raises(
        FailedPrecondition, match=re.escape("registry.ca_file /nonexistent/ca.pem: no such file")
    ):
        EtcdAccess(ca_file="/nonexistent/ca.pem").check()
    certs = make_certs(tmp_path)
    with pytest.raises(
        FailedPrecondition, match=re.escape(f"registry.key_file {certs.key}: the key is not the key of")
    ):
        EtcdAccess(cert_file=str(certs.client_cert), key_file=str(certs.key)).check()
    EtcdAccess(
        ca_file=str(certs.ca), cert_file=str(certs.client_cert), key_file=str(certs.client_key)
    ).check()


def _leaf(tmp_path: Path, not_before: datetime.datetime, not_after: datetime.datetime) -> TlsConfig:
    cert = trustme.CA().issue_cert("127.0.0.1", not_before=not_before, not_after=not_after)
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "cert.pem"))
    cert.private_key_pem.write_to_path(str(tmp_path / "key.pem"))
    return TlsConfig(cert_file=str(tmp_path / "cert.pem"), key_file=str(tmp_path / "key.pem"))


def test_the_serving_certificate_end_is_exported_per_listener_and_read_from_its_der(tmp_path: Path) -> None:
    """Nothing showed a certificate's end: no metric, no alert, no log."""
    end = datetime.datetime(2031, 5, 6, 7, 8, 9, tzinfo=datetime.UTC)
    tls = _leaf(tmp_path, datetime.datetime(2025, 1, 1, tzinfo=datetime.UTC), end)
    assert tls_files.validity(tls.cert_file)[1] == end
    _check_tls(tls)
    for listener in ("http", "grpc"):
        labels = {"listener": listener, "file": tls.cert_file}
        assert REGISTRY.get_sample_value(METRIC, labels) == end.timestamp()


def test_an_expired_serving_certificate_refuses_the_start(tmp_path: Path) -> None:
    """It was accepted without a word; every client then failed the handshake."""
    past = datetime.datetime(2021, 1, 1, tzinfo=datetime.UTC)
    tls = _leaf(tmp_path, datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC), past)
    with pytest.raises(
        FailedPrecondition,
        match=re.escape(f"tls.cert_file {tls.cert_file}: the certificate expired on 2021-01-01 00:00:00 UTC"),
    ):
        _check_tls(tls)


def test_a_serving_certificate_not_valid_yet_is_warned_about(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    now = datetime.datetime.now(datetime.UTC)
    tls = _leaf(tmp_path, now + datetime.timedelta(days=1), now + datetime.timedelta(days=90))
    _check_tls(tls)
    assert "the certificate is not valid before" in caplog.text


def test_a_kafka_ca_directory_or_probe_is_accepted_as_librdkafka_accepts_it(tmp_path: Path) -> None:
    """ssl.ca.location is "File or directory path to CA certificate(s)", or `probe`:
    4011f27's check refused both ("not a regular file", "no such file"), and serve with a
    Kafka lineage sink exited 2 on a config that served before."""
    import confluent_kafka

    make_certs(tmp_path / "certs")  # a directory with a CA among other PEM files
    for ca in (str(tmp_path / "certs"), "probe"):
        settings = KafkaSettings(bootstrap_servers="127.0.0.1:9", security_protocol="ssl", ssl_ca_file=ca)
        confluent_kafka.Producer(settings.client_config())  # librdkafka loads it here
        tls_files.check_kafka(settings, "lineage.kafka")
    missing = KafkaSettings(security_protocol="ssl", ssl_ca_file=str(tmp_path / "ca.pem"))
    with pytest.raises(
        FailedPrecondition, match=re.escape(f"lineage.kafka.ssl_ca_file {tmp_path / 'ca.pem'}: no such file")
    ):
        tls_files.check_kafka(missing, "lineage.kafka")


def test_a_redis_url_certificate_without_a_key_anywhere_is_named_once_as_holding_no_key(
    tmp_path: Path,
) -> None:
    """It said `... ssl_certfile P / ... ssl_certfile P: not a PEM certificate and key`
    (review s58 round 4 #3); a file holding both (redis-py's form) still loads."""
    from featurestore.sources.redis_options import RedisOptions

    certs = make_certs(tmp_path / "certs")
    url = f"rediss://127.0.0.1:6379/0?ssl_certfile={certs.client_cert}"
    with pytest.raises(FailedPrecondition) as e:
        RedisOptions(url=url).check_files("default")
    assert e.value.message == (
        f"stores.default.url: ssl_certfile {certs.client_cert}: holds no private key: "
        "give the URL's ssl_keyfile or stores.default.ssl_key_file"
    )
    both = tmp_path / "both.pem"
    both.write_bytes(certs.client_cert.read_bytes() + certs.client_key.read_bytes())
    RedisOptions(url=f"rediss://127.0.0.1:6379/0?ssl_certfile={both}").check_files("default")
