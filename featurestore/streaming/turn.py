"""One turn of a stream processor: a consumed batch, decoded, judged and aggregated.

Each message is at most one of: a ``duplicate`` (at or below its partition's mark:
applied already), ``filtered``, malformed (dead-lettered: ``decode.py``, including an
event more than ``CLOCK_SKEW_US`` + the view's longest window ahead of the processor's
clock), ``late`` or ``applied`` (its partials added to the batch's records). Late
events: per partition, the watermark is the newest event time applied; an event older
than the watermark minus the view's allowed lateness is dropped and counted. The
watermark is stored with the offset, so a restart decides as before.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from featurestore.logs import RepeatLimitedLog
from featurestore.streaming.decode import EventDecoder, Malformed
from featurestore.streaming.store import CLOCK_SKEW_US, PartitionMark
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
# Its limit (docs/streaming.md, Late events): a producer that sets the Kafka timestamp to
# the event time (Kafka Streams, Flink, Connect) sends a wrong time with the same wrong
# Kafka timestamp, so only the clock caps it and a catch-up can still drop a backlog.


class Turn:
    """What one batch did, per partition and in total."""

    def __init__(self) -> None:
        self.work: dict[int, list[int]] = {}  # partition -> [expected offset, last offset, watermark]
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
                state = turn.work[partition] = [mark.offset, mark.offset, mark.watermark_us]
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
                    add(event.key, event.ts_us, event.values)
                    if event.ts_us > state[2]:  # within the skew of its message's time (above)
                        sent_ms = ts_ms if 0 < ts_ms < now_ms else now_ms
                        if event.ts_us <= sent_ms * 1000 + CLOCK_SKEW_US:
                            state[2] = event.ts_us
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
        return turn
