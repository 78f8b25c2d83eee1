"""Log lines that repeat during an outage, rate-limited: the first occurrence of each kind
is logged at once, the rest are counted and summed up in one line per interval.

A store outage fails every request's reads; logging each failure wrote two WARNING lines
per request (about 320 lines/s at a modest load), burying everything else. Metrics stay
exact: they are counted where they are, not here.

Summaries are written by the next occurrence once the interval has passed, or by
``flush()`` (the runtime's ``log-summaries`` task calls it every second) once an outage
has gone quiet, so the count of the last interval is never lost. After a summary the
kind starts afresh: its next occurrence is logged at once.
"""

from __future__ import annotations

import logging
import time
import weakref
from collections.abc import Callable, Hashable
from dataclasses import dataclass

# 10 s: at the fault run's ~160 failed requests/s, ~3,200 lines become one per kind,
# and an operator tailing the log still sees within seconds that it goes on.
DEFAULT_INTERVAL_SECONDS = 10.0
# Kinds are (store, view, error type)-sized: this only bounds a pathological caller.
_MAX_KINDS = 4096

_limiters: weakref.WeakSet[RepeatLimitedLog] = weakref.WeakSet()


@dataclass(slots=True)
class _Kind:
    since: float  # when its last line was written
    suppressed: int  # occurrences not logged since
    msg: str  # the latest occurrence, for the summary
    args: tuple[object, ...]


class RepeatLimitedLog:
    """Rate-limits one logger's repeated lines by a caller-chosen kind (a hashable key,
    e.g. ``(store, view, error type)``). Event-loop use only: not thread-safe."""

    def __init__(
        self,
        logger: logging.Logger,
        interval: float = DEFAULT_INTERVAL_SECONDS,
        *,
        level: int = logging.WARNING,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logger = logger
        self.interval = interval
        self._level = level
        self._clock = clock
        self._kinds: dict[Hashable, _Kind] = {}
        _limiters.add(self)

    def log(self, kind: Hashable, msg: str, *args: object) -> None:
        now = self._clock()
        k = self._kinds.get(kind)
        if k is None:
            if len(self._kinds) >= _MAX_KINDS:
                self.flush(force=True)
            self._kinds[kind] = _Kind(now, 0, msg, args)
            self._logger.log(self._level, msg, *args)
        elif now - k.since < self.interval:
            k.suppressed += 1
            k.msg, k.args = msg, args
        else:
            self._summarize(k, now, including_this=True, msg=msg, args=args)
            k.since, k.suppressed = now, 0

    def flush(self, *, force: bool = False) -> None:
        """Write the summary of every kind whose interval has passed (every kind, with
        ``force``) and forget it, so its next occurrence is logged at once."""
        now = self._clock()
        for kind, k in list(self._kinds.items()):
            if force or now - k.since >= self.interval:
                if k.suppressed:
                    self._summarize(k, now, including_this=False, msg=k.msg, args=k.args)
                del self._kinds[kind]

    def _summarize(
        self, k: _Kind, now: float, *, including_this: bool, msg: str, args: tuple[object, ...]
    ) -> None:
        if k.suppressed == 0:
            self._logger.log(self._level, msg, *args)
            return
        n = k.suppressed + (1 if including_this else 0)
        self._logger.log(
            self._level,
            msg + " [%d occurrences in the %.0f s since the last such line]",
            *args,
            n,
            now - k.since,
        )


def flush() -> None:
    """Flush every rate-limited log of the process (see ``RepeatLimitedLog.flush``)."""
    for limiter in list(_limiters):
        limiter.flush()
