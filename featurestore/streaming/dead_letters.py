"""The dead-letter topic of a stream view: malformed events, as they came, with why.

Each dead letter is the original message (value and key) with the headers
``featurestore-error`` (the reason), ``featurestore-view`` and ``featurestore-source``
(``topic:partition:offset``). The processor delivers a batch's dead letters before the
batch's offsets move past them.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

log = logging.getLogger(__name__)
REASON_HEADER = "featurestore-error"


class DeadLetters:
    """Sends one view's dead letters with the processor's producer (consume thread only)."""

    def __init__(self, producer: Any, topic: str, view_name: str) -> None:
        self.producer = producer
        self.topic = topic
        self.view_name = view_name

    def deliver(self, dead: list[tuple[Any, str]], stop: threading.Event) -> None:
        """Deliver every dead letter before the batch's offsets move past them."""
        for m, reason in dead:
            self._produce(m, reason)
        while self.producer.flush(5) > 0 and not stop.is_set():
            log.warning("stream view %s: dead-letter topic %s not reachable yet", self.view_name, self.topic)

    def _produce(self, m: Any, reason: str) -> None:
        """The message as it came, with the reason; when the dead-letter topic refuses it
        (a message near the size limit plus our headers is too large: librdkafka raises
        at once), the reason and where it came from without the value, so one message can
        never stop the processor (it would be redelivered to every restart)."""
        from confluent_kafka import KafkaException

        source = f"{m.topic()}:{m.partition()}:{m.offset()}".encode()
        value, key = m.value(), m.key()
        while True:
            headers = [
                (REASON_HEADER, reason.encode()),
                ("featurestore-view", self.view_name.encode()),
                ("featurestore-source", source),
            ]
            try:
                self.producer.produce(self.topic, value=value, key=key, headers=headers)
                return
            except BufferError:  # the producer's queue is full: let it drain
                self.producer.poll(0.5)
            except KafkaException as e:
                if value is None and key is None:
                    raise
                size = len(value or b"") + len(key or b"")
                reason = f"{reason}; message of {size} bytes left out: {e.args[0].str()}"
                value = key = None
