"""Real `featurestore serve` processes, stopped and crashing. Under the supervisor
(--workers 2) a worker that dies is restarted and counted in
featurestore_worker_restarts_total, its counters stay in the totals (folded into the
metrics directory's archive) and the directory is gone after the stop. A stop is drained,
and a second SIGTERM during the drain ends it at once, with or without the supervisor
(a worker ignores the one the supervisor forwards after signalling it itself). A server
whose workers cannot start (a port in use) exits 2 with one error line, as one process
does, instead of restarting them forever."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.test_cli_and_lifecycle import _children
from tests.support import ServerProcess, free_port, http_get, http_post, is_running, wait_until

JOIN_PATH = "/v1/feature/join"
GUARD = 30.0  # seconds; only turns a hang into a failure


def server(tmp_path: Path, test_repo: Path, *args: str) -> ServerProcess:
    config = tmp_path / "config.yaml"
    config.write_text(
        f"registry: {{path: {tmp_path / 'registry'}}}\nstores: {{default: {{kind: memory}}, local: {{kind: memory}}}}\n"
    )
    return ServerProcess(
        ["--config", str(config), "--definitions", str(test_repo), *args], log_path=tmp_path / "log"
    ).start()


@pytest.fixture
def workers(tmp_path: Path, test_repo: Path) -> Iterator[ServerProcess]:
    proc = server(tmp_path, test_repo, "--workers", "2")
    try:
        assert proc.proc is not None
        wait_until(lambda: len(_children(proc.proc.pid)) == 2, 20, "two workers")  # type: ignore[union-attr]
        yield proc
    finally:
        proc.stop()


def scrape(server: ServerProcess) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = http_get(server.url + "/metrics")[1].decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def joins_counted(server: ServerProcess) -> float:
    return sum(
        v
        for (name, labels), v in scrape(server).items()
        if name == "featurestore_requests_total" and ("route", JOIN_PATH) in labels
    )


def joins_in_flight(server: ServerProcess) -> float:
    """HTTP joins the server's workers hold (one reading its body included)."""
    return scrape(server).get(("featurestore_inflight_requests", (("protocol", "http"),)), 0.0)


def restarts(server: ServerProcess, cause: str) -> float | None:
    return scrape(server).get(("featurestore_worker_restarts_total", (("cause", cause),)))


def metrics_dir_of(pid: int) -> Path:
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    value = next(e for e in environ if e.startswith(b"PROMETHEUS_MULTIPROC_DIR="))
    return Path(value.split(b"=", 1)[1].decode())


def test_a_killed_worker_is_restarted_counted_and_its_requests_stay_in_the_totals(
    workers: ServerProcess,
) -> None:
    assert workers.proc is not None
    supervisor = workers.proc.pid
    body = json.dumps({"entities": {"user_id": [1, 2]}, "features": ["user_profile:age"]}).encode()
    for _ in range(20):  # a connection each: the kernel spreads them over both workers
        assert http_post(workers.url + JOIN_PATH, body)[0] == 200
    wait_until(lambda: joins_counted(workers) == 20, 10, "both workers' joins to be flushed")
    assert restarts(workers, "signal") == 0 and restarts(workers, "exit") == 0  # there from the start

    # Both workers serving before one is killed: the fixture waits for one answer only, and
    # with the other still starting, killing the one that answered left no listener, and a
    # scrape was refused (one suite run of about 10 on a loaded machine, 2026-12-07).
    wait_until(lambda: workers.read_log().count("serving registry version") >= 2, 20, "both workers serving")
    victim = _children(supervisor)[0]
    metrics_dir = metrics_dir_of(victim)
    assert (metrics_dir / f"counter_{victim}.db").exists()
    os.kill(victim, signal.SIGKILL)
    wait_until(
        lambda: len(_children(supervisor)) == 2 and victim not in _children(supervisor),
        20,
        "the worker to be replaced",
    )
    wait_until(lambda: restarts(workers, "signal") == 1, 10, "the restart to be counted")
    assert restarts(workers, "exit") == 0
    # the dead worker's files are folded into the archive: its joins still count
    assert not (metrics_dir / f"counter_{victim}.db").exists()
    assert not (metrics_dir / f"histogram_{victim}.db").exists()
    assert (metrics_dir / "counter_archive.db").exists()
    assert joins_counted(workers) == 20

    assert workers.stop() == 0
    assert not metrics_dir.exists()  # removed with the supervisor


