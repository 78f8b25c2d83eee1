"""The PEM files of TLS settings, checked when a command starts: each error names the
setting and the path, never a key's bytes (docs/security.md, "TLS files").

Keys are loaded with a password callback: without one, OpenSSL asks for an encrypted
key's passphrase on the terminal (a server started from a shell blocked there) or
fails with ``[Errno 22] Invalid argument`` (no terminal). The callback gives the
setting's password when there is one (Kafka's ``ssl_key_password``) and otherwise
raises, so the error says the key is encrypted.
"""

from __future__ import annotations

import base64
import datetime
import os
import re
import ssl
from collections.abc import Callable
from typing import Any

from featurestore.errors import FailedPrecondition

_PEM_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----\s*(.+?)\s*-----END CERTIFICATE-----", re.DOTALL)


class Encrypted(Exception):
    """Raised by the password callback: the key asks for a passphrase."""


def refuse_passphrase() -> bytes:
    """A password callback for ``load_cert_chain`` that never lets OpenSSL prompt."""
    raise Encrypted


def readable(setting: str, path: str) -> None:
    """``path`` is a file this process can read."""
    if not os.path.isfile(path):
        problem = "no such file" if not os.path.exists(path) else "not a regular file"
        raise FailedPrecondition(f"{setting} {path}: {problem}")
    if not os.access(path, os.R_OK):
        raise FailedPrecondition(f"{setting} {path}: not readable by this process (uid {os.getuid()})")


def load_cert_chain(
    context: ssl.SSLContext,
    cert: tuple[str, str],
    key: tuple[str, str],
    password: tuple[str, str] | None = None,
) -> None:
    """``context.load_cert_chain`` of the (setting, path) pairs ``cert`` and ``key``;
    ``password``: the (setting, value) opening an encrypted key. Never prompts."""
    (cert_setting, cert_path), (key_setting, key_path) = cert, key
    readable(cert_setting, cert_path)
    readable(key_setting, key_path)
    secret: Callable[[], bytes] | bytes = (
        password[1].encode() if password and password[1] else refuse_passphrase
    )
    try:
        context.load_cert_chain(cert_path, key_path, password=secret)
    except Encrypted:
        raise FailedPrecondition(
            f"{key_setting} {key_path}: the key is encrypted (passphrase-protected): give an unencrypted key"
            + (f" or set {password[0]}" if password else "")
        ) from None
    except ssl.SSLError as e:
        if password and password[1] and e.reason in ("BAD_DECRYPT", "PEM_LIB", None):
            problem = f"{key_setting} {key_path}: the key does not open with {password[0]}, or is not PEM"
        elif e.reason == "KEY_VALUES_MISMATCH":
            problem = f"{key_setting} {key_path}: the key is not the key of {cert_setting} {cert_path}"
        else:
            problem = (
                f"{cert_setting} {cert_path} / {key_setting} {key_path}: not a PEM certificate and key ({e})"
            )
        raise FailedPrecondition(problem) from None
    except OSError as e:
        raise FailedPrecondition(
            f"{cert_setting} {cert_path} / {key_setting} {key_path}: {e.strerror or e}"
        ) from None


def check_pair(cert: tuple[str, str], key: tuple[str, str], password: tuple[str, str] | None = None) -> None:
    """A client certificate and its key load, and belong together."""
    load_cert_chain(ssl.create_default_context(), cert, key, password)


def check_ca(setting: str, path: str) -> None:
    """``path`` holds at least one PEM CA certificate."""
    readable(setting, path)
    try:
        ssl.create_default_context(cafile=path)
    except (ssl.SSLError, OSError, UnicodeDecodeError):
        raise FailedPrecondition(f"{setting} {path}: no PEM certificate in it") from None


def check_set(files: dict[str, str], key_password: tuple[str, str] | None = None) -> None:
    """The files of one backend by setting name (ending ``ca_file``, ``cert_file``,
    ``key_file``; the empty ones not set): each CA has certificates, the certificate
    and key pair up."""
    cert = key = None
    for setting, path in files.items():
        if not path:
            continue
        if setting.endswith("ca_file"):
            check_ca(setting, path)
        elif setting.endswith("cert_file"):
            cert = (setting, path)
        elif setting.endswith("key_file"):
            key = (setting, path)
    if cert is not None and key is not None:
        check_pair(cert, key, key_password)


