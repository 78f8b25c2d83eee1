"""TLS material and callers for the security tests: a test CA (trustme) with server and
client certificates written as PEM files, an HTTPS caller, and a featurestore server
whose probes answer on its plain admin port."""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trustme

from tests.servers import ArcadeServer, EtcdServer, RedisServer
from tests.support import ServerProcess, free_port, http_get


@dataclass(frozen=True)
class Certs:
    ca: Path  # the CA certificate clients and servers trust
    cert: Path  # a server certificate for 127.0.0.1 and localhost
    key: Path
    client_cert: Path  # a client certificate of the same CA (mutual TLS)
    client_key: Path
    other_ca: Path  # a CA that signed none of these

    def client_context(self, *, with_client_cert: bool = False, ca: Path | None = None) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(ca or self.ca))
        if with_client_cert:
            context.load_cert_chain(str(self.client_cert), str(self.client_key))
        return context


def make_certs(directory: Path) -> Certs:
    directory.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    client = ca.issue_cert("client.featurestore.test")
    paths = {
        name: directory / f"{name}.pem"
        for name in ("ca", "cert", "key", "client_cert", "client_key", "other_ca")
    }
    ca.cert_pem.write_to_path(str(paths["ca"]))
    paths["cert"].write_bytes(b"".join(blob.bytes() for blob in server.cert_chain_pems))
    server.private_key_pem.write_to_path(str(paths["key"]))
    paths["client_cert"].write_bytes(b"".join(blob.bytes() for blob in client.cert_chain_pems))
    client.private_key_pem.write_to_path(str(paths["client_key"]))
    trustme.CA().cert_pem.write_to_path(str(paths["other_ca"]))
    return Certs(**paths)


def call(
    url: str,
    context: ssl.SSLContext | None = None,
    body: Any = None,
    token: str | None = None,
    timeout: float = 10.0,
) -> tuple[int, Any, dict[str, str]]:
    """One request (POST with a JSON body, else GET): status, decoded JSON body, headers."""
    headers = {"content-type": "application/json"}
    if token is not None:
        headers["authorization"] = f"Bearer {token}"
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=context) as r:
            raw, status, got = r.read(), r.status, dict(r.headers)
    except urllib.error.HTTPError as e:
        raw, status, got = e.read(), e.code, dict(e.headers)
    try:
        doc = json.loads(raw)
    except ValueError:
        doc = raw.decode(errors="replace")
    return status, doc, {k.lower(): v for k, v in got.items()}


class SecureServer(ServerProcess):
    """``featurestore serve`` with an admin port: ready once /readyz answers there (the
    serving port may want TLS and tokens)."""

    def __init__(self, args: list[str], env: dict[str, str], log_path: Path) -> None:
        self.admin_port = free_port()
        super().__init__(args, {**env, "FEATURESTORE_HTTP__ADMIN_PORT": str(self.admin_port)}, log_path)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.http_port}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    def answers(self) -> bool:
        try:
            return http_get(self.admin_url + "/readyz", timeout=1)[0] == 200
        except OSError:
            return False


class SecureRedisServer(RedisServer):
    """Redis over TLS only (``rediss://``), with the default user off and one ACL user."""

    USER = "featurestore"
    PASSWORD = "redis-acl-pw-5e1c0b"

    def __init__(self, workdir: Path, certs: Certs) -> None:
        super().__init__(workdir)
        self.certs = certs

    @property
    def url(self) -> str:
        return f"rediss://127.0.0.1:{self.port}/0"

    def command(self) -> list[str]:
        self.workdir.mkdir(parents=True, exist_ok=True)
        acl = self.workdir / "acl.conf"
        acl.write_text(f"user default off\nuser {self.USER} on >{self.PASSWORD} ~* &* +@all\n")
        c = self.certs
        return [self.binary, str(acl), "--port", "0", "--tls-port", str(self.port), "--bind", "127.0.0.1",
                "--tls-cert-file", str(c.cert), "--tls-key-file", str(c.key), "--tls-ca-cert-file", str(c.ca),
                "--tls-auth-clients", "no", "--save", "", "--appendonly", "no", "--daemonize", "no",
                "--dir", str(self.workdir)]  # fmt: skip

    def answers(self) -> bool:
        import redis

        client = redis.Redis.from_url(
            self.url, username=self.USER, password=self.PASSWORD, ssl_ca_certs=str(self.certs.ca),
            socket_timeout=1,
        )  # fmt: skip
        try:
            return bool(client.ping())
        except (redis.RedisError, OSError):
            return False
        finally:
            client.close()