@contextmanager
def join_held_open(server: ServerProcess) -> Iterator[None]:
    """An HTTP join whose body never ends, counted in flight once it reached a worker: it
    holds that worker's drain (uvicorn waits for it, up to 10 s)."""
    before = joins_in_flight(server)
    with socket.create_connection(("127.0.0.1", server.http_port), timeout=GUARD) as sock:
        sock.sendall(
            f"POST {JOIN_PATH} HTTP/1.1\r\nhost: t\r\ncontent-type: application/json\r\n"
            'content-length: 100\r\n\r\n{"entities"'.encode()
        )
        wait_until(lambda: joins_in_flight(server) > before, 10, "the held join to reach a worker")
        yield


def test_a_second_sigterm_during_the_drain_exits_at_once(tmp_path: Path, test_repo: Path) -> None:
    proc = server(tmp_path, test_repo)
    try:
        assert proc.proc is not None
        with join_held_open(proc):
            proc.proc.send_signal(signal.SIGTERM)
            wait_until(lambda: "draining in-flight requests" in proc.read_log(), 10, "the drain to start")
            proc.proc.send_signal(signal.SIGTERM)
            code = proc.proc.wait(GUARD)  # the drain alone would end after 10 s, with 0
        assert code == 128 + signal.SIGTERM
        assert "second SIGTERM while draining: exiting now" in proc.read_log()
    finally:
        proc.stop()


def test_a_second_sigterm_to_the_supervisor_kills_its_draining_workers(workers: ServerProcess) -> None:
    assert workers.proc is not None
    supervisor = workers.proc
    pids = _children(supervisor.pid)
    with join_held_open(workers):
        supervisor.send_signal(signal.SIGTERM)
        wait_until(lambda: "draining in-flight requests" in workers.read_log(), 10, "the drain to start")
        supervisor.send_signal(signal.SIGTERM)
        code = supervisor.wait(GUARD)
    assert code == 1  # not a clean stop
    assert "killing worker(s)" in workers.read_log() and "a second stop signal" in workers.read_log()
    assert not any(is_running(pid) for pid in pids)


def test_a_stop_signal_to_the_whole_group_still_drains_the_workers(workers: ServerProcess) -> None:
    """systemd's KillMode=control-group signals the supervisor and every worker at once:
    each worker also gets the supervisor's forwarded signal, a second one that must not
    cut its drain."""
    assert workers.proc is not None
    supervisor = workers.proc
    pids = _children(supervisor.pid)
    # both workers serving (the fixture waits for two processes and one answer only: a
    # worker still starting has no stop handler yet, and a SIGTERM simply ends it)
    wait_until(lambda: workers.read_log().count("serving registry version") >= len(pids), 20, "both serving")
    with join_held_open(workers):
        # the workers' own signals first, handled, then the supervisor's forwarded ones:
        # two SIGTERMs sent at once to a process may reach it as one (a pending signal is
        # delivered once), which drains as a single signal does and proves nothing here
        for pid in pids:
            os.kill(pid, signal.SIGTERM)
        wait_until(
            lambda: workers.read_log().count("draining in-flight requests") >= len(pids),
            10,
            "every worker draining on its own SIGTERM",
        )
        os.kill(supervisor.pid, signal.SIGTERM)
        wait_until(
            lambda: (
                "SIGTERM again while draining" in workers.read_log() or "exiting now" in workers.read_log()
            ),
            10,
            "a worker to get the forwarded SIGTERM while draining",
        )
    code = supervisor.wait(GUARD)
    assert "exiting now" not in workers.read_log()
    assert code == 0  # every worker drained and exited 0
    assert not any(is_running(pid) for pid in pids)


def test_two_workers_on_a_port_already_taken_exit_2_at_once_with_one_error_line(
    tmp_path: Path, test_repo: Path
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(
        f"registry: {{path: {tmp_path / 'registry'}}}\nstores: {{default: {{kind: memory}}, local: {{kind: memory}}}}\n"
    )
    http_port, grpc_port = free_port(), free_port()
    with socket.socket() as taken:  # another server's port (no SO_REUSEPORT: not shared)
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        taken.bind(("127.0.0.1", http_port))
        taken.listen()
        began = time.monotonic()
        argv = [
            sys.executable, "-m", "featurestore.cli", "serve", "--config", str(config),
            "--definitions", str(test_repo), "--workers", "2",
            "--http-port", str(http_port), "--grpc-port", str(grpc_port),
        ]  # fmt: skip
        done = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=GUARD,  # before the fix: restarting the workers forever
        )
        took = time.monotonic() - began
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert done.returncode == 2, done.stderr
    assert errors == [
        f"error: FAILED_PRECONDITION: cannot bind HTTP on 127.0.0.1:{http_port}: Address already in use"
    ]
    assert "restarting" not in done.stderr
    # At once, not restarting until GUARD: the exit and 'no restarting' above carry the test;
    # the bound only catches a loop that stopped short of GUARD (25 s, not 15: the loaded CI
    # machine's imports of two workers and a supervisor)
    assert took < 25, took
