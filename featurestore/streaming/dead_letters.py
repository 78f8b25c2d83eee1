"""The dead-letter topic of a stream view: malformed events, as they came, with why.

Each dead letter is the original message's value and key with the headers
``featurestore-error`` (the reason), ``featurestore-view``, ``featurestore-source``
(``topic:partition:offset``: where the original, headers included, can be read) and
``featurestore-original-timestamp`` (``<ms> CreateTime|LogAppendTime``, when it had one).
The message's own headers are not copied: confluent-kafka's ``Message.headers()`` is not
memory-safe on a header key that is not UTF-8 (which any other client can send): it
raised SystemError, and in a process that had run other stream tests it crashed the
processor with a segfault every time (review s55), and a dead letter is where such a
message goes. Its Kafka timestamp is the time it is sent, not the message's: a topic's
retention counts from its records' timestamps, so a letter of an old event would be
deleted minutes after its delivery. A batch's dead letters are delivered
(each one's delivery report says so) before the batch is written and its offsets move
past them:

* a letter whose delivery fails is produced again, backing off up to 5 s, until it is
  delivered or the processor stops (then the batch is not written: whoever reads the
  partition next meets the events again, at least once); the processor measures its
  lag meanwhile (the batch is not applied: the lag grows);
* a letter the producer or the broker refuses for what it is (too large with our
  headers, an invalid record for the topic) is sent without its value and key, the
  refusal appended to its reason: one message can never stop the
  processor;
* a letter refused because the topic is missing makes the processor create it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from featurestore.streaming import metrics

log = logging.getLogger(__name__)
REASON_HEADER = "featurestore-error"
TIMESTAMP_HEADER = "featurestore-original-timestamp"  # "<ms> CreateTime" or "<ms> LogAppendTime"
_TIMESTAMP_TYPES = {1: "CreateTime", 2: "LogAppendTime"}  # confluent_kafka.TIMESTAMP_*; 0: none


def _codes(*names: str) -> frozenset[int]:
    from confluent_kafka import KafkaError

    return frozenset(getattr(KafkaError, n) for n in names if hasattr(KafkaError, n))


@dataclass(slots=True)
class _Letter:
    message: Any
    reason: str
    value: bytes | None
    key: bytes | None
    timestamp: bytes | None  # the message's, as TIMESTAMP_HEADER holds it (None: it had none)
    in_flight: bool = False
    done: bool = False
    error: Any = None  # the KafkaError of its last failed delivery

    def delivered(self, err: Any, _msg: Any) -> None:  # the producer's delivery report
        self.in_flight = False
        self.done = err is None
        self.error = err

    def strip(self, refusal: str) -> None:
        """Without its value and key, the refusal in its reason."""
        size = len(self.value or b"") + len(self.key or b"")
        self.reason = f"{self.reason}; message of {size} bytes left out: {refusal}"
        self.value = self.key = None

    @property
    def whole(self) -> bool:
        return self.value is not None or self.key is not None


class DeadLetters:
    """Sends one view's dead letters (the processor's consume thread only)."""

    def __init__(self, producer: Any, topic: str, view_name: str, create_topic: Callable[[], None]) -> None:
        self.producer = producer
        self.topic = topic
        self.view_name = view_name
        self.create_topic = create_topic
        # The message is what the broker refuses (so it is sent again without its value)
        self.refused = _codes(
            "MSG_SIZE_TOO_LARGE", "_MSG_SIZE_TOO_LARGE", "RECORD_LIST_TOO_LARGE", "INVALID_RECORD",
            "CORRUPT_MESSAGE", "INVALID_MSG", "INVALID_MSG_SIZE",
        )  # fmt: skip
        self.missing = _codes("UNKNOWN_TOPIC_OR_PART", "_UNKNOWN_TOPIC", "_UNKNOWN_PARTITION")

    def deliver(
        self, dead: list[tuple[Any, str]], stop: threading.Event, waiting: Callable[[], None] = lambda: None
    ) -> bool:
        """Every dead letter delivered: True; False when ``stop`` came first. ``waiting``
        runs after each round that left letters undelivered (the processor measures its
        lag there: the batch waits, so the lag grows)."""
        letters = [_letter(m, reason) for m, reason in dead]
        delay = 0.5
        while True:
            for letter in letters:
                if not (letter.done or letter.in_flight):
                    self._produce(letter)
            self.producer.flush(delay)  # serves the delivery reports
            left = [letter for letter in letters if not letter.done]
            if not left:
                return True
            failed = [letter for letter in left if letter.error is not None and not letter.in_flight]
            self._failed(failed)
            waiting()
            if failed or not any(letter.in_flight for letter in left):
                log.warning(
                    "stream view %s: %d dead letters not delivered to %s yet (%s); retrying",
                    self.view_name, len(left), self.topic,
                    "; ".join(sorted({_text(f.error) for f in failed})) or "the producer's queue is full",
                )  # fmt: skip
            if stop.wait(delay if failed else 0):
                return False
            delay = min(delay * 2, 5.0)

    def _failed(self, failed: list[_Letter]) -> None:
        if not failed:
            return
        metrics.DEAD_LETTER_FAILURES.labels(self.view_name).inc(len(failed))
        for letter in failed:
            code = _code(letter.error)
            if code in self.refused and letter.whole:
                letter.strip(_text(letter.error))
        if any(_code(letter.error) in self.missing for letter in failed):
            try:
                self.create_topic()
            except Exception as e:  # the next round tries again
                log.warning("stream view %s: dead-letter topic %s: %s", self.view_name, self.topic, e)

    def _produce(self, letter: _Letter) -> None:
        from confluent_kafka import KafkaException

        m = letter.message
        headers = [
            (REASON_HEADER, letter.reason.encode()),
            ("featurestore-view", self.view_name.encode()),
            ("featurestore-source", f"{m.topic()}:{m.partition()}:{m.offset()}".encode()),
        ]
        if letter.timestamp is not None:
            headers.append((TIMESTAMP_HEADER, letter.timestamp))
        try:
            self.producer.produce(
                self.topic,
                value=letter.value,
                key=letter.key,
                headers=headers,  # and no timestamp: the time it is sent (retention counts from it)
                on_delivery=letter.delivered,
            )
            letter.in_flight, letter.error = True, None
        except BufferError:  # the producer's queue is full: the flush drains it, then again
            letter.error = None
        except KafkaException as e:  # refused at once (too large with our headers): without its value
            letter.error = e.args[0]
            if letter.whole:
                letter.strip(_text(letter.error))
                self._produce(letter)


def _letter(m: Any, reason: str) -> _Letter:
    kind, ts = m.timestamp()  # (never m.headers(): the module docstring)
    stamp = f"{ts} {_TIMESTAMP_TYPES[kind]}".encode() if kind in _TIMESTAMP_TYPES and ts >= 0 else None
    return _Letter(m, reason, m.value(), m.key(), stamp)


def _code(error: Any) -> int | None:
    return error.code() if hasattr(error, "code") else None


def _text(error: Any) -> str:
    return error.str() if hasattr(error, "str") else str(error)
