"""The stream processor's batch step without a broker: what one event can and cannot do
to the batch it arrived in."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from featurestore.definitions.parser import parse_definitions
from featurestore.model import FeatureView
from featurestore.streaming.decode import Event, Malformed
from featurestore.streaming.processor import ProcessorOptions, StreamProcessor
from featurestore.streaming.store import NO_MARK, MemoryTileStore
from featurestore.streaming.tiles import TileAccumulator, view_layout
from lineage.kafka import KafkaSettings


class Message:
    """What the processor reads of a confluent_kafka.Message (which Python cannot build)."""

    def __init__(self, offset: int, value: bytes) -> None:
        self._offset, self._value = offset, value

    def error(self) -> None:
        return None

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return self._offset

    def timestamp(self) -> tuple[int, int]:
        return (1, time.time_ns() // 1_000_000)

    def value(self) -> bytes:
        return self._value

    def key(self) -> None:
        return None

    def topic(self) -> str:
        return "clicks"


def view() -> FeatureView:
    doc = {
        "project": "p",
        "entities": [{"name": "user_id", "dtype": "int64"}],
        "stream_views": [
            {
                "name": "unit_view",
                "entities": ["user_id"],
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

    def flaky(raw: bytes | None) -> Event | Malformed | None:
        if raw == b"poison":
            raise ValueError("a decoder bug")
        return decode(raw)

    processor.decoder.decode = flaky  # type: ignore[method-assign]
    acc = TileAccumulator(view_layout(processor.view), processor.decoder.column_attrs)
    turn = processor._aggregate([event(0), Message(1, b"poison"), event(2)], acc)
    assert turn.counts["applied"] == 2 and turn.work[0][1] == 2
    [(message, reason)] = turn.dead
    assert message.offset() == 1 and reason == "could not be processed: ValueError('a decoder bug')"