def validity(path: str) -> tuple[datetime.datetime, datetime.datetime]:
    """notBefore and notAfter of the first certificate in a PEM file (the leaf of a
    chain), read from its DER: the ssl module decodes only a peer's certificate."""
    with open(path, "rb") as f:
        found = _PEM_CERT.search(f.read())
    if found is None:
        raise ValueError("no PEM certificate")
    der = base64.b64decode(b"".join(found.group(1).split()))
    cert = _children(_element(der, 0)[0])
    tbs = _children(cert[0])
    fields = tbs[1:] if tbs[0][0] == 0xA0 else tbs  # [0] version, then serial, algorithm, issuer
    not_before, not_after = (_time(tag, value) for tag, value in _children(fields[3]))
    return not_before, not_after


def _element(der: bytes, at: int) -> tuple[tuple[int, bytes], int]:
    """(tag, content) of the DER element at ``at``, and where the next one starts."""
    tag, length, at = der[at], der[at + 1], at + 2
    if length & 0x80:  # long form: the next (length & 0x7F) bytes
        size = length & 0x7F
        length, at = int.from_bytes(der[at : at + size], "big"), at + size
    return (tag, der[at : at + length]), at + length


def _children(element: tuple[int, bytes]) -> list[tuple[int, bytes]]:
    content, at, found = element[1], 0, []
    while at < len(content):
        child, at = _element(content, at)
        found.append(child)
    return found


def _time(tag: int, value: bytes) -> datetime.datetime:
    text = value.decode("ascii").rstrip("Z")
    if tag == 0x17:  # UTCTime, YYMMDDHHMMSS: years 1950-2049 (RFC 5280 4.1.2.5.1)
        year = int(text[:2])
        text = f"{year + (1900 if year >= 50 else 2000)}{text[2:]}"
    return datetime.datetime.strptime(text[:14], "%Y%m%d%H%M%S").replace(tzinfo=datetime.UTC)


# librdkafka's ``ssl.ca.location`` value that looks in its standard CA paths (its
# CONFIGURATION.md): not a file name.
KAFKA_CA_PROBE = "probe"


def check_kafka_ca(setting: str, path: str) -> None:
    """What librdkafka's ``ssl.ca.location`` takes: a PEM file of CA certificates, a
    directory of them (hashed, as ``/etc/ssl/certs``: OpenSSL reads one when a broker's
    issuer is looked up), or ``probe``."""
    if path == KAFKA_CA_PROBE:
        return
    if os.path.isdir(path):
        if not os.access(path, os.R_OK | os.X_OK):
            raise FailedPrecondition(
                f"{setting} {path}: a directory not readable by this process (uid {os.getuid()})"
            )
        return
    check_ca(setting, path)


def check_kafka(settings: Any, section: str) -> None:
    """A ``KafkaSettings``' TLS files (librdkafka said only ``ssl.ca.location failed:
    ... BIO lib``), under ``section`` (``lineage.kafka``, ``stream.kafka``)."""
    if settings.security_protocol.endswith("ssl"):
        if settings.ssl_ca_file:
            check_kafka_ca(f"{section}.ssl_ca_file", settings.ssl_ca_file)
        names = ("ssl_cert_file", "ssl_key_file")
        password = (f"{section}.ssl_key_password", settings.ssl_key_password.get_secret_value())
        check_set({f"{section}.{n}": getattr(settings, n) for n in names}, password)


def check_lineage(lineage: Any, consumer: bool = False, job: bool = False) -> None:
    """The TLS files of the lineage clients a server (or, ``consumer``, ``featurestore
    lineage consume``; ``job``, ``materialize`` and ``stream run``, whose runs go to the
    Kafka sink, else to a Bolt graph: factories.make_run_recorder) builds: the Kafka
    sink's and the Bolt graph's CA (a missing one failed every connect, which the
    consumer retried for ever as "graph unavailable")."""
    kafka = lineage.enabled and lineage.sink == "kafka"
    if consumer or kafka:
        check_kafka(lineage.kafka, "lineage.kafka")
    bolt = consumer or (lineage.enabled and not (job and kafka))
    if bolt and lineage.graph == "bolt" and lineage.bolt.ca_file:
        check_ca("lineage.bolt.ca_file", lineage.bolt.ca_file)
