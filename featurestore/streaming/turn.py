"""One turn of a stream processor: a consumed batch, decoded, judged and aggregated.

Each message is at most one of: a ``duplicate`` (at or below its partition's mark:
applied already), ``filtered``, malformed (dead-lettered: ``decode.py``, including an
event more than ``CLOCK_SKEW_US`` + the view's longest window ahead of the processor's
clock), ``late`` or ``applied`` (its partials added to the batch's records). Late
events: per partition, the watermark is the newest event time applied; an event older
than the watermark minus the view's allowed lateness is dropped and counted. The
watermark is stored with the offset, so a restart judges lateness as before (which
events may move it is decided with the partition's recent event times too, stored with
them: below).
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Mapping
from typing import Any

from featurestore.logs import RepeatLimitedLog
from featurestore.streaming.decode import EventDecoder, Malformed
from featurestore.streaming.store import CLOCK_SKEW_US, NO_MARK, PartitionMark
from featurestore.streaming.tiles import TileAccumulator

# An event moves its partition's watermark only when it is at most CLOCK_SKEW_US (60 s of
# ordinary skew between hosts) ahead of its message's Kafka timestamp (when it was
# produced, by the producer's or the broker's clock), or of the processor's clock when
# that is earlier or the message has none (-1). An event from further ahead (a producer's
# clock or time zone off by hours) is still applied, in its tile, but leaves the watermark
# where it is: otherwise every correctly timed event after it would be dropped as late
# until the clock caught up. The message's time, not just the processor's clock: a
# processor catching up a backlog (after a restart, a Redis outage) reads messages older
# than its clock, and a cap at its clock let one such event drop the backlog behind it
# as late (review s55: 89 of 120 events of a 2-minute backlog, at 30 s of lateness).
# That cap cannot see a producer that sets the Kafka timestamp to the event time (Kafka
# Streams, Flink, Connect): a wrong time comes with the same wrong Kafka timestamp. So an
# event moving the watermark by more than CLOCK_SKEW_US at once must also be within reach
# of the partition's recent applied event times (the last RECENT_EVENTS before it, of those
# at most CLOCK_SKEW_US older than the watermark: one far out of order, within a long
# lateness, stretched the pace, review s56): at
# most CLOCK_SKEW_US past their lower median, plus 4x what the events above it take at
# the pace of those below it (``_reach``). That pace is the stream's own: a partition
# whose events come minutes apart moves its watermark with nearly every event (review
# s56: a fixed 60 s past the median froze it for good; 4x, not 2x: with Poisson gaps
# 0.6-0.8% of events wait for the next one, not 7-10%), while in a catch-up of events
# seconds apart one event, or up to 7 in a row, more than a few minutes ahead of their
# neighbours cannot carry it. A real jump (a producer back after a pause) moves it at
# the 9th event of the new time; until then lateness is judged more leniently, never
# more strictly. The times are part of the mark a turn leaves (``PartitionMark.recent``,
# stored with the offset and watermark), and a turn goes on with the ones in memory only
# from the mark the previous turn left: a restart, a batch re-read after a refused write,
# or a partition another processor wrote goes on with the times stored with its mark, so
# a partition whose events come minutes apart judges lateness after a restart as before
# it (review s58: seeded from the watermark alone, it moved again only at its 9th event).
# A mark stored without them (before 2026-12-07) starts them from its watermark, counted
# as 7 times (so the check holds from the first event); a partition without a mark has
# none, and its first events set the watermark. Keeping them costs ~50-70 ns an
# event (the batch step of 10,000 events, 2.2 -> 2.3 µs an event, a scratch A/B on a
# loaded VM); the check (a sort of 15) runs only for an event more than 60 s past the
# watermark.
RECENT_EVENTS = 15
_SEEDED = RECENT_EVENTS // 2  # the stored watermark's weight in a new window


class Turn:
    """What one batch did, per partition and in total."""

    def __init__(self) -> None:
        # partition -> [expected offset, last offset, watermark, its recent event times]
        self.work: dict[int, list[Any]] = {}
        # partition -> (expected offset, the mark the batch leaves, its recent times included)
        self.marks: dict[int, tuple[int, PartitionMark]] = {}
        self.dead: list[tuple[Any, str]] = []
        self.counts = {
            "consumed": 0,
            "applied": 0,
            "late": 0,
            "dead_lettered": 0,
            "filtered": 0,
            "duplicate": 0,
        }
        self.first_ms = 0  # Kafka timestamps: the first and last message consumed
        self.last_ms = 0
        self.oldest_ms = 0  # and the oldest and newest of the events applied (0: none)
        self.newest_ms = 0


class Aggregator:
    """A processor's batch step (its consume thread only)."""

    def __init__(self, view: str, decoder: EventDecoder, lateness_us: int, errors: RepeatLimitedLog) -> None:
        self.view = view
        self.decoder = decoder
        self.lateness_us = lateness_us
        self.errors = errors
        # partition -> (the mark a turn left it at, the recent applied event times before it)
        self._recent: dict[int, tuple[PartitionMark, deque[int]]] = {}

    def _recent_times(self, partition: int, mark: PartitionMark) -> deque[int]:
        """The partition's recent event times if ``mark`` is the one the last turn left
        (its batch goes on from there); else those stored with the mark, or, for a mark
        stored without them, a new window of its watermark, 7 times (none without a mark)."""
        kept = self._recent.get(partition)
        if kept is not None and kept[0] == mark:
            return kept[1]
        times: deque[int] = deque(mark.recent, maxlen=RECENT_EVENTS)
        if not times and mark.watermark_us != NO_MARK.watermark_us:
            times.extend([mark.watermark_us] * _SEEDED)
        return times

    def __call__(self, messages: list[Any], acc: TileAccumulator, marks: Mapping[int, PartitionMark]) -> Turn:
        """``marks``: the assigned partitions' marks the batch is built on."""
        turn = Turn()
        counts = turn.counts
        decode, lateness, add = self.decoder.decode, self.lateness_us, acc.add_event
        now_us = time.time_ns() // 1000
        now_ms, too_far = now_us // 1000, now_us + self.decoder.ahead_us  # too_far: malformed
        oldest = newest = 0  # Kafka timestamps of the applied events (Turn's)
        for m in messages:
            if m.error() is not None:  # e.g. the broker is unreachable: one line per kind, then counts
                self.errors.log(m.error().code(), "stream view %s: consumer error %s", self.view, m.error())
                continue
            counts["consumed"] += 1
            partition, offset = m.partition(), m.offset()
            state = turn.work.get(partition)
            if state is None:
                mark = marks.get(partition)
                if mark is None:  # revoked meanwhile: its next owner reads it
                    continue
                times = self._recent_times(partition, mark)
                state = turn.work[partition] = [mark.offset, mark.offset, mark.watermark_us, times]
            if offset <= state[1]:
                counts["duplicate"] += 1
                continue
            state[1] = offset
            ts_ms = m.timestamp()[1]
            turn.first_ms = turn.first_ms or ts_ms
            turn.last_ms = ts_ms
            try:  # one event can never abort the batch (it would be redelivered to every restart)
                event = decode(m.value(), too_far)
                if event is None:
                    counts["filtered"] += 1
                elif isinstance(event, Malformed):
                    turn.dead.append((m, event.reason))
                elif event.ts_us < state[2] - lateness:
                    counts["late"] += 1
                else:
                    ts_us = event.ts_us
                    add(event.key, ts_us, event.values)
                    times = state[3]
                    # it moves the watermark within the skew of its message's time and within
                    # its neighbours' reach (above)
                    if ts_us > state[2]:
                        sent_ms = ts_ms if 0 < ts_ms < now_ms else now_ms
                        if ts_us <= sent_ms * 1000 + CLOCK_SKEW_US and (
                            ts_us <= state[2] + CLOCK_SKEW_US or ts_us <= _reach(times)
                        ):
                            state[2] = ts_us
                    if ts_us >= state[2] - CLOCK_SKEW_US:  # (one far out of order would stretch the pace)
                        times.append(ts_us)
                    counts["applied"] += 1
                    if ts_ms > newest:
                        newest = ts_ms
                    if ts_ms < oldest or not oldest:
                        oldest = ts_ms
            except Exception as e:  # a bug, not the event's fault: dead-lettered with the error
                self.errors.log(
                    type(e).__name__, "stream view %s: event at offset %s: %r", self.view, offset, e
                )
                turn.dead.append((m, f"could not be processed: {e!r}"))
        turn.oldest_ms, turn.newest_ms = oldest, newest
        for partition, (expected, last, watermark_us, times) in turn.work.items():
            mark = PartitionMark(last, watermark_us, tuple(times))
            turn.marks[partition] = (expected, mark)
            self._recent[partition] = (mark, times)
        return turn


def _reach(times: deque[int]) -> float:
    """How far past its recent times an event may move the watermark: CLOCK_SKEW_US past
    their lower median, plus 4x the time the events above the median would take at the
    pace of those below it (the lower half's spread: an outlier ahead does not widen it,
    and an event far out of order is not a recent time). Unbounded with fewer than three
    recent times."""
    if not times:
        return math.inf
    ordered = sorted(times)
    i = (len(ordered) - 1) // 2
    median = ordered[i]
    if i == 0:  # one or two times (a partition's first events, no mark stored): no pace to judge by
        return math.inf
    return median + CLOCK_SKEW_US + 4 * (median - ordered[0]) * (len(ordered) - i) / i
