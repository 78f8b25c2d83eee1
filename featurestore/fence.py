"""The write fence of a row cache: which reads may fill it, given the writes going on.

A read that overlapped a write of the rows it asked for must not fill the cache: it may
have read a row the write was about to replace, and it would put that row back after
the write had invalidated it, to be served for up to a TTL. So each write raises the
fence over its group before it starts and lowers it when the store's write has truly
ended (``CachedSource.write``), and a read fills only the groups whose fence was neither
raised at any time since it asked the store nor is raised now.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable
from typing import Any


class WriteFence:
    """Per group: the writes in flight, and the stamp of the last one that ended.

    A read takes ``now`` before it asks the store; its rows of a group may be cached
    when ``allows(group, that stamp)``. One dict lookup per group on the read path: a
    group being written is stamped infinitely late, so one comparison covers both
    "being written" and "written since".
    """

    __slots__ = ("_changed", "_writing", "now")

    def __init__(self) -> None:
        self.now = 0  # stamps: bumped as each write of a group ends
        self._writing: dict[Hashable, int] = {}
        self._changed: dict[Hashable, float] = {}

    def raise_(self, group: Hashable) -> None:
        """A write of ``group`` starts: reads fill nothing of it until it has ended."""
        self._writing[group] = self._writing.get(group, 0) + 1
        self._changed[group] = math.inf

    def lower(self, group: Hashable) -> None:
        """A write of ``group`` has ended (its rows are in the store, or never will be)."""
        left = self._writing.pop(group) - 1
        if left:
            self._writing[group] = left
        else:
            self.now += 1
            self._changed[group] = self.now

    def allows(self, group: Hashable, since: int) -> bool:
        """Whether a read that took the stamp ``since`` may cache its rows of ``group``."""
        return self._changed.get(group, 0) <= since

    def writing(self, group: Hashable) -> bool:
        return group in self._writing

    def keep_only(self, keep: Callable[[Any], bool]) -> None:
        """Forget the stamps of groups no longer read (``keep`` false), but for those
        being written: without this the stamps of every data version ever pushed to
        would pile up. A read of a forgotten group still in flight may fill it, with
        rows nobody reads any more."""
        for group in [g for g in self._changed if g not in self._writing and not keep(g)]:
            del self._changed[group]
