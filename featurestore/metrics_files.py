"""The workers' shared metrics directory (``PROMETHEUS_MULTIPROC_DIR``) as the supervisor
keeps it: a dead worker's counters, histograms and max/min gauges merged into one
archive file per metric type, and the supervisor's own counter of worker restarts.

prometheus_client's multiprocess mode keeps one file per process and metric type
(``counter_<pid>.db``, ``histogram_<pid>.db``, ...) and every scrape reads them all.
``mark_process_dead`` only drops a dead process's live gauges: its counters and
histograms must stay (a counter that lost a dead worker's share would go down, which
Prometheus takes for a reset), so each restart left two more files to read on every
scrape for as long as the supervisor ran (85 ms a scrape after ~100 restarts). Here the
supervisor folds them into ``<type>_archive.db`` instead (``archive_dead_worker``): the
totals are the same, and the files stay one per type plus the live workers'.

A scrape must not see the archive with the dead worker's values and its file too (a
double count), or neither (a reset): the swap is done under an exclusive ``flock`` on
``archive.lock`` in the directory, which every scrape takes shared (``reading``) for
its glob and reads. Workers write their own files and never take it.

The merge is idempotent across a failure at any step (an exception the supervisor logs
and survives; the next merge finishes the job). The new archive is written aside
(``<type>_archive.db.merging``); then, under the lock, the dead worker's file is renamed
out of the scrape's ``*.db`` glob (``<type>_<pid>.db.absorbed``) and the new archive
renamed over the old one; then the ``.absorbed`` file is deleted. A failure before the
first rename leaves the dead file where it was, unmerged: scrapes go on reading it (the
totals stay right), but no later merge picks it up (each merges the archive with the
one worker that just died), so it stays one more file per scrape. A failure of the
second rename is rolled back under the same lock (the ``.absorbed`` file renamed back to
``*.db``): the same state, no scrape in between saw the values missing. After the
second, a leftover ``.absorbed`` file that no scrape reads and the next merge deletes
(deleting the dead file last, as before, left it read beside an archive that already held
it: a double count at every scrape, and again at every merge of it). Only a crash of the
supervisor itself between the two renames (or a rollback that fails too) leaves an
``.absorbed`` file beside a complete ``.merging`` one, which the next merge renames into
place (until then the dead worker's values are missing from scrapes, never counted
twice). Why not a record in the archive of the files it
absorbed: every entry of a prometheus_client file is a sample the scrape exports, and a
separate record could not be replaced in the same atomic step as the archive.

The supervisor serves no ``/metrics`` (and its prometheus_client is not in
multiprocess mode: the variable is set for its workers only), so it writes
``featurestore_worker_restarts_total`` as a worker would write a counter, into a file of
its own (``counter_supervisor.db``, ``RestartCounter``): every worker's scrape shows it.

The directory is the supervisor's to remove when it ends; one killed outright (SIGKILL,
the OOM killer) cannot, and in Kubernetes ``/tmp`` is an emptyDir that outlives the
container's restarts. So the directory holds ``supervisor.pid``, the supervisor's pid
under an ``flock`` it holds while it lives (the kernel releases it when the process ends,
however), and a supervisor starting removes the directories of this prefix, its user's,
whose owner's lock is free (``remove_stale``; not by the pid: pid 1 in every container). A directory without
that file (an earlier version's, or one being made: the file is renamed into place
already locked) is never removed.

The merge reads with ``MultiProcessCollector.merge(accumulate=False)`` (public); the
archive and the restart counter are written with ``prometheus_client.mmap_dict``'s
``MmapedDict`` and ``mmap_key``, the module the library writes its own files with (not a
documented API: tests/unit/test_metrics_scrape.py and tests/integration/test_workers.py
fail when it changes).
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from prometheus_client import multiprocess
from prometheus_client.metrics_core import Metric
from prometheus_client.mmap_dict import MmapedDict, mmap_key

log = logging.getLogger("featurestore")

DIR_PREFIX = "featurestore-metrics-"  # in the temp directory ($TMPDIR, else /tmp)
OWNER_NAME = "supervisor.pid"  # the supervisor's pid, locked while it lives (not *.db)
LOCK_NAME = "archive.lock"  # not *.db: the collector's glob does not read it
# What stays after a process dies: counters, histograms, summaries, and the gauges that
# keep a dead process's value (the consistency check's clock, quality/metrics.py)
ARCHIVED_TYPES = ("counter", "histogram", "summary", "gauge_max", "gauge_min")
ARCHIVE_PID = "archive"
STAGED = ".db.merging"  # a new archive being written (not *.db: no scrape reads it)
ABSORBED = ".db.absorbed"  # a dead worker's file the archive holds or is about to hold


RESTARTS = "featurestore_worker_restarts"  # the family; its sample is RESTARTS_total
RESTARTS_HELP = (
    "Worker processes (--workers N) that exited while serving and were restarted by the "
    "supervisor, by cause: signal (killed: the OOM killer's SIGKILL, a crash's SIGSEGV or "
    "SIGABRT) or exit (exited with a code)."
)
CAUSES = ("signal", "exit")


class RestartCounter:
    """``featurestore_worker_restarts_total{cause}`` in ``counter_supervisor.db``; both
    causes start at 0, so the first restart is an increase Prometheus sees. The
    supervisor's loop only (not thread-safe)."""

    def __init__(self, metrics_dir: str) -> None:
        self._values = MmapedDict(os.path.join(metrics_dir, "counter_supervisor.db"))  # type: ignore[no-untyped-call]
        self._keys = {
            cause: mmap_key(RESTARTS, RESTARTS + "_total", ["cause"], [cause], RESTARTS_HELP)
            for cause in CAUSES
        }
        for key in self._keys.values():
            self._values.write_value(key, 0.0, 0.0)  # type: ignore[no-untyped-call]
        self.counts = dict.fromkeys(CAUSES, 0)

    def restarted(self, returncode: int) -> None:
        """A worker exited with ``returncode`` (negative: the signal that killed it)."""
        cause = "signal" if returncode < 0 else "exit"
        self.counts[cause] += 1
        self._values.write_value(self._keys[cause], float(self.counts[cause]), 0.0)  # type: ignore[no-untyped-call]

    def close(self) -> None:
        self._values.close()  # type: ignore[no-untyped-call]


