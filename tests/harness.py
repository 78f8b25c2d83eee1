"""The harness for processes the tests run: reserved loopback ports, and one base class
that starts a server, waits until it answers, and stops it by pid.

Every server the tests start (``featurestore serve``, Redis, etcd, ArcadeDB, Tansu, the
lineage consumer) is a :class:`ManagedProcess`; a subclass says only what to run and
how to tell that it answers."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Self

LOOPBACK = "127.0.0.1"

_handed_out: set[int] = set()
_handed_out_lock = threading.Lock()


def _park(port: int = 0) -> int:
    """Bind ``port`` (0: any) on loopback and leave it in TIME_WAIT; returns the port.
    Raises OSError when the port is taken."""
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((LOOPBACK, port))
        listener.listen(1)
        port = int(listener.getsockname()[1])
        with socket.create_connection((LOOPBACK, port)):
            accepted, _ = listener.accept()
            # The side that closes first keeps the connection in TIME_WAIT: the accepted
            # socket, whose local port is the one reserved (the client closes second).
            accepted.close()
    return port


def _claim(*ports: int) -> bool:
    with _handed_out_lock:
        if any(p in _handed_out for p in ports):
            return False
        _handed_out.update(ports)
        return True


def free_port() -> int:
    """A loopback port reserved for a server this session is about to start.

    Binding port 0 and closing the socket does not reserve anything: the kernel may hand
    the same number to any other socket (another test's client, another process) before
    the server binds it. Instead the port is left in TIME_WAIT: bound with SO_REUSEADDR,
    listening, a client connects, the accepted side closes first. For TIME_WAIT's 60 s
    (Linux's TCP_TIMEWAIT_LEN) the kernel picks neither that port for ``bind(0)`` nor
    as the source port of an outgoing connection, while a server binding it explicitly
    with SO_REUSEADDR takes it at once. Every server the tests start binds that way
    (redis, etcd and Go, Tansu and Rust, ArcadeDB and Java, uvicorn's socket in
    ``featurestore.server._listen``, grpc, prometheus_client's HTTP server):
    tests/integration/test_reserved_ports.py starts each on reserved ports.

    A port is handed out at most once per pytest process (an in-process set), so a
    server started more than 60 s after its reservation (a fixture first used late)
    still cannot share it with another server of this process. Under ``make test``'s
    two processes (pytest-xdist) the other process is kept off it by TIME_WAIT alone:
    every server the tests start binds within seconds of its reservation."""
    for _ in range(200):
        port = _park()
        if _claim(port):
            return port
    raise RuntimeError("no free loopback port")


def free_port_pair(offset: int) -> int:
    """A reserved port p such that p + offset is reserved too (and below 65536): for a
    Redis Cluster node, whose cluster bus listens on port + 10000."""
    for _ in range(200):
        port = _park()
        if port + offset > 65535:
            continue
        try:
            _park(port + offset)
        except OSError:  # someone listens there, or holds it as a client port
            continue
        if _claim(port, port + offset):
            return port
    raise RuntimeError(f"no free loopback port pair {offset} apart")


def with_parent_death_signal(command: list[str]) -> list[str]:
    """``command`` run so that it gets SIGTERM when the thread that started it dies (the
    test process, however it dies), so an aborted test run leaves no server behind.

    util-linux's ``setpriv --pdeathsig`` sets the signal and execs the command. (A
    ``preexec_fn`` doing the same prctl runs Python in the forked child, and a child forked
    while gRPC threads run in the test process can abort in gRPC's fork handlers before
    it reaches exec: seen as ``exited with -6 ... epoll_wait error: Bad file descriptor``.)"""
    return [SETPRIV, "--pdeathsig", "TERM", "--", *command]


SETPRIV = shutil.which("setpriv") or "/usr/bin/setpriv"


def wait_until(predicate: Callable[[], object], timeout: float, what: str, interval: float = 0.05) -> None:
    """Poll ``predicate`` until it is true; an exception it raises ends the wait."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")


class ManagedProcess:
    """A server process a test starts, waits for and stops.

    ``start`` runs ``command()`` with its output in ``log_path`` (or nowhere), and
    returns once ``answers()`` (one real request) is true; a process that exits first
    fails the start with its exit code and the end of its log, and one that never
    answers is killed before the failure propagates, so no half-started server outlives
    its test. ``stop`` sends a signal (SIGTERM), waits ``stop_timeout`` and then kills.
    The child dies with the test process (``with_parent_death_signal``) however that ends."""

    start_timeout = 20.0
    stop_timeout = 10.0
    poll_interval = 0.05
    cwd: Path | None = None
    env: dict[str, str] | None = None  # None: the test process's environment

    def __init__(self, name: str, log_path: Path | None = None) -> None:
        self.name = name  # how errors name it
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    # -- what a subclass says -------------------------------------------------------

    def command(self) -> list[str]:
        raise NotImplementedError

    def answers(self) -> bool:
        """True once the process serves a real request (it is known to be running)."""
        raise NotImplementedError

    # -- lifecycle ------------------------------------------------------------------

    def start(self, timeout: float | None = None) -> Self:
        if self.running:
            raise RuntimeError(f"{self.name} is already running")
        self._close_log()
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed by stop()
        self.proc = subprocess.Popen(
            with_parent_death_signal(self.command()),
            cwd=self.cwd,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=self._log if self._log is not None else subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_until(
                self.ready, self.start_timeout if timeout is None else timeout, f"{self.name} to answer",
                self.poll_interval,
            )  # fmt: skip
        except BaseException:
            self.kill()
            raise
        return self

    def ready(self) -> bool:
        """The readiness predicate: raises once the process has exited."""
        self.check_alive()
        return self.answers()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def check_alive(self) -> None:
        assert self.proc is not None, f"{self.name} was never started"
        if self.proc.poll() is not None:
            tail = self.read_log()[-2000:]
            raise RuntimeError(
                f"{self.name} exited with {self.proc.returncode}" + (f"; log: {tail}" if tail else "")
            )

    def stop(self, sig: int = signal.SIGTERM, timeout: float | None = None) -> int | None:
        """Signal the process, wait up to ``timeout`` (``stop_timeout``), then kill it.
        Returns its exit code (None if it was never started); stopping twice is harmless."""
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(sig)
            # A paused process (SIGSTOP) acts on the signal only once continued.
            proc.send_signal(signal.SIGCONT)
            try:
                proc.wait(self.stop_timeout if timeout is None else timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._close_log()
        return proc.returncode

    def kill(self) -> int | None:
        return self.stop(signal.SIGKILL)

    def restart(self) -> Self:
        """A new process with the same command (same ports, same files)."""
        self.stop()
        return self.start()

    def pause(self, timeout: float = 10.0) -> None:
        """Freeze the process (SIGSTOP): its connections stay open, nothing answers.

        Returns once every thread of it has stopped. Sending the signal does not stop a
        process at once: one thread (for a signal sent to the process, its main thread)
        is woken to act on it and stops the others, which serve on until then. Tansu's
        main thread only sleeps while worker threads serve its connections: on this
        2-core machine with two CPU burners, a metadata request sent as soon as the signal
        was sent was answered 23 times in 100, and the lineage test of an undeliverable
        dead letter, which produces it right after a pause, saw it delivered in 3 runs of
        13 and timed out waiting for its delivery to fail. Waiting for the stop took
        11.3 ms at most in 100 pauses there: polled every 1 ms, and ``timeout`` (10 s,
        about 900 times that) is only a hang guard."""
        self.check_alive()  # (one that exited: its exit code and log, not waitid's ECHILD)
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)
        wait_until(self._stopped, timeout, f"{self.name} to stop (SIGSTOP)", interval=0.001)

    def _stopped(self) -> bool:
        """The kernel reports the process stopped (its last thread stopped; CLD_STOPPED),
        left waitable (WNOWAIT: Popen still reaps it). One that exited instead raises."""
        assert self.proc is not None
        flags = os.WSTOPPED | os.WEXITED | os.WNOHANG | os.WNOWAIT
        try:
            info = os.waitid(os.P_PID, self.proc.pid, flags)
        except ChildProcessError:  # reaped already (Popen polls as it signals): it exited
            self.check_alive()
            raise
        if info is None:
            return False
        if info.si_code != os.CLD_STOPPED:
            self.check_alive()  # exited or killed: raises with its exit code and log
        return True

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def read_log(self) -> str:
        if self._log is not None:
            self._log.flush()
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None


class Paused:
    """``process.pause()`` for a ``with`` block: resumed at ``thaw()`` or at the block's
    end, whatever happens (a graph server frozen under a test's reads and writes)."""

    def __init__(self, process: ManagedProcess) -> None:
        self.process = process
        self.paused = False

    def __enter__(self) -> Paused:
        self.process.pause()
        self.paused = True
        return self

    def thaw(self) -> None:
        if self.paused:
            self.process.resume()
            self.paused = False

    def __exit__(self, *_: object) -> None:
        self.thaw()
