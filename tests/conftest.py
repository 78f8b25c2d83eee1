from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from featurestore.demo.data import ensure_demo_data
from tests.servers import ArcadeServer, EtcdServer, RedisCluster, RedisServer, TansuBroker
from tests.support import ServerProcess, write_test_repo


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("demo")
    ensure_demo_data(d)
    return d


@pytest.fixture(scope="session")
def test_repo(demo_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The definitions file of the test feature repository (see support.write_test_repo)."""
    root = tmp_path_factory.mktemp("repo")
    return write_test_repo(root, demo_dir / "users.parquet")


@pytest.fixture(scope="session")
def server(test_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One real server process (memory store) shared by the read-only API tests."""
    work = tmp_path_factory.mktemp("server")
    config = work / "config.yaml"
    config.write_text(
        f"registry: {{path: {work / 'registry'}}}\n"
        "stores: {default: {kind: memory}, local: {kind: memory}}\n"
        "limits: {max_rows: 1000, max_body_bytes: 262144, deadline_ms: 2000}\n"
    )
    proc = ServerProcess(
        ["--config", str(config), "--definitions", str(test_repo)], log_path=work / "server.log"
    ).start()
    yield proc
    proc.stop()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of the test's own, for tests that freeze it, kill its clients or
    change its users (the session's ``redis_server`` is shared)."""
    server = RedisServer(tmp_path / "r").start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    cluster = RedisCluster(tmp_path_factory.mktemp("redis-cluster")).start()
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def etcd_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdServer]:
    server = EtcdServer(tmp_path_factory.mktemp("etcd")).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def chdb_dsn(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The in-process ClickHouse engine's data dir. chdb opens one path per process,
    so every in-process ClickHouse test shares it (each with its own project prefix)."""
    return f"chdb://{tmp_path_factory.mktemp('chdb')}"


@pytest.fixture(scope="session")
def arcade(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ArcadeServer]:
    server = ArcadeServer(tmp_path_factory.mktemp("arcadedb")).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TansuBroker]:
    broker = TansuBroker(log_path=tmp_path_factory.mktemp("tansu") / "tansu.log").start()
    yield broker
    broker.stop()
