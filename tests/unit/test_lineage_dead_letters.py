"""Dead letters a broker refuses for good are sent smaller, never retried forever."""

from __future__ import annotations

import asyncio
from typing import Any

from confluent_kafka import KafkaError

from lineage import metrics
from lineage.dead_letters import CUT, KEPT_BYTES, KEPT_KEY_BYTES, DeadLetter, DeadLetterQueue
from lineage.kafka import KafkaSettings, close_producer


class Message:
    def __init__(self, value: bytes, key: bytes = b"k") -> None:
        self._value = value
        self._key = key

    def topic(self) -> str:
        return "feature-lineage-v1"

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return 7

    def key(self) -> bytes:
        return self._key

    def value(self) -> bytes:
        return self._value


class RefusingBroker:
    """A producer whose broker refuses (in the delivery report, after a round trip)
    every message with a value over ``limit`` bytes: MSG_SIZE_TOO_LARGE."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.pending: list[tuple[Any, Any]] = []
        self.taken: list[tuple[bytes | None, dict[str, bytes]]] = []

    def produce(self, topic: str, key: Any, value: bytes | None, headers: Any, on_delivery: Any) -> None:
        self.pending.append(((value, dict(headers)), on_delivery))

    def flush(self, _timeout: float) -> int:
        pending, self.pending = self.pending, []
        for (value, headers), report in pending:
            if len(value or b"") > self.limit:
                report(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE), None)
            else:
                self.taken.append((value, headers))
                report(None, None)
        return 0


def queue(broker: RefusingBroker) -> DeadLetterQueue:
    dlq = DeadLetterQueue(KafkaSettings(bootstrap_servers="127.0.0.1:1"), lambda: None)
    close_producer(dlq._producer)  # its threads end now; the fake takes its place
    dlq._producer = broker  # type: ignore[assignment]
    return dlq


def truncated() -> float:
    return float(metrics.CONSUMED.labels("dead_letter_truncated")._value.get())


async def test_a_dead_letter_the_broker_refuses_as_too_large_is_delivered_cut_in_the_same_round() -> None:
    broker = RefusingBroker(limit=100_000)
    dlq = queue(broker)
    before = truncated()
    value = b"x" * 500_000
    assert await dlq.deliver([DeadLetter(Message(value), "unknown field")], asyncio.Event())
    [(kept, headers)] = broker.taken
    assert kept == value[:KEPT_BYTES]
    assert (
        headers["truncated"]
        == b"the broker refused the whole message (500000 bytes of value); the first 65536 kept"
    )
    assert headers["reason"] == b"unknown field" and headers["origin"] == b"feature-lineage-v1/0/7"
    assert (dlq.delivered, dlq.truncated, dlq.failures, truncated() - before) == (1, 1, 0, 1)


async def test_a_broker_that_refuses_even_the_cut_value_gets_the_dead_letter_without_one() -> None:
    broker = RefusingBroker(limit=1_000)
    dlq = queue(broker)
    assert await dlq.deliver([DeadLetter(Message(b"x" * 500_000), "why")], asyncio.Event())
    [(kept, headers)] = broker.taken
    assert kept is None
    assert (
        headers["truncated"]
        == b"the broker refused the whole message (500000 bytes of value); the first 0 kept"
    )


async def test_a_dead_letter_refused_in_every_form_is_given_up_counted_not_retried_forever() -> None:
    broker = RefusingBroker(limit=-1)  # refuses everything, even an empty value
    dlq = queue(broker)
    lost = metrics.CONSUMED.labels("dead_letter_lost")._value.get()
    assert await asyncio.wait_for(dlq.deliver([DeadLetter(Message(b"x"), "why")], asyncio.Event()), 10)
    assert broker.taken == [] and (dlq.delivered, dlq.lost) == (0, 1)
    assert metrics.CONSUMED.labels("dead_letter_lost")._value.get() - lost == 1


class Recording:
    """The real producer (librdkafka's own size check, message.max.bytes, on key, value
    and headers), with the keys it was handed; flushes without waiting for a broker."""

    def __init__(self, producer: Any) -> None:
        self.producer = producer
        self.keys: list[int] = []

    def produce(self, topic: str, key: bytes | None = None, **rest: Any) -> None:
        self.keys.append(len(key or b""))
        self.producer.produce(topic, key=key, **rest)

    def flush(self, _timeout: float) -> int:
        return int(self.producer.flush(0))


def test_a_dead_letter_whose_key_is_over_the_size_limit_is_sent_with_the_key_cut_not_given_up() -> None:
    """Only the value was made smaller: a key over message.max.bytes kept every form over
    it, and the dead letter was given up though a cut key would have fitted."""
    dlq = DeadLetterQueue(
        KafkaSettings(bootstrap_servers="127.0.0.1:1"), lambda: None, max_message_bytes=20_000
    )
    real = dlq._producer
    dlq._producer = Recording(real)  # type: ignore[assignment]
    dead = DeadLetter(Message(b'{"small": 1}', key=b"v:" + b"k" * 50_000), "graph refused the event")
    try:
        dlq._produce([dead])
        assert (dead.form, dead.in_flight, dead.done) == (CUT, True, False)  # taken by the size check
        assert dlq._producer.keys == [50_002, KEPT_KEY_BYTES]  # type: ignore[attr-defined]
        _, headers = dead.value_and_headers()
        assert dict(headers)["truncated"] == (
            b"the broker refused the whole message (12 bytes of value); the first 12 kept; "
            b"its key (50002 bytes) cut to the first 1024"
        )
    finally:
        close_producer(real)
