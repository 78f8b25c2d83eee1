"""TLS files of the serving port and of every backend, checked when a command starts
(featurestore/tls_files.py): a missing or non-PEM file, or an encrypted key, fails with
the setting's name and the path, exit 2, and never prompts for a passphrase or retries."""

from __future__ import annotations

import asyncio
import datetime
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme

from featurestore.sources.base import SourceState
from featurestore.sources.redis import RedisOptions, RedisSource
from tests.security import Certs, make_certs
from tests.servers import RedisServer, require
from tests.support import ROOT, free_port


@dataclass(frozen=True)
class Files:
    certs: Certs
    encrypted_key: Path  # certs.key under a passphrase
    junk: Path  # a file that is not PEM


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Files:
    tmp = tmp_path_factory.mktemp("tls-files")
    certs = make_certs(tmp / "certs")
    encrypted = tmp / "encrypted-key.pem"
    subprocess.run(
        [
            "openssl",
            "pkey",
            "-in",
            str(certs.key),
            "-aes256",
            "-passout",
            "pass:s3cret",
            "-out",
            str(encrypted),
        ],
        check=True,
    )
    junk = tmp / "junk.pem"
    junk.write_text("not a pem\n")
    return Files(certs, encrypted, junk)


class TlsRedis(RedisServer):
    """A standalone Redis on TLS only, client certificates optional."""

    def __init__(self, workdir: Path, certs: Certs) -> None:
        super().__init__(workdir)
        self.certs = certs

    def command(self) -> list[str]:
        c = self.certs
        return [self.binary, "--port", "0", "--tls-port", str(self.port), "--bind", "127.0.0.1",
                "--tls-cert-file", str(c.cert), "--tls-key-file", str(c.key), "--tls-ca-cert-file", str(c.ca),
                "--tls-auth-clients", "optional", "--save", "", "--appendonly", "no", "--daemonize", "no",
                "--dir", str(self.workdir)]  # fmt: skip

    def cli(self, *args: str) -> str:
        out = subprocess.run(
            [require("redis-cli", "redis-tools"), "--tls", "--cacert", str(self.certs.ca), "-p", str(self.port), *args],
            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=10,
        )  # fmt: skip
        return out.stdout.strip()


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory: pytest.TempPathFactory, files: Files) -> Iterator[TlsRedis]:
    server = TlsRedis(tmp_path_factory.mktemp("redis-tls"), files.certs)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def serve_command(work: Path, repo: Path, config: str) -> list[str]:
    """``featurestore serve --config`` on free ports."""
    path = work / "config.yaml"
    path.write_text(f"registry: {{path: {work / 'registry'}}}\n{config}")
    ports = ["--http-port", str(free_port()), "--grpc-port", str(free_port())]
    return [
        sys.executable,
        "-m",
        "featurestore.cli",
        "serve",
        "--config",
        str(path),
        "--definitions",
        str(repo),
        *ports,
    ]


