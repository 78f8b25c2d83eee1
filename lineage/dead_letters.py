"""The lineage consumer's dead-letter topic: messages that cannot become graph facts.

Every dead letter is delivered before the batch it came from is committed, so none is
lost; delivery is retried (the consumer re-creates the topic if it went missing) until it
succeeds or the consumer stops. A dead letter the producer or the broker refuses for
good (larger than the message size they accept, a record they call invalid) would be
retried forever and hold every later message back, so it is sent smaller instead: first
with the original value cut to its first KEPT_BYTES, then with no value at all, each
saying so in a ``truncated`` header beside ``reason`` and ``origin``; both smaller forms
also cut a key over KEPT_KEY_BYTES (the key is the event's feature_id, which the decoder
does not bound), which would otherwise keep even the value-less one over the limit. Only when even the
value-less one is refused for good is the message given up, counted and logged as an
error (docs/lineage.md, "Consumer").

Outcomes (``featurestore_lineage_consumed_total{outcome}``, one per message):
``dead_letter`` (delivered whole), ``dead_letter_truncated`` (delivered cut or without
its value) and ``dead_letter_lost`` (refused for good in every form).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from lineage import metrics
from lineage.kafka import KafkaSettings, close_producer

log = logging.getLogger(__name__)

MAX_REASON = 1000  # header bytes; a driver's message can be long
# What a dead letter too large for the broker keeps of its value: enough to see what
# the message was (the start of its JSON), far below any broker's message size.
KEPT_BYTES = 64 * 1024
# What the smaller forms keep of the original key: a feature id is far shorter, so only a
# key that is itself the problem (review s54 #6) loses anything.
KEPT_KEY_BYTES = 1024
# Kafka's default broker (and topic) limit, message.max.bytes: a dead letter above it
# is refused by librdkafka at once rather than by a default broker after a round trip.
MAX_MESSAGE_BYTES = 1_048_588
# Kafka error codes that say this message can never be taken, however often it is sent:
# INVALID_MSG, INVALID_MSG_SIZE, MSG_SIZE_TOO_LARGE, RECORD_LIST_TOO_LARGE, INVALID_RECORD.
# Anything else (a missing topic, a broker away, a timeout) is retried.
PERMANENT = frozenset({2, 4, 10, 18, 87})
WHOLE, CUT, BARE, GIVEN_UP = range(4)  # how much of the original value a dead letter carries


def permanent(error: Any) -> bool:
    """A produce or delivery error that refuses this message for good."""
    code = getattr(error, "code", None)
    return callable(code) and code() in PERMANENT


@dataclass(slots=True)
class DeadLetter:
    """One message on its way to the dead-letter topic, and how that is going."""

    message: Any
    reason: str
    in_flight: bool = False
    done: bool = False
    error: Any = None
    form: int = WHOLE  # smaller after each refusal for good

    def delivered(self, err: Any, _msg: Any) -> None:
        self.in_flight = False
        self.done = err is None
        self.error = err  # refused for good or not: _produce looks

    def refused(self, err: Any) -> None:
        """Refused for good: the next attempt sends a smaller form, or none is left."""
        self.form += 1
        self.error = err
        if self.form == GIVEN_UP:
            self.done = True

    def key(self) -> bytes | None:
        key: bytes | None = self.message.key()
        return key if self.form == WHOLE or key is None else key[:KEPT_KEY_BYTES]

    def value_and_headers(self) -> tuple[bytes | None, list[tuple[str, str | bytes | None]]]:
        m = self.message
        value: bytes = m.value() or b""
        origin = f"{m.topic()}/{m.partition()}/{m.offset()}"
        headers: list[tuple[str, str | bytes | None]] = [
            ("reason", self.reason[:MAX_REASON].encode()),
            ("origin", origin.encode()),
        ]
        if self.form == WHOLE:
            return value, headers
        kept = value[:KEPT_BYTES] if self.form == CUT else b""
        note = (
            f"the broker refused the whole message ({len(value)} bytes of value); the first {len(kept)} kept"
        )
        key = m.key() or b""
        if len(key) > KEPT_KEY_BYTES:
            note += f"; its key ({len(key)} bytes) cut to the first {KEPT_KEY_BYTES}"
        return (kept or None), [*headers, ("truncated", note.encode())]


class DeadLetterQueue:
    """The consumer's producer to ``settings.dead_letter_topic``."""

    def __init__(
        self,
        settings: KafkaSettings,
        check_topics: Callable[[], None],
        max_message_bytes: int = MAX_MESSAGE_BYTES,
    ) -> None:
        from confluent_kafka import Producer

        self.topic = settings.dead_letter_topic
        self._check_topics = check_topics  # re-creates a topic the broker lost
        self._producer = Producer(
            {
                **settings.client_config(),
                "enable.idempotence": True,
                "acks": "all",
                # A dead letter that cannot be delivered fails within this, so the retry
                # loop sees it (and can create the topic) instead of waiting 5 minutes.
                "message.timeout.ms": 30_000,
                "allow.auto.create.topics": False,  # created by the TopicWatch, one partition
                "message.max.bytes": max_message_bytes,
            }
        )
        self.delivered = 0  # dead letters delivered, whole or cut
        self.truncated = 0  # of those, delivered cut or without their value
        self.lost = 0  # refused for good in every form
        self.failures = 0  # delivery rounds that left dead letters behind

    async def deliver(self, dead: list[DeadLetter], stop: asyncio.Event) -> bool:
        """Deliver every dead letter (or give it up, counted); False when stopped first."""
        delay = 0.5
        while True:
            await asyncio.to_thread(self._produce, dead)
            left = [d for d in dead if not d.done]
            if not left:
                self._count(dead)
                return True
            self.failures += 1
            errors = sorted({str(d.error) for d in left if d.error is not None})
            log.warning(
                "%d dead letters not yet delivered to %s (%s); retrying in %.1fs",
                len(left), self.topic, "; ".join(errors) or "in flight", delay,
            )  # fmt: skip
            if errors:
                await asyncio.to_thread(self._check_topics)
            if await stopped(stop, delay):
                return False
            delay = min(delay * 2, 5.0)

    def _count(self, dead: list[DeadLetter]) -> None:
        for d in dead:
            if d.form == GIVEN_UP:
                self.lost += 1
                metrics.CONSUMED.labels("dead_letter_lost").inc()
                continue
            self.delivered += 1
            if d.form == WHOLE:
                metrics.CONSUMED.labels("dead_letter").inc()
            else:
                self.truncated += 1
                metrics.CONSUMED.labels("dead_letter_truncated").inc()

    def _produce(self, dead: list[DeadLetter]) -> None:
        # Each pass steps a dead letter the broker refused for good down one form.
        for _ in range(GIVEN_UP):
            for d in dead:
                self._send(d)
            # Short, so a stop request is seen soon; what is still in flight stays tracked.
            self._producer.flush(2)
            refused = [d for d in dead if not d.done and not d.in_flight and permanent(d.error)]
            if not refused:
                return
            for d in refused:
                d.refused(d.error)
                self._refused(d)

    def _send(self, d: DeadLetter) -> None:
        from confluent_kafka import KafkaException

        while not d.done and not d.in_flight:  # one still in flight is not produced twice
            m = d.message
            value, headers = d.value_and_headers()
            if d.form == WHOLE:
                log.warning("dead-lettering %s/%d/%d: %s", m.topic(), m.partition(), m.offset(), d.reason)
            try:
                self._producer.produce(
                    self.topic, key=d.key(), value=value, headers=headers, on_delivery=d.delivered
                )
                d.in_flight, d.error = True, None
            except (BufferError, KafkaException) as e:
                error = e.args[0] if isinstance(e, KafkaException) and e.args else e
                if not permanent(error):
                    d.error = e
                    return  # the next round tries again
                d.refused(error)  # refused by librdkafka itself: a smaller form at once
                self._refused(d)

    def _refused(self, d: DeadLetter) -> None:
        m = d.message
        where = f"{m.topic()}/{m.partition()}/{m.offset()}"
        size = len(m.value() or b"") + len(m.key() or b"")  # key and value, as the size check counts
        if d.form == GIVEN_UP:
            log.error(
                "dead letter of %s (%d bytes) refused for good even without its value (%s): "
                "given up, counted as dead_letter_lost; its reason was: %s",
                where, size, d.error, d.reason,
            )  # fmt: skip
        else:
            log.error(
                "dead letter of %s (%d bytes) refused for good (%s); sending it %s",
                where, size, d.error, "cut to its first bytes" if d.form == CUT else "without its value",
            )  # fmt: skip

    def close(self) -> None:
        # Dead letters not delivered by then are purged: their offsets were not
        # committed, so the group reads their events again.
        self._producer.flush(5)
        close_producer(self._producer)


async def stopped(stop: asyncio.Event, delay: float) -> bool:
    """Wait ``delay`` seconds unless asked to stop first; True when asked."""
    try:
        await asyncio.wait_for(stop.wait(), timeout=delay)
        return True
    except TimeoutError:
        return False
