"""The parsed snapshots a registry client keeps, bounded.

Parsing and verifying a snapshot takes tens of milliseconds and a parsed one takes 4-5x
its JSON in memory (up to ~7 MB at etcd's request limit). A server reads the same few
versions again at every change (current, each canary's candidate), so those are kept;
without a bound every version it ever read stayed for the life of the process (one per
apply, rollback or canary, in every worker). Kept: the versions the registry last said
are served (``pin``: current, each canary's candidate and base) and at most ``extra``
others, least recently used first out (``registry history`` or a diff reads old ones once).
The file backend reads snapshots in threads: every method holds a lock.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable
from typing import Generic, TypeVar

T = TypeVar("T")

# A few versions beyond those served: the previous current right after an apply (a
# server swapping, a rollback's diff), and an operator's show/diff of recent ones.
EXTRA_SNAPSHOTS = 4


class SnapshotCache(Generic[T]):
    def __init__(self, extra: int = EXTRA_SNAPSHOTS) -> None:
        self._extra = extra
        self._entries: OrderedDict[int, T] = OrderedDict()  # least recently used first
        self._pinned: dict[str, frozenset[int]] = {}  # by role: "current", "canaries"
        self._lock = threading.Lock()

    def get(self, version: int) -> T | None:
        with self._lock:
            entry = self._entries.get(version)
            if entry is not None:
                self._entries.move_to_end(version)
            return entry

    def put(self, version: int, entry: T) -> None:
        with self._lock:
            self._entries[version] = entry
            self._entries.move_to_end(version)
            self._trim()

    def pin(self, role: str, versions: Iterable[int]) -> None:
        """``role``'s versions (what the registry last said is current, or the canaries'
        candidates and bases) are served: keep them; those it named before may go."""
        kept = frozenset(versions)
        with self._lock:
            self._pinned[role] = kept
            self._trim()

    def pop(self, version: int) -> None:
        with self._lock:
            self._entries.pop(version, None)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def versions(self) -> list[int]:
        with self._lock:
            return list(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def _trim(self) -> None:
        pinned = frozenset().union(*self._pinned.values())
        others = [v for v in self._entries if v not in pinned]
        for version in others[: max(0, len(others) - self._extra)]:
            del self._entries[version]
