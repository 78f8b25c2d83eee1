"""One kernel build at a time per cache directory: ``flock`` on ``CACHE_DIR/.build.lock``.

Workers of one server (and a CLI ``apply`` next to them) swap to the same snapshot at
the same moment; without the lock each found the kernels unbuilt and started its own
build process for them. ``compiler`` takes the lock only when something is not built,
and checks again once it holds it: the kernels another process built meanwhile are not
built twice. The lock is polled (``LOCK_NB``), so waiting never blocks the event loop
and a cancelled swap stops waiting; it is released when the file is closed, or when its
holder dies. A holder's build process is stopped after ``wait`` seconds, so a waiter
that waited that long builds without the lock (a warning). A cache directory where the
lock file cannot be created (read-only) or that cannot lock (some network file
systems) builds without it, as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

log = logging.getLogger(__name__)

LOCK_NAME = ".build.lock"
POLL_SECONDS = 0.05


@contextlib.asynccontextmanager
async def held(cache_dir: Path, wait: float) -> AsyncIterator[None]:
    fd = _open(cache_dir)
    try:
        for _ in _attempts(fd, cache_dir, wait):
            await asyncio.sleep(POLL_SECONDS)
        yield
    finally:
        if fd is not None:
            os.close(fd)


@contextlib.contextmanager
def held_sync(cache_dir: Path, wait: float) -> Iterator[None]:
    fd = _open(cache_dir)
    try:
        for _ in _attempts(fd, cache_dir, wait):
            time.sleep(POLL_SECONDS)
        yield
    finally:
        if fd is not None:
            os.close(fd)


def _attempts(fd: int | None, cache_dir: Path, wait: float) -> Iterator[None]:
    """Yields each time the caller should wait a poll before trying the lock again; ends
    once it is held, or given up on after ``wait`` seconds (or without a lock file)."""
    deadline = time.monotonic() + wait
    while fd is not None and not _try_lock(fd):
        if time.monotonic() > deadline:
            _waited_too_long(cache_dir, wait)
            return
        yield


def _open(cache_dir: Path) -> int | None:
    try:
        return os.open(cache_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError:
        return None


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError as e:  # ENOLCK and the like: no locking here
        log.debug("flock on the derived cache's build lock failed (%s): building without it", e)
    return True


def _waited_too_long(cache_dir: Path, wait: float) -> None:
    log.warning(
        "waited %g s for another process's kernel build in %s: building without the lock", wait, cache_dir
    )