def new_dir(parent: str | None = None) -> tuple[str, int]:
    """A new metrics directory owned by this process, after the stale ones are removed
    (``remove_stale``), and the descriptor that holds its owner's lock: close it once the
    directory is removed."""
    try:
        remove_stale(parent)
    except OSError as e:  # (a temp directory it cannot list: the start goes on)
        log.warning("could not look for stale metrics directories: %s", e)
    path = tempfile.mkdtemp(prefix=DIR_PREFIX, dir=parent)
    staged = os.path.join(path, OWNER_NAME + ".new")
    fd = os.open(staged, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    os.write(fd, b"%d\n" % os.getpid())
    os.rename(staged, os.path.join(path, OWNER_NAME))  # in place already locked: never seen unlocked
    return path, fd


def remove_stale(parent: str | None = None) -> list[str]:
    """Remove the metrics directories (``DIR_PREFIX``, this user's) whose supervisor is
    gone: its ``OWNER_NAME`` lock free (``_owner_gone``). The removed."""
    removed = []
    with os.scandir(parent or tempfile.gettempdir()) as entries:
        for entry in entries:
            if (
                entry.name.startswith(DIR_PREFIX)
                and entry.is_dir(follow_symlinks=False)
                and entry.stat(follow_symlinks=False).st_uid == os.getuid()
                and _owner_gone(entry.path)
            ):
                shutil.rmtree(entry.path, ignore_errors=True)
                removed.append(entry.path)
                log.info("removed %s: the metrics directory of a supervisor no longer running", entry.path)
    return removed


def _owner_gone(path: str) -> bool:
    """Whether the directory's supervisor is gone: its owner file's lock is free. The file
    is renamed into place already locked (``new_dir``) and the lock held until the
    directory is removed, and a lock dies with its process, so a free one is a dead
    owner. Its pid is no proof either way: in a container every supervisor is pid 1 (2
    under an init), alive at the next start (review s55)."""
    try:
        fd = os.open(os.path.join(path, OWNER_NAME), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return False  # no owner file: not one to judge
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:  # BlockingIOError: its supervisor holds it
        return False
    finally:
        os.close(fd)
    return True


@contextmanager
def reading(metrics_dir: str) -> Iterator[None]:
    """Hold the directory's files still for a scrape (shared with other scrapes)."""
    with _locked(metrics_dir, fcntl.LOCK_SH):
        yield


def archive_dead_worker(pid: int, metrics_dir: str) -> None:
    """Drop a dead worker's live gauges and fold its counters, histograms, summaries and
    max/min gauges into the directory's archive files (one per type), removing its own; first finish a
    merge a failure interrupted (module docstring)."""
    multiprocess.mark_process_dead(pid, metrics_dir)  # type: ignore[no-untyped-call]
    for typ in ARCHIVED_TYPES:
        archive = Path(metrics_dir, f"{typ}_{ARCHIVE_PID}.db")
        staged = archive.with_suffix(STAGED)
        _finish_interrupted(typ, archive, staged)
        dead = Path(metrics_dir, f"{typ}_{pid}.db")
        if not dead.exists():
            continue
        staged.unlink(missing_ok=True)  # a partial one of a merge that failed writing it
        sources = [str(f) for f in (archive, dead) if f.exists()]
        _write(staged, multiprocess.MultiProcessCollector.merge(sources, accumulate=False))  # type: ignore[no-untyped-call]
        absorbed = dead.with_suffix(ABSORBED)
        with _locked(metrics_dir, fcntl.LOCK_EX):  # a scrape sees both renames or neither
            os.replace(dead, absorbed)
            try:
                os.replace(staged, archive)
            except BaseException:
                os.replace(absorbed, dead)  # back in the scrape's glob: its values stay counted
                raise
        absorbed.unlink()


def _finish_interrupted(typ: str, archive: Path, staged: Path) -> None:
    """A ``.absorbed`` file of ``typ`` is left by a merge that failed after renaming
    it: if its new archive is still aside (``staged``: complete, since it was written
    before the rename), the archive swap did not happen and is done now; either way the
    archive then holds the file's values, and the file goes."""
    for absorbed in archive.parent.glob(f"{typ}_*{ABSORBED}"):
        if staged.exists():
            with _locked(str(archive.parent), fcntl.LOCK_EX):
                os.replace(staged, archive)
        absorbed.unlink()


def _write(path: Path, merged: Iterable[Metric]) -> None:
    """Merged metric families (per-bucket, not cumulative, histogram counts) as one
    file, in the layout and keys the library's own values use."""
    values = MmapedDict(str(path))  # type: ignore[no-untyped-call]
    try:
        for metric in merged:
            for s in metric.samples:
                key = mmap_key(
                    metric.name, s.name, list(s.labels), list(s.labels.values()), metric.documentation
                )
                values.write_value(key, s.value, 0.0)  # type: ignore[no-untyped-call]
    finally:
        values.close()  # type: ignore[no-untyped-call]


@contextmanager
def _locked(metrics_dir: str, how: int) -> Iterator[None]:
    with open(os.path.join(metrics_dir, LOCK_NAME), "a+b") as f:
        fcntl.flock(f.fileno(), how)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)
