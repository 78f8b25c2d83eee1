"""Reserved ports (``free_port`` in tests/harness.py): the kernel keeps them from every
other socket until a server takes them, and every server the tests start can take them
(it binds with SO_REUSEADDR)."""

from __future__ import annotations

import contextlib
import errno
import socket
from pathlib import Path

import pytest

from tests.harness import LOOPBACK, ManagedProcess, free_port
from tests.servers import ArcadeServer, EtcdServer, RedisServer, TansuBroker
from tests.support import ServerProcess


def held(port: int) -> bool:
    """True when the kernel refuses the port to a socket without SO_REUSEADDR."""
    with socket.socket() as s:
        try:
            s.bind((LOOPBACK, port))
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                return True
            raise
    return False


def listening(port: int) -> bool:
    try:
        socket.create_connection((LOOPBACK, port), timeout=5).close()
    except OSError:
        return False
    return True


def test_a_reserved_port_is_refused_to_a_plain_bind_and_given_to_a_reusing_server() -> None:
    port = free_port()
    assert held(port)
    with socket.socket() as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind((LOOPBACK, port))
        server.listen()
        assert listening(port)


def test_the_kernel_picks_no_reserved_port_for_a_bind_to_port_0() -> None:
    """Had the reservations been plain bind-and-close, 8000 sockets on port 0 would land
    on about 14 of these 50 ports (the ephemeral range has about 28000)."""
    reserved = {free_port() for _ in range(50)}
    with contextlib.ExitStack() as stack:
        picked = set()
        for _ in range(8000):
            s = stack.enter_context(socket.socket())
            s.bind((LOOPBACK, 0))
            picked.add(s.getsockname()[1])
    assert not reserved & picked


def test_reservations_are_never_handed_out_twice() -> None:
    ports = [free_port() for _ in range(200)]
    assert len(set(ports)) == len(ports)


def featurestore(tmp_path: Path, test_repo: Path, *extra: str) -> tuple[ManagedProcess, list[int]]:
    config = tmp_path / "config.yaml"
    config.write_text(
        f"registry: {{path: {tmp_path / 'registry'}}}\nstores: {{default: {{kind: memory}}, local: {{kind: memory}}}}\n"
    )
    server = ServerProcess(
        ["--config", str(config), "--definitions", str(test_repo), *extra], log_path=tmp_path / "server.log"
    )
    return server, [server.http_port, server.grpc_port]


def backing(kind: str, tmp_path: Path) -> tuple[ManagedProcess, list[int]]:
    if kind == "redis cluster node":
        node = RedisServer(tmp_path / "redis", cluster=True)
        return node, [node.port, node.port + 10000]
    if kind == "etcd":
        etcd = EtcdServer(tmp_path / "etcd")
        return etcd, [etcd.port, etcd.peer_port]
    if kind == "tansu":
        broker = TansuBroker(log_path=tmp_path / "tansu.log")
        return broker, [broker.port]
    if kind == "arcadedb":
        arcade = ArcadeServer(tmp_path / "arcadedb")
        return arcade, [arcade.http_port, arcade.bolt_port]
    raise ValueError(kind)


SERVERS = [
    "redis cluster node",  # redis: client port and cluster bus
    "etcd",  # Go: client and peer ports
    "tansu",  # Rust (tokio)
    "arcadedb",  # Java: HTTP and Bolt
    "featurestore",  # uvicorn on featurestore.server._listen, and grpc
    "featurestore, 2 workers",  # the same with SO_REUSEPORT
]


@pytest.mark.parametrize("kind", SERVERS)
def test_every_server_takes_the_ports_reserved_for_it(kind: str, tmp_path: Path, test_repo: Path) -> None:
    if kind.startswith("featurestore"):
        server, ports = featurestore(tmp_path, test_repo, *(["--workers", "2"] if "workers" in kind else []))
    else:
        server, ports = backing(kind, tmp_path)
    assert all(held(p) for p in ports), "reserved, so refused to a plain bind"
    try:
        server.start()
        assert all(listening(p) for p in ports), "every port taken by the server"
    finally:
        server.stop()


def test_the_lineage_consumer_metrics_server_takes_a_reserved_port() -> None:
    """`featurestore lineage consume --metrics-port` serves with prometheus_client."""
    from prometheus_client import start_http_server

    port = free_port()
    assert held(port)
    server, thread = start_http_server(port, addr=LOOPBACK)
    try:
        assert listening(port)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)
