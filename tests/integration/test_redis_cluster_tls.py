"""Cluster reads on the store's own connections over TLS (``rediss://``): every node's
connections verify its certificate against the store's CA and log in as the store's ACL
user, as the standalone read path's do (tests/integration/test_redis_cluster_reads.py
for the rest of the Cluster read path)."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from featurestore.sources.base import ViewQuery, ViewRead
from featurestore.sources.redis import RedisOptions, RedisSource
from featurestore.sources.redis_cluster_read import ClusterReader
from tests.harness import wait_until
from tests.integration.test_redis_cluster_reads import lean_only as lean_only  # (a fixture)
from tests.integration.test_redis_cluster_reads import reader
from tests.integration.test_redis_source import V, users
from tests.security import Certs, make_certs
from tests.servers import RedisServer, require
from tests.support import REDIS_CONNECT_MS

USER, PASSWORD = "reader", "cluster-tls-pw-4f1a"


class TlsClusterNode(RedisServer):
    """A cluster-mode node on TLS only, the cluster bus too, with one ACL user beside the
    default one (which redis-cli's ``--cluster create`` uses)."""

    def __init__(self, workdir: Path, certs: Certs) -> None:
        super().__init__(workdir, cluster=True)
        self.certs = certs

    def command(self) -> list[str]:
        c = self.certs
        return [self.binary, "--port", "0", "--tls-port", str(self.port), "--bind", "127.0.0.1",
                "--tls-cert-file", str(c.cert), "--tls-key-file", str(c.key), "--tls-ca-cert-file", str(c.ca),
                "--tls-auth-clients", "no", "--tls-cluster", "yes", "--cluster-enabled", "yes",
                "--cluster-config-file", f"nodes-{self.port}.conf", "--save", "", "--appendonly", "no",
                "--daemonize", "no", "--dir", str(self.workdir)]  # fmt: skip

    def cli(self, *args: str) -> str:
        out = subprocess.run(
            [require("redis-cli", "redis-tools"), "--tls", "--cacert", str(self.certs.ca), "-p", str(self.port), *args],
            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=10,
        )  # fmt: skip
        return out.stdout.strip()


@pytest.fixture(scope="module")
def tls_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[TlsClusterNode]]:
    tmp = tmp_path_factory.mktemp("redis-cluster-tls")
    certs = make_certs(tmp / "certs")
    nodes = [TlsClusterNode(tmp / f"node{i}", certs) for i in range(3)]
    try:
        for n in nodes:
            n.start()
        out = subprocess.run(
            [require("redis-cli", "redis-tools"), "--tls", "--cacert", str(certs.ca), "--cluster", "create",
             *(f"127.0.0.1:{n.port}" for n in nodes), "--cluster-replicas", "0", "--cluster-yes"],
            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert out.returncode == 0, out.stdout + out.stderr
        want = ("cluster_state:ok", "cluster_known_nodes:3", "cluster_slots_ok:16384")
        wait_until(
            lambda: all(all(w in n.cli("CLUSTER", "INFO") for w in want) for n in nodes), 30, "cluster ok"
        )
        for n in nodes:
            assert n.cli("ACL", "SETUSER", USER, "on", f">{PASSWORD}", "~*", "+@all") == "OK"
        yield nodes
    finally:
        for n in nodes:
            n.stop()


async def test_reads_of_a_tls_cluster_go_on_verified_connections_of_the_acl_user_to_every_node(
    tls_cluster: list[TlsClusterNode], lean_only: None
) -> None:
    name = f"tls{uuid.uuid4().hex[:6]}"
    options = RedisOptions(
        url=f"rediss://127.0.0.1:{tls_cluster[0].port}/0?client_name={name}",
        cluster=True,
        username=USER,
        password=SecretStr(PASSWORD),
        ssl_ca_file=str(tls_cluster[0].certs.ca),
        connect_timeout_ms=REDIS_CONNECT_MS,
    )
    src = RedisSource("t", f"p{uuid.uuid4().hex[:8]}", options)
    await src.start()
    try:
        await src.write(V, users(list(range(1, 61))), 1)
        assert await reader(src).mapped()
        [got] = await src.read([ViewQuery(V, list(range(1, 61)), [0, 1], 1)])
        assert isinstance(got, ViewRead)
        assert got.columns == [list(range(1, 61)), [f"u{i}" for i in range(1, 61)]]
        for n in tls_cluster:
            mine = [
                c for c in n.cli("CLIENT", "LIST").splitlines() if f" name={name} " in c and " cmd=get " in c
            ]
            assert mine and all(f" user={USER} " in c for c in mine), n.cli("CLIENT", "LIST")
    finally:
        await src.close()


async def test_the_lean_connections_check_every_node_s_certificate_against_the_store_s_ca(
    tls_cluster: list[TlsClusterNode],
) -> None:
    """Given another CA than the one that signed the nodes' certificates (redis-py's client,
    which builds the map, given the right one), no value is read on a lean connection:
    the read goes through redis-py's client instead."""
    url = f"rediss://127.0.0.1:{tls_cluster[0].port}/0"
    certs = tls_cluster[0].certs
    auth: dict[str, Any] = {"username": USER, "password": PASSWORD, "connect_timeout_ms": REDIS_CONNECT_MS}
    src = RedisSource(
        "t",
        f"p{uuid.uuid4().hex[:8]}",
        RedisOptions(url=url, cluster=True, ssl_ca_file=str(certs.ca), **auth),
    )
    untrusting = RedisOptions(url=url, cluster=True, ssl_ca_file=str(certs.other_ca), **auth)
    src._cluster = ClusterReader(src._client, untrusting)  # type: ignore[arg-type]
    await src.start()
    try:
        await src.write(V, users([1, 2]), 1)
        assert await reader(src).mapped()
        [got] = await src.read([ViewQuery(V, [1, 2], [0], 1)])
        assert isinstance(got, ViewRead) and got.columns == [[1, 2]]
        assert reader(src).fallbacks == 1  # the lean connection refused the certificate
    finally:
        await src.close()