class SecureEtcdServer(EtcdServer):
    """etcd serving clients over mutual TLS only (a client certificate of the test CA),
    with authentication on (user ``root``)."""

    USER = "root"
    PASSWORD = "etcd-root-pw-93d1aa"

    def __init__(self, workdir: Path, certs: Certs) -> None:
        super().__init__(workdir)
        self.certs = certs

    @property
    def endpoint(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        c = self.certs
        return [*super().command(), "--cert-file", str(c.cert), "--key-file", str(c.key),
                "--trusted-ca-file", str(c.ca)]  # fmt: skip

    def answers(self) -> bool:
        return self.etcdctl("endpoint", "health").returncode == 0

    def etcdctl(self, *args: str, auth: bool = False) -> subprocess.CompletedProcess[str]:
        user = ["--user", f"{self.USER}:{self.PASSWORD}"] if auth else []
        return subprocess.run(
            ["etcdctl", "--endpoints", self.endpoint, "--cacert", str(self.certs.ca),
             "--cert", str(self.certs.client_cert), "--key", str(self.certs.client_key), *user, *args],
            env={**os.environ, "ETCDCTL_API": "3"}, capture_output=True, text=True, timeout=10,
        )  # fmt: skip

    def enable_auth(self) -> None:
        for args in (["user", "add", f"{self.USER}:{self.PASSWORD}"], ["user", "grant-role", self.USER, "root"],
                     ["auth", "enable"]):  # fmt: skip
            out = self.etcdctl(*args)
            assert out.returncode == 0, out.stderr


class TlsArcadeServer(ArcadeServer):
    """ArcadeDB whose Bolt listener takes TLS only (arcadedb.bolt.ssl=REQUIRED), with the
    test CA's server certificate in a PKCS12 key store."""

    STORE_PASSWORD = "store-pw-1d8e"

    def __init__(self, workdir: Path, certs: Certs) -> None:
        super().__init__(workdir)
        self.certs = certs

    def command(self) -> list[str]:
        from cryptography import x509
        from cryptography.hazmat.primitives.serialization import (
            BestAvailableEncryption,
            load_pem_private_key,
            pkcs12,
        )

        key = load_pem_private_key(self.certs.key.read_bytes(), None)
        chain = x509.load_pem_x509_certificates(self.certs.cert.read_bytes())
        ca = x509.load_pem_x509_certificate(self.certs.ca.read_bytes())
        secret = BestAvailableEncryption(self.STORE_PASSWORD.encode())
        keystore, truststore = self.workdir / "keystore.p12", self.workdir / "truststore.p12"
        keystore.write_bytes(pkcs12.serialize_key_and_certificates(b"bolt", key, chain[0], chain[1:], secret))  # type: ignore[arg-type]
        truststore.write_bytes(
            pkcs12.serialize_java_truststore([pkcs12.PKCS12Certificate(ca, b"ca")], secret)
        )
        cmd = super().command()
        at = cmd.index("-cp")
        return [*cmd[:at], "-Darcadedb.bolt.ssl=REQUIRED", f"-Darcadedb.ssl.keyStore={keystore}",
                f"-Darcadedb.ssl.keyStorePassword={self.STORE_PASSWORD}", f"-Darcadedb.ssl.trustStore={truststore}",
                f"-Darcadedb.ssl.trustStorePassword={self.STORE_PASSWORD}", *cmd[at:]]  # fmt: skip

    def answers(self) -> bool:
        import neo4j
        from neo4j.exceptions import Neo4jError, ServiceUnavailable

        tls: dict[str, Any] = {
            "encrypted": True,
            "trusted_certificates": neo4j.TrustCustomCAs(str(self.certs.ca)),
        }
        try:
            with (
                neo4j.GraphDatabase.driver(self.uri, auth=(self.USER, self.PASSWORD), **tls) as d,
                d.session(database=self.DATABASE) as s,
            ):
                return bool(s.run("RETURN 1 AS x").single())
        except (ServiceUnavailable, Neo4jError, OSError):
            return False
