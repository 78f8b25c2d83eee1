"""Several serving processes on one host: a small supervisor.

Each worker is a full ``featurestore serve --workers 1`` process (one event loop, HTTP
and gRPC) binding the same ports with SO_REUSEPORT, so the kernel spreads connections.
The supervisor sets PROMETHEUS_MULTIPROC_DIR first (``/metrics`` aggregates all
workers), restarts a worker that dies (counted in ``featurestore_worker_restarts_total``,
its metrics files folded into the directory's archive: ``metrics_files.py``), forwards
SIGINT/SIGTERM so every worker drains before exit, and removes the directory at the end.

Before any worker starts, each port is bound once without SO_REUSEPORT (``probe_ports``):
one that another process holds (another supervised server too, whose sockets the workers
would otherwise join) stops the start with the error and exit code one process gives.
A worker reports through a pipe (``READY_FD_ENV``) that it serves, or the one error line
that stopped it first. A worker that exits with 2 (``error: CODE: message``: a port in
use, a bad config) before any worker served means the server cannot start: the
supervisor prints that line, stops the others and exits 2, as one process would; so it
does, exiting 1, when a slot's worker dies otherwise ``START_ATTEMPTS`` times before any
served (a crash at start repeats: restarting it for ever helps no one). Once one has
served, a worker that dies is restarted, its error line in the restart's log.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence

from featurestore import metrics_files
from featurestore.errors import FailedPrecondition
from featurestore.listener_config import Listener

log = logging.getLogger("featurestore")

WORKER_ENV = "FEATURESTORE_WORKER"
REUSE_PORT_ENV = "FEATURESTORE_REUSE_PORT"
READY_FD_ENV = "FEATURESTORE_READY_FD"  # a worker's end of its pipe to the supervisor
STARTUP_FAILED = 2  # the CLI's exit code for an operator error (cli.main)


# How long the workers get to stop after the stop signal before they are killed: a
# worker's drain (process.DRAIN_SECONDS, 10 s) plus closing its stores and sinks.
# A second SIGINT/SIGTERM kills them at once. (Kubernetes' grace period, 30 s, is above
# preStop's 5 s plus this.)
STOP_GRACE_SECONDS = 15.0


def supervise(
    workers: int,
    worker_argv: list[str],
    on_ready: Callable[[], None] | None = None,
    ports: Sequence[Listener] = (),
) -> int:
    """Start ``workers`` copies of ``worker_argv`` (``worker_argv_from``'s); restart
    crashes; forward signals. ``on_ready`` runs once, when the first worker serves.
    ``ports``: where the workers will listen (``listener_config.listeners`` of their
    config); one already in use raises, as it would in one process (exit 2)."""
    probe_ports(ports)
    sup = Supervisor(workers, worker_argv, on_ready=on_ready)
    signal.signal(signal.SIGINT, sup.on_signal)
    signal.signal(signal.SIGTERM, sup.on_signal)
    return sup.run()


class Supervisor:
    """The workers of one host, their restarts and their stop. ``run`` is the loop;
    ``on_signal`` is the signal handler that ``supervise`` installs."""

    def __init__(
        self,
        workers: int,
        worker_argv: list[str],
        stop_grace: float = STOP_GRACE_SECONDS,
        on_ready: Callable[[], None] | None = None,
    ) -> None:
        self.workers = workers
        self.on_ready = on_ready
        self.stop_grace = stop_grace
        self.worker_argv = worker_argv
        # (and the stale directories of supervisors killed outright removed: metrics_files.py)
        self.metrics_dir, self._owner = metrics_files.new_dir()
        self.env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": self.metrics_dir}
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self.started: dict[int, float] = {}
        self.backoff: dict[int, float] = {}
        self.restart_at: dict[int, float] = {}
        self.stop_signal: int | None = None
        self.signaled: set[int] = set()  # pids that got stop_signal
        self.kill_at = math.inf  # when workers still alive after the stop signal are killed
        self.killed = False  # some were: the stop was not clean
        # featurestore_worker_restarts_total, in the workers' metrics (from run() on)
        self.restarts: metrics_files.RestartCounter | None = None
        self.pipes: dict[int, tuple[int, bytearray]] = {}  # slot: read end, what came so far
        self.served: set[int] = set()  # slots whose worker served once
        self.failed: int | None = None  # the exit code: the server could not start
        self.failed_starts: dict[int, int] = {}  # slot: deaths before any served, weighed
        self.deaths: dict[int, int] = {}  # and counted

    def spawn(self, slot: int) -> None:
        # The slot names the worker in lineage (stable across restarts) and lets it
        # share the ports with its siblings.
        self._close_pipe(slot)
        r, w = os.pipe()
        fcntl.fcntl(r, fcntl.F_SETFL, fcntl.fcntl(r, fcntl.F_GETFL) | os.O_NONBLOCK)
        self.pipes[slot] = (r, bytearray())
        worker_env = {**self.env, WORKER_ENV: str(slot), REUSE_PORT_ENV: "1", READY_FD_ENV: str(w)}
        try:
            self.procs[slot] = _spawn_dying_with_parent(self.worker_argv, worker_env, w)
        finally:
            os.close(w)
        self.started[slot] = time.monotonic()

    def _read_pipe(self, slot: int) -> bytes:
        """What the slot's worker reported so far: ``ready``, or ``error <line>``."""
        r, got = self.pipes.get(slot, (-1, bytearray()))
        with contextlib.suppress(BlockingIOError, OSError):
            while chunk := os.read(r, 4096):
                got += chunk
        if got.startswith(b"ready") and slot not in self.served:
            self.served.add(slot)
            if len(self.served) == 1 and self.on_ready is not None and self.stop_signal is None:
                self.on_ready()
        return bytes(got)

    def _close_pipe(self, slot: int) -> None:
        if (pipe := self.pipes.pop(slot, None)) is not None:
            os.close(pipe[0])

    def _could_not_start(self, slot: int, pid: int, rc: int, report: bytes) -> None:
        """Exit 2 or too many deaths (``START_ATTEMPTS``) before any worker served: print its
        error line (the first only), stop the rest, exit with its code (a signal's: 1)."""
        line = report.removeprefix(b"error ").decode(errors="replace").strip()
        if line and report.startswith(b"error "):
            print(line, file=sys.stderr, flush=True)
        else:
            starts = self.deaths.get(slot, 1)
            log.error(
                "worker %d exited with %d before it served (start %d of its slot): not starting",
                pid,
                rc,
                starts,
            )
        self.failed = rc if rc > 0 else 1
        self.kill_at = time.monotonic() + self.stop_grace
        self.stop_signal = signal.SIGTERM
        self.restart_at.clear()
        self._forward()

    def on_signal(self, sig: int, _frame: object) -> None:
        """The handler runs between any two bytecodes of the loop, even inside ``spawn``:
        a worker whose Popen has not returned yet is not in ``procs`` to be signalled.
        So the handler signals who it can see and the loop, in ``_forward``, the rest.
        The first signal starts the drain (``stop_grace`` seconds, then the workers still
        alive are killed); a second one kills them at once."""
        if self.stop_signal is None:
            self.kill_at = time.monotonic() + self.stop_grace
        else:
            self.kill_at = -math.inf
        self.stop_signal = sig
        self.restart_at.clear()
        self._forward()

    def _forward(self) -> None:
        sig = self.stop_signal
        if sig is None:
            return
        if time.monotonic() >= self.kill_at:
            self._kill()
            return
        for p in list(self.procs.values()):
            if p.pid not in self.signaled and p.poll() is None:
                self.signaled.add(p.pid)
                p.send_signal(sig)

    def _kill(self) -> None:
        """SIGKILL the workers still alive: a second stop signal, or the drain overran.
        Each worker leads a process group of its own (``start_new_session``): the whole
        group is killed, so a kernel-build child (``derived.compiler``) goes with it. Not
        reaped yet, a worker's pid is still its group's id."""
        alive = [p for p in list(self.procs.values()) if p.poll() is None]
        for p in alive:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
        if alive and not self.killed:
            self.killed = True
            why = (
                "a second stop signal"
                if self.kill_at == -math.inf
                else f"still draining after {self.stop_grace:g} s"
            )
            log.error("killing worker(s) %s: %s", ", ".join(str(p.pid) for p in alive), why)

    def run(self) -> int:
        code = 0
        try:
            self.restarts = metrics_files.RestartCounter(self.metrics_dir)
            for slot in range(self.workers):
                if self.stop_signal is None:
                    self.spawn(slot)
            # Restarts pending after a stop are never started: a signal landing in _reap,
            # between its stop check and the scheduling, would otherwise loop for ever.
            while self.procs or (self.restart_at and self.stop_signal is None):
                self._forward()
                time.sleep(0.2)
                for slot in list(self.pipes):
                    self._read_pipe(slot)
                rc = self._reap(time.monotonic())
                code = code or rc
        finally:  # the workers' metrics files, the archive and its lock, the pipes
            if self.restarts is not None:
                self.restarts.close()
            shutil.rmtree(self.metrics_dir, ignore_errors=True)
            os.close(self._owner)  # (its lock: the directory is gone)
            for slot in list(self.pipes):
                self._close_pipe(slot)
        return self.failed or code or (1 if self.killed else 0)

    def _reap(self, now: float) -> int:
        """Collect exited workers, schedule restarts, start those that are due; the exit
        code to report if the supervisor is stopping."""
        code = 0
        for slot, p in list(self.procs.items()):
            rc = p.poll()
            if rc is None:
                continue
            del self.procs[slot]
            report = self._read_pipe(slot)
            self._archive_metrics(p.pid)
            if self.stop_signal is not None:
                code = code or (rc if rc > 0 else 0)
                continue
            if not self.served:  # (START_ATTEMPTS, ERROR_EXIT_WEIGHT)
                self.deaths[slot] = self.deaths.get(slot, 0) + 1
                weight = ERROR_EXIT_WEIGHT if rc > 0 else 1
                self.failed_starts[slot] = self.failed_starts.get(slot, 0) + weight
                if rc == STARTUP_FAILED or self.failed_starts[slot] >= ERROR_EXIT_WEIGHT * START_ATTEMPTS:
                    # No worker has served yet: a config error or a taken port is the same for
                    # every slot (exit 2 at once), and so is a crash at start (a bug: after
                    # START_ATTEMPTS). Once one serves, a slot failing to start (etcd down for a
                    # moment) is restarted: the server keeps serving.
                    self._could_not_start(slot, p.pid, rc, report)
                    continue
            # A worker that cannot start (bad config, port taken) must not be
            # respawned several times a second forever: back off, and forgive
            # once a worker has lived a while.
            delay = (
                _RESTART_MIN_S
                if now - self.started[slot] > _RESTART_FORGIVE_S
                else self.backoff.get(slot, 0) * 2
            )
            self.backoff[slot] = min(max(delay, _RESTART_MIN_S), _RESTART_MAX_S)
            if self.stop_signal is None:  # (the signal handler may have run since the check above)
                self.restart_at[slot] = now + self.backoff[slot]
            if self.restarts is not None:
                self.restarts.restarted(rc)
            reason = (
                report.removeprefix(b"error ").decode(errors="replace").strip()
                if report.startswith(b"error ")
                else ""
            )
            log.error(
                "worker %d exited with %s%s; restarting in %.1f s",
                p.pid,
                rc,
                f" ({reason})" if reason else "",
                self.backoff[slot],
            )
        for slot, at in list(self.restart_at.items()):
            if at <= now and self.stop_signal is None and self.restart_at.pop(slot, None) is not None:
                self.spawn(slot)
        return code

    def _archive_metrics(self, pid: int) -> None:
        """Fold a dead worker's metrics files into the directory's archive, so a scrape
        reads one file per type for all the dead (metrics_files.py). A failure is
        logged, not fatal: a file whose swap failed (or was rolled back) stays where it was,
        unmerged and still read by scrapes (the totals stay right, scrapes get slower); a
        swap left half done is finished by the next worker's archiving (never counting a
        worker twice)."""
        try:
            metrics_files.archive_dead_worker(pid, self.metrics_dir)
        except Exception:
            log.exception(
                "could not archive the metrics of worker %d; its files not merged stay, read "
                "by scrapes (a swap cut between its renames: the next archiving finishes it)",
                pid,
            )


_RESTART_MIN_S = 0.5
_RESTART_MAX_S = 30.0
_RESTART_FORGIVE_S = 60.0
# Error exits (not 2) of one slot's workers before any served, then the supervisor gives up
# as for exit 2: a crash at start repeats for ever (an OverflowError of a setting: restarted
# with backoff to 30 s, review s55). A death by signal weighs a third: an OOM kill of a
# worker loading its data is no bug (3 stopped a slow healthy start), a segfault at every
# start is (not counted, it was restarted for ever): 9 deaths, ~2 min of backoff.
START_ATTEMPTS, ERROR_EXIT_WEIGHT = 3, 3  # (an error exit weighs 3 deaths by signal)


def _spawn_dying_with_parent(argv: list[str], env: dict[str, str], ready_fd: int) -> subprocess.Popen[bytes]:
    """A worker that gets SIGTERM if the supervisor is killed outright (SIGKILL, OOM), so it
    drains instead of holding the ports as an orphan.

    util-linux's ``setpriv --pdeathsig`` (always on Debian-based images) sets that and
    execs the worker, so no Python runs between fork and exec: the supervisor may have
    gRPC threads left from applying definitions to etcd, and a child forked under them
    can abort in gRPC's fork handlers (seen in tests: exit -6, "epoll_wait error").
    Without setpriv the prctl runs in a ``preexec_fn``, as before.

    Each worker gets a session of its own, so a terminal's Ctrl-C (SIGINT to the whole
    foreground process group) reaches the supervisor alone and the workers only as it
    forwards it: twice would be a worker's second signal, which stops it at once."""
    setpriv = shutil.which("setpriv")
    if setpriv is not None and sys.platform.startswith("linux"):
        return subprocess.Popen(
            [setpriv, "--pdeathsig", "TERM", "--", *argv],
            env=env,
            start_new_session=True,
            pass_fds=(ready_fd,),
        )
    return subprocess.Popen(
        argv, env=env, preexec_fn=_die_with_parent, start_new_session=True, pass_fds=(ready_fd,)
    )


def _die_with_parent() -> None:
    """Runs in the child before exec (the fallback of ``_spawn_dying_with_parent``)."""
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def probe_ports(found: Sequence[Listener]) -> None:
    """Bind each port once, without SO_REUSEPORT, before any worker binds it with: a
    port that another process holds, even another supervised server sharing it with
    SO_REUSEPORT, fails here, where the workers would join that server's sockets and
    take a share of its connections. SO_REUSEADDR is on, so connections of an earlier
    run in TIME_WAIT do not count. The error is the one process's (``process.py``)."""
    for listener in found:
        host = listener.host.strip("[]")
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((host, listener.port))
            except OSError as e:
                raise FailedPrecondition(
                    f"cannot bind {listener.kind} on {listener.host}:{listener.port}: {e.strerror or e}"
                ) from None


def report_ready() -> None:
    """In a supervised worker, once it serves: tell the supervisor (no-op otherwise)."""
    _report(b"ready\n")


def report_failure(line: str) -> bool:
    """In a supervised worker that has not served yet: hand the supervisor the error line
    it exits with (the supervisor prints one worker's, not every worker's). False when
    there is no one to hand it to: the caller prints it."""
    return _report(f"error {line}\n".encode())


def _report(message: bytes) -> bool:
    fd = os.environ.pop(READY_FD_ENV, None)  # once: not to children, not after serving
    if fd is None:
        return False
    try:
        os.write(int(fd), message)
        os.close(int(fd))
    except (OSError, ValueError):
        return False
    return True


def worker_argv_from(argv: list[str]) -> list[str]:
    """The command line of one worker: the same ``serve`` with ``--workers 1``."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a == "--workers":
            skip = True
            continue
        if a.startswith("--workers="):
            continue
        out.append(a)
    return [sys.executable, "-m", "featurestore.cli", *out, "--workers", "1", "--no-apply"]
