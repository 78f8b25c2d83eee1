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
