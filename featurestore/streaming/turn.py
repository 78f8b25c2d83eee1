"""One turn of a stream processor: a consumed batch, decoded, judged and aggregated.

Each message is at most one of: a ``duplicate`` (at or below its partition's mark:
applied already), ``filtered``, malformed (dead-lettered: ``decode.py``, including an
event more than ``CLOCK_SKEW_US`` + the view's longest window ahead of the processor's
clock), ``late`` or ``applied`` (its partials added to the batch's records). Late
events: per partition, the watermark is the newest event time applied; an event older
than the watermark minus the view's allowed lateness is dropped and counted. The
watermark is stored with the offset, so a restart judges lateness as before (which
events may move it is decided with the partition's recent event times too, which a
restart starts again from the stored watermark: below).
"""

from __future__ import annotations

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
# event also moves the watermark by more than CLOCK_SKEW_US at once only when it is within
# CLOCK_SKEW_US of the lower median of the partition's last RECENT_EVENTS applied event
# times (itself included): one event, or up to 7 of 15, far ahead of their neighbours
# cannot carry the watermark, and a real jump (a producer back after a pause) moves it
# once 8 events of the new time have come. Until then the watermark stays behind, which
# only makes lateness more lenient. Recent times live in the process: a restart, or a
# partition whose stored watermark moved under another processor, starts them again
# from the stored watermark. Keeping them costs ~50-70 ns an event (the batch step of
# 10,000 events, 2.2 -> 2.3 µs an event, a scratch A/B on a loaded VM).
RECENT_EVENTS = 15


class Turn:
    """What one batch did, per partition and in total."""

    def __init__(self) -> None:
        # partition -> [expected offset, last offset, watermark, its recent event times]
        self.work: dict[int, list[Any]] = {}
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
        # partition -> (the watermark a turn left it at, its recent applied event times)
        self._recent: dict[int, tuple[int, deque[int]]] = {}

    def _recent_times(self, partition: int, mark: PartitionMark) -> deque[int]:
        """The partition's recent event times, if the watermark is still the one they led
        to; else a new window holding the stored watermark (nothing for a new partition)."""
        kept = self._recent.get(partition)
        if kept is not None and kept[0] == mark.watermark_us:
            return kept[1]
        times: deque[int] = deque(maxlen=RECENT_EVENTS)
        if mark.watermark_us != NO_MARK.watermark_us:
            times.append(mark.watermark_us)
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
                    times.append(ts_us)
                    if ts_us > state[2]:  # within the skew of its message's time and its neighbours' (above)
                        sent_ms = ts_ms if 0 < ts_ms < now_ms else now_ms
                        if ts_us <= sent_ms * 1000 + CLOCK_SKEW_US and (
                            ts_us <= state[2] + CLOCK_SKEW_US or ts_us <= _lower_median(times) + CLOCK_SKEW_US
                        ):
                            state[2] = ts_us
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
        for partition, (_, _, watermark_us, times) in turn.work.items():
            self._recent[partition] = (watermark_us, times)
        return turn


def _lower_median(times: deque[int]) -> int:
    """The lower median: with as many times above as below it, the older one (so two
    times, one far ahead, give the other)."""
    return sorted(times)[(len(times) - 1) // 2]
