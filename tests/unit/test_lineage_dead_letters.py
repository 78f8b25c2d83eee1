"""Dead letters a broker refuses for good are sent smaller, never retried forever."""

from __future__ import annotations

import asyncio
from typing import Any

from confluent_kafka import KafkaError

from lineage import metrics
from lineage.dead_letters import KEPT_BYTES, DeadLetter, DeadLetterQueue
from lineage.kafka import KafkaSettings, close_producer


class Message:
    def __init__(self, value: bytes) -> None:
        self._value = value

    def topic(self) -> str:
        return "feature-lineage-v1"

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return 7

    def key(self) -> bytes:
        return b"k"

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
