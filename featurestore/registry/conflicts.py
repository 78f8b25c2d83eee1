"""How a registry write that lost a compare-and-swap says so (``Conflict``, ABORTED):
what it expected, and what it found when that is known."""

from __future__ import annotations

from featurestore.errors import Conflict

_RETRY = "someone else changed it; re-read the registry and retry"


def conflict(what: str, expected: object, actual: object) -> Conflict:
    """A compare-and-swap lost: ``what`` is ``actual``, not ``expected``."""
    return Conflict(
        f"{what} is {actual}, not {expected} as expected: {_RETRY}",
        details=[{"expected": str(expected), "actual": str(actual)}],
    )


def lost_race(what: str, expected: object = None, *, note: str = "") -> Conflict:
    """A compare-and-swap lost between its read and its write: ``what`` was ``expected``
    when read (None: unset), and someone wrote it before the write (etcd's transaction
    compares its mod_revision; what it holds now is not known). ``note``: said instead
    of what it was when read."""
    read = note or f"it was {'unset' if expected is None else expected} when read"
    return Conflict(
        f"{what} was written concurrently ({read}): {_RETRY}",
        details=[{"expected": str(expected), "actual": "written concurrently"}],
    )


def counter_kept_moving(tries: int) -> Conflict:
    """A snapshot's write lost to other writers ``tries`` times in a row, each time
    because only the version counter had moved."""
    return Conflict(
        f"the registry's version counter (registry/next) moved {tries} times while a snapshot "
        "was written: other snapshots are being staged or published at the same time; retry"
    )
