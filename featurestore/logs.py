"""Log lines that repeat during an outage, rate-limited: the first occurrence of each kind
is logged at once, the rest are counted and summed up in one line per interval.

A store outage fails every request's reads; logging each failure wrote two WARNING lines
per request (about 320 lines/s at a modest load), burying everything else. Metrics stay
exact: they are counted where they are, not here.

Summaries are written by the next occurrence once the interval has passed, or by
``flush()`` (the runtime's ``log-summaries`` task calls it every second) once an outage
has gone quiet, and by ``flush(force=True)`` when the server stops, so the count of the
last interval is never lost. After a summary the kind starts afresh: its next occurrence
is logged at once.

``RepeatLimitedRecords`` does the same for every record of a library's logger, as its
filter: librdkafka's lines (lineage/kafka.py hands its clients ``RDKAFKA_LOGGER``) come
6-20 a second per client while a broker is down.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import threading
import time
import weakref
from collections.abc import AsyncIterator, Callable, Hashable
from dataclasses import dataclass
from typing import Protocol

# 10 s: at the fault run's ~160 failed requests/s, ~3,200 lines become one per kind,
# and an operator tailing the log still sees within seconds that it goes on.
DEFAULT_INTERVAL_SECONDS = 10.0
# Kinds are (store, view, error type)-sized: this only bounds a pathological caller.
_MAX_KINDS = 4096


class _Flushable(Protocol):
    def flush(self, *, force: bool = False) -> None: ...


_limiters: weakref.WeakSet[_Flushable] = weakref.WeakSet()


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


def _summary(msg: str, n: int, seconds: float) -> str:
    return f"{msg} [{n} occurrences in the {seconds:.0f} s since the last such line]"


@dataclass(slots=True)
class _Seen:
    since: float  # when its last record went through
    suppressed: int  # records dropped since
    last: logging.LogRecord  # the latest, for the summary


class RepeatLimitedRecords(logging.Filter):
    """A logger's filter that rate-limits its records as ``RepeatLimitedLog`` does, a
    record's kind being its level and its message with the digits left out (a broker's
    port, "after 3ms"). Thread-safe: a library logs from its own threads. A summary is
    the kind's latest record with the count appended to its message, and the count in
    its ``occurrences`` attribute (a field of its own in JSON logs)."""

    def __init__(
        self,
        logger: logging.Logger,
        interval: float = DEFAULT_INTERVAL_SECONDS,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self._logger = logger
        self.interval = interval
        self._clock = clock
        self._lock = threading.Lock()
        self._kinds: dict[Hashable, _Seen] = {}
        _limiters.add(self)

    def filter(self, record: logging.LogRecord) -> bool:
        if hasattr(record, "occurrences"):  # a summary (written by flush)
            return True
        kind = (record.levelno, _DIGITS.sub("", record.getMessage()))
        if len(self._kinds) >= _MAX_KINDS:
            self.flush(force=True)
        now = self._clock()
        with self._lock:
            seen = self._kinds.get(kind)
            if seen is None:
                self._kinds[kind] = _Seen(now, 0, record)
                return True
            if now - seen.since < self.interval:
                seen.suppressed += 1
                seen.last = record
                return False
            n, since = seen.suppressed, seen.since
            seen.since, seen.suppressed, seen.last = now, 0, record
        if n:
            record.msg, record.args = _summary(record.getMessage(), n + 1, now - since), None
            record.__dict__["occurrences"] = n + 1
        return True

    def flush(self, *, force: bool = False) -> None:
        """Write the summary of every kind whose interval has passed (every kind, with
        ``force``) and forget it."""
        now = self._clock()
        with self._lock:
            due = [
                (kind, seen)
                for kind, seen in self._kinds.items()
                if force or now - seen.since >= self.interval
            ]
            for kind, _ in due:
                del self._kinds[kind]
        for _, seen in due:
            if seen.suppressed:
                last = seen.last
                message = _summary(last.getMessage(), seen.suppressed, now - seen.since)
                summary = self._logger.makeRecord(
                    last.name, last.levelno, last.pathname, last.lineno, message, (), None,
                    extra={"occurrences": seen.suppressed},
                )  # fmt: skip
                self._logger.handle(summary)


_DIGITS = re.compile(r"\d+")


def limit_repeats(name: str) -> RepeatLimitedRecords:
    """The logger ``name``'s records rate-limited (``RepeatLimitedRecords``); once per
    logger, however often it is called."""
    logger = logging.getLogger(name)
    for f in logger.filters:
        if isinstance(f, RepeatLimitedRecords):
            return f
    limiter = RepeatLimitedRecords(logger)
    logger.addFilter(limiter)
    return limiter


def flush(*, force: bool = False) -> None:
    """Flush every rate-limited log of the process (see ``RepeatLimitedLog.flush``); with
    ``force``, every kind's count so far (a process that stops)."""
    for limiter in list(_limiters):
        limiter.flush(force=force)


def flush_records(*, force: bool = False) -> None:
    """``flush`` of the record limiters only (``limit_repeats``: librdkafka's lines), which
    lock: callable from any thread, beside threads that log through ``RepeatLimitedLog``."""
    for limiter in list(_limiters):
        if isinstance(limiter, RepeatLimitedRecords):
            limiter.flush(force=force)


@contextlib.asynccontextmanager
async def flushing(*, records_only: bool = False) -> AsyncIterator[None]:
    """``flush_periodically`` for the life of the block, then every count so far."""
    flusher = asyncio.create_task(flush_periodically(records_only=records_only))
    try:
        yield
    finally:
        flusher.cancel()
        await asyncio.gather(flusher, return_exceptions=True)


async def flush_periodically(*, records_only: bool = False) -> None:
    """Flush every second until cancelled, then every count so far: what ``serve`` does
    (runtime.py) for a command that runs until stopped (``stream run``, ``lineage
    consume``: the count of an outage's last seconds was never written, review s55).
    ``records_only``: other threads log through ``RepeatLimitedLog`` (``flush_records``)."""
    each = flush_records if records_only else flush
    try:
        while True:
            await asyncio.sleep(1.0)
            each()
    finally:
        each(force=True)