def serve(
    work: Path, repo: Path, config: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """A server's start, its stdin not a terminal."""
    return subprocess.run(
        serve_command(work, repo, config),
        capture_output=True, text=True, timeout=120, cwd=ROOT, stdin=subprocess.DEVNULL,
        env={**os.environ, **(env or {})},
    )  # fmt: skip


MEMORY = "stores: {default: {kind: memory}, local: {kind: memory}}\n"  # the test repository's stores


def redis_store(port: int, query: str = "", **options: str) -> str:
    given = "".join(f", {k}: {v}" for k, v in options.items())
    url = f"rediss://127.0.0.1:{port}/0" + (f"?{query}" if query else "")
    return f'stores: {{default: {{kind: redis, url: "{url}"{given}}}, local: {{kind: memory}}}}\n'


def started_state(options: RedisOptions) -> SourceState:
    """The state of a Redis store with ``options`` once started (then closed)."""

    async def started() -> SourceState:
        source = RedisSource("default", "tls", options)
        try:
            await source.start()
            return source.state()
        finally:
            await source.close()

    return asyncio.run(started())


def test_the_redis_store_loads_its_tls_files_and_answers_over_tls(files: Files, tls_redis: TlsRedis) -> None:
    c = files.certs
    options = RedisOptions(
        url=f"rediss://127.0.0.1:{tls_redis.port}/0",
        ssl_ca_file=str(c.ca),
        ssl_cert_file=str(c.client_cert),
        ssl_key_file=str(c.client_key),
    )
    assert started_state(options) is SourceState.READY


@pytest.mark.parametrize("case", ["missing CA", "not PEM", "encrypted key"])
def test_a_redis_store_tls_file_that_cannot_load_fails_the_start_naming_the_setting_and_path(
    tmp_path: Path, test_repo: Path, files: Files, tls_redis: TlsRedis, case: str
) -> None:
    """It said `NOT_FOUND: [Errno 2] No such file or directory`, `[X509:
    NO_CERTIFICATE_OR_CRL_FOUND] ...` or `[Errno 22] Invalid argument`."""
    options, problem = {
        "missing CA": (
            {"ssl_ca_file": "/nonexistent/ca.pem"},
            "stores.default.ssl_ca_file /nonexistent/ca.pem: no such file",
        ),
        "not PEM": (
            {"ssl_ca_file": str(files.junk)},
            f"stores.default.ssl_ca_file {files.junk}: no PEM certificate",
        ),
        "encrypted key": (
            {"ssl_cert_file": str(files.certs.client_cert), "ssl_key_file": str(files.encrypted_key)},
            f"stores.default.ssl_key_file {files.encrypted_key}: the key is encrypted (passphrase-protected)",
        ),
    }[case]
    out = serve(tmp_path, test_repo, redis_store(tls_redis.port, **options))
    assert out.returncode == 2, out.stderr
    assert f"error: FAILED_PRECONDITION: {problem}" in out.stderr


@pytest.mark.parametrize("case", ["missing CA", "not PEM", "encrypted key", "bogus cert_reqs", "key alone"])
def test_the_tls_options_of_a_redis_url_query_are_checked_at_start_naming_the_url_option(
    tmp_path: Path, test_repo: Path, files: Files, tls_redis: TlsRedis, case: str
) -> None:
    """docs/storage.md's URL forms: `?ssl_ca_certs=/nonexistent` said `NOT_FOUND: [Errno 2]
    No such file or directory`, an encrypted `?ssl_keyfile=` was a bare `Encrypted`
    traceback and `?ssl_cert_reqs=bogus` a `KeyError: 'bogus'` (exit 1, restarting)."""
    cert = files.certs.client_cert
    query, problem = {
        "missing CA": (
            "ssl_ca_certs=/nonexistent/ca.pem",
            "FAILED_PRECONDITION: stores.default.url: ssl_ca_certs /nonexistent/ca.pem: no such file",
        ),
        "not PEM": (
            f"ssl_ca_certs={files.junk}",
            f"FAILED_PRECONDITION: stores.default.url: ssl_ca_certs {files.junk}: no PEM certificate",
        ),
        "encrypted key": (
            f"ssl_certfile={cert}&ssl_keyfile={files.encrypted_key}",
            f"FAILED_PRECONDITION: stores.default.url: ssl_keyfile {files.encrypted_key}: the key is encrypted",
        ),
        "key alone": (  # (redis-py failed every connect with a TypeError; the store down for good)
            f"ssl_keyfile={files.certs.client_key}",
            f"FAILED_PRECONDITION: stores.default.url: ssl_keyfile {files.certs.client_key}: "
            "a client key without a certificate",
        ),
        "bogus cert_reqs": (
            "ssl_cert_reqs=bogus",
            "INVALID_ARGUMENT: "
            f"{tmp_path / 'config.yaml'}: stores.default: url: query option 'ssl_cert_reqs' is not valid: "
            "expected one of none, optional, required",
        ),
    }[case]
    out = serve(tmp_path, test_repo, redis_store(tls_redis.port, query))
    assert out.returncode == 2, out.stderr
    assert f"error: {problem}" in out.stderr
    assert "Traceback" not in out.stderr


def test_a_redis_url_with_valid_tls_options_serves_over_tls(files: Files, tls_redis: TlsRedis) -> None:
    c = files.certs
    query = (
        f"ssl_cert_reqs=required&ssl_ca_certs={c.ca}&ssl_certfile={c.client_cert}&ssl_keyfile={c.client_key}"
    )
    options = RedisOptions(url=f"rediss://127.0.0.1:{tls_redis.port}/0?{query}")
    assert started_state(options) is SourceState.READY


def test_an_encrypted_serving_key_fails_the_start_saying_so(
    tmp_path: Path, test_repo: Path, files: Files
) -> None:
    """It said `tls.cert_file/key_file: [Errno 22] Invalid argument`."""
    env = {
        "FEATURESTORE_TLS__CERT_FILE": str(files.certs.cert),
        "FEATURESTORE_TLS__KEY_FILE": str(files.encrypted_key),
    }
    out = serve(tmp_path, test_repo, MEMORY, env)
    assert out.returncode == 2, out.stderr
    assert f"tls.key_file {files.encrypted_key}: the key is encrypted (passphrase-protected)" in out.stderr


def test_from_a_terminal_an_encrypted_serving_key_fails_instead_of_asking_for_the_passphrase(
    tmp_path: Path, test_repo: Path, files: Files
) -> None:
    """OpenSSL asked `Enter PEM pass phrase:` on the terminal and the start blocked there."""
    script = shutil.which("script")
    if script is None:
        pytest.fail("script (util-linux) is missing: it gives the server a terminal")
    command = " ".join(serve_command(tmp_path, test_repo, MEMORY))
    env = {**os.environ, "FEATURESTORE_TLS__CERT_FILE": str(files.certs.cert)}
    env["FEATURESTORE_TLS__KEY_FILE"] = str(files.encrypted_key)
    out = subprocess.run(
        [script, "-qec", command, "/dev/null"], capture_output=True, text=True, timeout=120, cwd=ROOT, env=env
    )
    assert "pass phrase" not in out.stdout
    assert "the key is encrypted" in out.stdout
    assert out.returncode == 2


def consume(work: Path, lineage: str) -> subprocess.CompletedProcess[str]:
    path = work / "consumer.yaml"
    path.write_text(f"lineage: {{sink: kafka, graph: bolt, {lineage}}}\n")
    return subprocess.run(
        [sys.executable, "-m", "featurestore.cli", "lineage", "consume", "--config", str(path)],
        capture_output=True, text=True, timeout=120, cwd=ROOT, stdin=subprocess.DEVNULL,
    )  # fmt: skip


def test_lineage_consume_with_a_missing_bolt_ca_exits_2_naming_it_instead_of_retrying(tmp_path: Path) -> None:
    """It retried for ever as "graph unavailable" (FileNotFoundError), paging
    LineageGraphUnavailable for a typo."""
    out = consume(tmp_path, f'bolt: {{uri: "bolt://127.0.0.1:{free_port()}", ca_file: /nonexistent/ca.pem}}')
    assert out.returncode == 2, out.stderr
    assert "error: FAILED_PRECONDITION: lineage.bolt.ca_file /nonexistent/ca.pem: no such file" in out.stderr


def test_lineage_kafka_tls_files_are_named_with_their_path(tmp_path: Path, files: Files) -> None:
    """librdkafka said `ssl.ca.location failed: ... BIO lib`, without the setting."""
    kafka = f'kafka: {{bootstrap_servers: "127.0.0.1:{free_port()}", security_protocol: ssl, ssl_ca_file: {files.junk}}}'
    out = consume(tmp_path, kafka)
    assert out.returncode == 2, out.stderr
    assert f"lineage.kafka.ssl_ca_file {files.junk}: no PEM certificate in it" in out.stderr
    kafka = (
        f'kafka: {{bootstrap_servers: "127.0.0.1:{free_port()}", security_protocol: ssl, '
        f"ssl_cert_file: {files.certs.client_cert}, ssl_key_file: {files.encrypted_key}}}"
    )
    out = consume(tmp_path, kafka)
    assert out.returncode == 2, out.stderr
    assert "the key is encrypted (passphrase-protected): give an unencrypted key or set " in out.stderr
    assert "lineage.kafka.ssl_key_password" in out.stderr


def command(work: Path, config: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``featurestore <args> --config`` of ``config``, its stdin not a terminal."""
    path = work / "job.yaml"
    path.write_text(f"registry: {{path: {work / 'registry'}}}\n{config}")
    return subprocess.run(
        [sys.executable, "-m", "featurestore.cli", *args, "--config", str(path)],
        capture_output=True, text=True, timeout=120, cwd=ROOT, stdin=subprocess.DEVNULL,
    )  # fmt: skip


STREAM_RUN = ("stream", "run", "--definitions", str(ROOT / "featurestore/demo/stream_features.yaml"))


@pytest.mark.parametrize("case", ["missing CA", "encrypted key", "encrypted key in the url"])
def test_stream_run_checks_its_redis_tile_store_tls_files_at_start(
    tmp_path: Path, files: Files, tls_redis: TlsRedis, case: str
) -> None:
    """Its tile store connects through redis-py, which read them at the first connect:
    `Enter PEM pass phrase:` and "Error 22 ... Invalid argument" retried every 5 s, or
    "Error 2 ... No such file or directory" for ever, naming no setting."""
    options, problem = {
        "missing CA": (
            {"ssl_ca_file": "/nonexistent/ca.pem"},
            "ssl_ca_file /nonexistent/ca.pem: no such file",
        ),
        "encrypted key": (
            {"ssl_cert_file": str(files.certs.client_cert), "ssl_key_file": str(files.encrypted_key)},
            f"ssl_key_file {files.encrypted_key}: the key is encrypted (passphrase-protected)",
        ),
        "encrypted key in the url": (
            {"query": f"ssl_keyfile={files.encrypted_key}", "ssl_cert_file": str(files.certs.client_cert)}
            | {"ssl_key_file": str(files.certs.client_key)},
            f"url: ssl_keyfile {files.encrypted_key}: the key is encrypted (passphrase-protected)",
        ),
    }[case]
    kafka = f'stream: {{kafka: {{bootstrap_servers: "127.0.0.1:{free_port()}"}}}}\n'
    out = command(
        tmp_path, redis_store(tls_redis.port, **options) + kafka, *STREAM_RUN, "--view", "user_clicks"
    )
    assert "pass phrase" not in out.stdout + out.stderr
    assert out.returncode == 2, out.stderr
    assert f"error: FAILED_PRECONDITION: stores.default.{problem}" in out.stderr


def test_materialize_and_stream_run_check_the_lineage_tls_files_at_start(
    tmp_path: Path, test_repo: Path, files: Files
) -> None:
    """Only serve and lineage consume checked them: materialize failed at the end with
    librdkafka's `ssl.ca.location failed: ... no certificate or crl found`, and a missing
    Bolt CA left the runs unrecorded as `FileNotFoundError(2, ...)`, neither naming them."""
    kafka = f'kafka: {{bootstrap_servers: "127.0.0.1:{free_port()}", security_protocol: ssl, ssl_ca_file: {files.junk}}}'
    bolt = f'bolt: {{uri: "bolt://127.0.0.1:{free_port()}", ca_file: /nonexistent/ca.pem}}'
    problems = {
        f"sink: kafka, {kafka}": f"lineage.kafka.ssl_ca_file {files.junk}: no PEM certificate in it",
        f"graph: bolt, {bolt}": "lineage.bolt.ca_file /nonexistent/ca.pem: no such file",
    }
    materialize = ("materialize", "--definitions", str(test_repo), "--view", "user_profile")
    for lineage, problem in problems.items():
        config = f"{MEMORY}lineage: {{graphql: false, {lineage}}}\n"
        for args in (materialize, (*STREAM_RUN, "--view", "user_clicks")):
            out = command(tmp_path, config, *args)
            assert out.returncode == 2, out.stderr
            assert f"error: FAILED_PRECONDITION: {problem}" in out.stderr, args


def test_a_server_refuses_to_start_on_an_expired_serving_certificate(tmp_path: Path, test_repo: Path) -> None:
    """It served with it, /readyz 200 on the admin port, while every client's handshake
    failed (certificate has expired)."""
    past = datetime.datetime(2021, 1, 1, tzinfo=datetime.UTC)
    leaf = trustme.CA().issue_cert("127.0.0.1", not_before=past - datetime.timedelta(days=90), not_after=past)
    leaf.cert_chain_pems[0].write_to_path(str(tmp_path / "expired.pem"))
    leaf.private_key_pem.write_to_path(str(tmp_path / "expired-key.pem"))
    env = {"FEATURESTORE_TLS__CERT_FILE": str(tmp_path / "expired.pem")}
    env["FEATURESTORE_TLS__KEY_FILE"] = str(tmp_path / "expired-key.pem")
    out = serve(tmp_path, test_repo, MEMORY, env)
    assert out.returncode == 2, out.stderr
    assert (
        f"tls.cert_file {tmp_path / 'expired.pem'}: the certificate expired on 2021-01-01 00:00:00 UTC"
        in out.stderr
    )
