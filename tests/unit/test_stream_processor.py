"""The stream processor's batch step without a broker: what one event can and cannot do
to the batch it arrived in."""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from typing import Any

import pytest
from redis import exceptions as redis_errors

from featurestore.definitions.parser import parse_definitions
from featurestore.model import FeatureView
from featurestore.streaming.decode import MAX_TS_US, Event, Malformed
from featurestore.streaming.eviction import checked as eviction_checked
from featurestore.streaming.processor import ProcessorOptions, StreamProcessor
from featurestore.streaming.retry import needs_new_connection, transient
from featurestore.streaming.store import NO_MARK, Eviction, MemoryTileStore
from featurestore.streaming.tiles import TileAccumulator, view_layout
from lineage.kafka import KafkaSettings


class Message:
    """What the processor reads of a confluent_kafka.Message (which Python cannot build)."""

    def __init__(
        self, offset: int, value: bytes, kafka_ms: int | None = None, headers: list[Any] | None = None
    ) -> None:
        self._offset, self._value, self._ms, self._headers = offset, value, kafka_ms, headers

    def error(self) -> None:
        return None

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return self._offset

    def timestamp(self) -> tuple[int, int]:
        return (1, time.time_ns() // 1_000_000 if self._ms is None else self._ms)

    def value(self) -> bytes:
        return self._value

    def key(self) -> None:
        return None

    def headers(self) -> list[Any] | None:
        return self._headers

    def topic(self) -> str:
        return "clicks"


def view(allowed_lateness: str = "0s") -> FeatureView:
    doc = {
        "project": "p",
        "entities": [{"name": "user_id", "dtype": "int64"}],
        "stream_views": [
            {
                "name": "unit_view",
                "entities": ["user_id"],
                "allowed_lateness": allowed_lateness,
                "source": {"topic": "clicks", "key_fields": ["u"], "timestamp_field": "ts"},
                "aggregations": [{"name": "n", "function": "count", "window": "1h"}],
            }
        ],
    }
    return parse_definitions(doc, source="unit.yaml").views["unit_view"]


@pytest.fixture
def processor() -> Any:
    proc = StreamProcessor(
        view(), MemoryTileStore(), KafkaSettings(bootstrap_servers="unused"), "p", ProcessorOptions()
    )
    proc.marks[0] = NO_MARK
    yield proc
    proc._writer.shutdown()


def event(offset: int) -> Message:
    return Message(offset, json.dumps({"u": 1, "ts": time.time_ns() // 1_000_000}).encode())


def test_an_event_whose_processing_raises_is_dead_lettered_and_the_rest_of_its_batch_applied(
    processor: StreamProcessor,
) -> None:
    decode = processor.decoder.decode

    def flaky(raw: bytes | None, latest_us: int = MAX_TS_US) -> Event | Malformed | None:
        if raw == b"poison":
            raise ValueError("a decoder bug")
        return decode(raw, latest_us)

    processor.decoder.decode = flaky  # type: ignore[method-assign]
    acc = TileAccumulator(view_layout(processor.view), processor.decoder.column_attrs)
    turn = processor._aggregate([event(0), Message(1, b"poison"), event(2)], acc)
    assert turn.counts["applied"] == 2 and turn.work[0][1] == 2
    [(message, reason)] = turn.dead
    assert message.offset() == 1 and reason == "could not be processed: ValueError('a decoder bug')"


def test_an_event_moves_the_watermark_only_within_a_minute_of_its_messages_time_or_the_clock(
    processor: StreamProcessor,
) -> None:
    """The cap is when the message was produced (its Kafka timestamp), not the processor's
    clock, which a backlog is older than; the clock where the message has no timestamp
    (-1) or one ahead of the clock (a producer's clock ahead). An event past the cap is
    applied but leaves the watermark (lateness 0 here: anything older is late)."""
    now_ms = time.time_ns() // 1_000_000
    old = now_ms - 600_000  # a backlog 10 minutes old

    def at(offset: int, ts_ms: int, kafka_ms: int) -> Message:
        return Message(offset, json.dumps({"u": 1, "ts": ts_ms}).encode(), kafka_ms)

    def watermark_after(*messages: Message) -> int:
        processor.marks[0] = NO_MARK
        acc = TileAccumulator(view_layout(processor.view), processor.decoder.column_attrs)
        turn = processor._aggregate(list(messages), acc)
        assert turn.counts["applied"] == len(messages), turn.counts
        return int(turn.work[0][2]) // 1000

    assert watermark_after(
        at(0, old, old), at(1, old + 180_000, old + 1_000), at(2, old + 2_000, old + 2_000)
    ) == (old + 2_000)  # 3 minutes ahead of its message: applied, the next one not late
    assert watermark_after(at(0, old, old), at(1, old + 59_000, old)) == old + 59_000  # within the minute
    assert watermark_after(at(0, old, old), at(1, now_ms + 1_800_000, -1)) == old  # no timestamp: the clock's
    assert (
        watermark_after(
            at(0, old, -1), at(1, now_ms - 3_000, -1), at(2, now_ms - 2_000, -1), at(3, now_ms - 1_000, -1)
        )
        == now_ms - 1_000
    )  # (a jump moves it once its neighbours have come: below)
    assert (
        watermark_after(at(0, old, old), at(1, now_ms + 1_800_000, now_ms + 1_800_000)) == old
    )  # clock ahead


def aggregate(processor: StreamProcessor, *events: tuple[int, int]) -> Any:
    """One turn of events (event time ms, Kafka timestamp ms) at the next offsets."""
    first = processor.marks[0].offset + 1
    messages = [
        Message(first + i, json.dumps({"u": 1, "ts": ts}).encode(), kafka_ms)
        for i, (ts, kafka_ms) in enumerate(events)
    ]
    acc = TileAccumulator(view_layout(processor.view), processor.decoder.column_attrs)
    turn = processor._aggregate(messages, acc)
    processor.marks[0] = turn.marks[0][1]  # as handing the batch to the writer does
    return turn


def test_an_event_stamped_far_ahead_with_its_kafka_timestamp_too_does_not_move_the_watermark(
    processor: StreamProcessor,
) -> None:
    """A producer that sets the Kafka timestamp to the event time (Kafka Streams, Flink)
    sends a wrong time with the same wrong timestamp; a catch-up reads a backlog older than
    the clock. An event 30 minutes ahead of its neighbours still leaves the watermark with
    them (they are its recent times' median), and the next turn's events are not late."""
    now_ms = time.time_ns() // 1_000_000
    old = now_ms - 2_400_000  # a 40-minute backlog
    turn = aggregate(
        processor, *[(old + i * 1_000, old + i * 1_000) for i in range(10)], (old + 1_800_000,) * 2
    )
    assert turn.counts["applied"] == 11 and turn.work[0][2] // 1000 == old + 9_000
    turn = aggregate(processor, *[(old + 10_000 + i * 1_000, old + 10_000 + i * 1_000) for i in range(5)])
    assert (turn.counts["applied"], turn.counts["late"]) == (5, 0)
    assert turn.work[0][2] // 1000 == old + 14_000


def watermark_ms(processor: StreamProcessor) -> int:
    return processor.marks[0].watermark_us // 1000


def test_a_real_jump_moves_the_watermark_once_half_the_recent_events_are_past_it(
    processor: StreamProcessor,
) -> None:
    """A producer back after a 10-minute pause: its events are all ahead of the watermark.
    The watermark stays until the new time is the median of the 15 events before one (8
    of them), then moves with them, also across turns; a restart from a mark stored
    without its recent times (before 2026-12-07) counts the stored watermark as 7 of them,
    so the same holds from its first event (with them: test_stream_restart_pace.py)."""
    now_ms = time.time_ns() // 1_000_000
    old = now_ms - 1_800_000
    aggregate(processor, *[(old + i * 1_000, old + i * 1_000) for i in range(15)])
    assert watermark_ms(processor) == old + 14_000
    new = old + 600_000
    aggregate(processor, *[(new + i * 1_000, new + i * 1_000) for i in range(8)])
    assert watermark_ms(processor) == old + 14_000  # 8 of 15: not yet
    aggregate(processor, (new + 8_000, new + 8_000))
    assert watermark_ms(processor) == new + 8_000  # the 9th: 8 of the 15 before it are new
    processor._aggregator._recent.clear()  # a restart, from a mark stored without its recent times
    processor.marks[0] = processor.marks[0]._replace(recent=())
    later = new + 300_000
    aggregate(processor, *[(later + i * 1_000, later + i * 1_000) for i in range(8)])
    assert watermark_ms(processor) == new + 8_000
    aggregate(processor, (later + 8_000, later + 8_000))
    assert watermark_ms(processor) == later + 8_000


def test_a_partition_whose_events_come_minutes_apart_moves_its_watermark_with_each(
    processor: StreamProcessor,
) -> None:
    """A quiet partition (review s56: with a fixed reach past the median its watermark froze,
    and nothing was late any more): its recent times' spread is its pace, once it has
    three (a new partition's first three are not judged). Poisson-like gaps too."""
    now_ms = time.time_ns() // 1_000_000
    start = now_ms - 10_800_000  # (all in the past: an event ahead of the clock is capped by it)
    for i in range(30):
        ts = start + i * 90_000
        aggregate(processor, (ts, ts))
        assert watermark_ms(processor) == ts
    rnd, ts, held = random.Random(7), watermark_ms(processor), 0
    for _ in range(40):  # gaps of 90 s on average, some of several minutes
        ts += int(rnd.expovariate(1 / 90_000))
        aggregate(processor, (ts, ts))
        held += watermark_ms(processor) != ts
    assert held <= 1  # (an event far past the pace waits for the next one: 0.6-0.8% of 5,000)
    start = watermark_ms(processor) - 29 * 90_000
    turn = aggregate(processor, (start + 29 * 90_000 - 1_200_000, now_ms))  # 20 minutes late
    assert (turn.counts["applied"], turn.counts["late"]) == (0, 1)


def test_outliers_do_not_move_the_watermark_right_after_a_restart_nor_count_twice_when_re_read(
    processor: StreamProcessor,
) -> None:
    """The stored watermark weighs as 7 recent times after a restart; a batch re-read from
    the stored mark (its write refused) starts from it again, not from the times the
    dropped batch added."""
    now_ms = time.time_ns() // 1_000_000
    old = now_ms - 2_400_000
    aggregate(processor, *[(old + i * 1_000, old + i * 1_000) for i in range(15)])
    stored = processor.marks[0]
    processor._aggregator._recent.clear()  # a restart
    ahead = old + 1_800_000
    aggregate(processor, *[(ahead + i, ahead + i) for i in range(7)])
    assert watermark_ms(processor) == old + 14_000  # 7 in a row, half an hour ahead: held
    processor.marks[0] = stored  # the batch's write refused: re-read from the stored mark
    aggregate(processor, *[(ahead + i, ahead + i) for i in range(7)])
    assert watermark_ms(processor) == old + 14_000  # the same 7 again: still 7, not 14


def test_an_event_applied_far_out_of_order_does_not_stretch_the_reach_of_the_next_ones() -> None:
    """Within a long lateness an event minutes out of order is applied, but it is not a
    recent time: as the oldest of them it stretched the pace, and the next event half an
    hour ahead moved the watermark past the backlog (review s56: 599 of 3,600 late)."""
    processor = StreamProcessor(
        view("10m"), MemoryTileStore(), KafkaSettings(bootstrap_servers="unused"), "p", ProcessorOptions()
    )
    processor.marks[0] = NO_MARK
    try:
        old = time.time_ns() // 1_000_000 - 7_200_000
        aggregate(processor, *[(old + i * 2_000, old + i * 2_000) for i in range(30)])
        turn = aggregate(processor, (old - 442_000, old + 60_000))  # 500 s behind the newest
        assert turn.counts["applied"] == 1
        aggregate(processor, (old + 1_860_000, old + 1_860_000))  # half an hour ahead
        assert watermark_ms(processor) == old + 58_000
    finally:
        processor._writer.shutdown()


@pytest.mark.parametrize(
    "error",
    [
        redis_errors.ConnectionError("Connection refused"),
        redis_errors.TimeoutError("Timeout reading from socket"),
        redis_errors.BusyLoadingError("Redis is loading the dataset in memory"),
        redis_errors.ReadOnlyError("You can't write against a read only replica."),
        redis_errors.OutOfMemoryError("command not allowed when used memory > 'maxmemory'."),
        redis_errors.ResponseError(
            "MISCONF Redis is configured to save RDB snapshots, but it's currently unable"
        ),
        redis_errors.ResponseError("BUSY Redis is busy running a script. You can only call SCRIPT KILL"),
        redis_errors.ResponseError(
            "MASTERDOWN Link with MASTER is down and replica-serve-stale-data is set to 'no'."
        ),
    ],
)
def test_a_store_servers_failure_is_waited_out(error: Exception) -> None:
    assert transient(error)


@pytest.mark.parametrize(
    "error",
    [
        redis_errors.ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value"),
        redis_errors.ResponseError("ERR Error running script (call to f_0123): user_script:7: bad argument"),
        redis_errors.DataError("Invalid input of type: 'NoneType'"),
        ValueError("a bug"),
    ],
)
def test_a_failure_of_the_call_itself_stops_the_processor(error: Exception) -> None:
    assert not transient(error)


def test_a_read_only_replica_makes_the_next_attempt_reconnect() -> None:
    assert needs_new_connection(redis_errors.ReadOnlyError("You can't write against a read only replica."))
    assert needs_new_connection(
        redis_errors.ResponseError("READONLY You can't write against a read only replica.")
    )
    assert not needs_new_connection(redis_errors.ResponseError("MISCONF Redis is configured to save"))


class RefusingProducer:
    """Reports the first delivery of each letter with the broker's refusal (0: none), the rest as
    delivered (Tansu takes any size, so the real broker cannot show this one)."""

    def __init__(self, refusal: int) -> None:
        self.refusal = refusal
        self.sent: list[tuple[bytes | None, dict[str, bytes]]] = []
        self.timestamps: list[int] = []
        self._reports: list[Any] = []

    def produce(
        self, topic: str, value: Any, key: Any, headers: Any, on_delivery: Any, timestamp: int = 0
    ) -> None:
        from confluent_kafka import KafkaError

        self.sent.append((value, dict(headers)))
        self.timestamps.append(timestamp)
        refused = KafkaError(self.refusal) if self.refusal and len(self.sent) == 1 else None
        self._reports.append((on_delivery, refused))

    def flush(self, timeout: float) -> int:
        for report, error in self._reports:
            report(error, None)
        self._reports.clear()
        return 0


def test_a_dead_letter_the_broker_refuses_as_too_large_is_sent_again_without_its_value() -> None:
    from confluent_kafka import KafkaError

    from featurestore.streaming.dead_letters import DeadLetters

    producer = RefusingProducer(KafkaError.MSG_SIZE_TOO_LARGE)
    letters = DeadLetters(producer, "clicks.dlq", "unit_view", create_topic=lambda: None)
    assert letters.deliver([(Message(7, b"x" * 1000), "not valid JSON")], threading.Event())
    (first, _), (again, headers) = producer.sent
    assert first == b"x" * 1000 and again is None
    assert headers["featurestore-error"].startswith(b"not valid JSON; message of 1000 bytes left out: ")
    assert headers["featurestore-source"] == b"clicks:0:7"


class HeadersUnsafe(Message):
    """confluent-kafka's Message.headers() is not memory-safe on a header key that is not
    UTF-8 (it raised, or crashed the process): a dead letter must never call it."""

    def headers(self) -> list[Any] | None:
        raise AssertionError("a dead letter read the message's headers")


def test_a_dead_letter_never_reads_the_messages_headers_and_too_large_leaves_out_its_value() -> None:
    from confluent_kafka import KafkaError

    from featurestore.streaming.dead_letters import DeadLetters

    producer = RefusingProducer(KafkaError.MSG_SIZE_TOO_LARGE)
    letters = DeadLetters(producer, "clicks.dlq", "unit_view", create_topic=lambda: None)
    assert letters.deliver([(HeadersUnsafe(7, b"{"), "not valid JSON")], threading.Event())
    (first_value, first), (again_value, again) = producer.sent
    assert first_value == b"{" and again_value is None
    assert list(first)[:3] == ["featurestore-error", "featurestore-view", "featurestore-source"]
    assert again["featurestore-error"].startswith(b"not valid JSON; message of 1 bytes left out: ")


def test_a_dead_letter_is_sent_with_the_time_it_is_sent_and_its_messages_time_in_a_header() -> None:
    """The dead-letter topic's retention counts from its records' timestamps: a letter
    stamped with an old event's time would be deleted minutes after its delivery."""
    from featurestore.streaming.dead_letters import DeadLetters

    producer = RefusingProducer(0)
    letters = DeadLetters(producer, "clicks.dlq", "unit_view", create_topic=lambda: None)
    message = Message(7, b"{", kafka_ms=1_700_000_000_000)
    assert letters.deliver([(message, "not valid JSON")], threading.Event())
    assert producer.timestamps == [0]  # 0: the time it is sent
    assert producer.sent[0][1]["featurestore-original-timestamp"] == b"1700000000000 CreateTime"


def test_a_dead_letter_whose_delivery_failed_otherwise_is_sent_again_as_it_was() -> None:
    from confluent_kafka import KafkaError

    from featurestore.streaming.dead_letters import DeadLetters

    producer = RefusingProducer(KafkaError._MSG_TIMED_OUT)
    letters = DeadLetters(producer, "clicks.dlq", "unit_view", create_topic=lambda: None)
    assert letters.deliver([(Message(7, b"{"), "not valid JSON")], threading.Event())
    assert [value for value, _ in producer.sent] == [b"{", b"{"]


@pytest.mark.parametrize(
    ("eviction", "level", "says"),
    [
        (Eviction("allkeys-lru", 1 << 30), logging.ERROR, "evicts keys (maxmemory-policy allkeys-lru"),
        (Eviction("volatile-ttl", 1 << 30), logging.ERROR, "evicts keys (maxmemory-policy volatile-ttl"),
        (Eviction("volatile-lru", 0), logging.WARNING, "would evict keys once a maxmemory is set"),
        (None, logging.WARNING, "could not read the tile store's eviction policy"),
        (Eviction("noeviction", 1 << 30), None, None),
    ],
)
def test_a_tile_store_that_may_evict_keys_is_reported_after_the_first_write(
    processor: StreamProcessor,
    caplog: pytest.LogCaptureFixture,
    eviction: Eviction | None,
    level: int | None,
    says: str,
) -> None:
    processor.store.eviction = lambda: eviction  # type: ignore[method-assign]
    with caplog.at_level(logging.INFO, logger="featurestore.streaming.eviction"):
        assert eviction_checked(processor.store, processor.view.name)
    if level is None:
        assert not caplog.records
    else:
        [record] = caplog.records
        assert record.levelno == level and says in record.getMessage()


def test_the_eviction_policy_is_asked_again_after_the_next_write_while_redis_is_unreachable(
    processor: StreamProcessor, caplog: pytest.LogCaptureFixture
) -> None:
    def unreachable() -> Eviction:
        raise redis_errors.ConnectionError("Connection refused")

    processor.store.eviction = unreachable  # type: ignore[method-assign]
    with caplog.at_level(logging.INFO, logger="featurestore.streaming.eviction"):
        assert not eviction_checked(processor.store, processor.view.name)
    assert not caplog.records
