"""The lineage event: one (feature, version) served during one window.

Wire format: UTF-8 JSON, Kafka key = ``feature_id``. Decoding is strict (unknown or
missing fields and wrong types are errors) so the consumer can dead-letter a
malformed message with a precise reason instead of writing garbage to the graph.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated

import msgspec

SCHEMA_VERSION = 1

# Counts and versions travel on to Bolt, whose integers are signed 64-bit: anything
# outside would fail every graph write of the batch, so it is refused here instead.
Count = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]
Name = Annotated[str, msgspec.Meta(min_length=1)]


class LineageEvent(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    feature_id: Name  # "view:feature"
    feature_version: Count  # registry version in which the feature's definition last changed
    source_table: Name  # e.g. "redis://fs/user_profile", "clickhouse://db.table"
    timestamp: Name  # window start, UTC, ISO 8601 ("2024-01-01T00:00:07Z")
    upstream_deps: list[str]  # feature ids and table names the feature derives from
    registry_version: Count
    served_count: Count
    trace_ids: list[str]  # a small sample of the window's trace ids
    service: Name  # the serving service instance, e.g. "featurestore@host:8080"
    schema_version: Count = SCHEMA_VERSION

    @property
    def key(self) -> bytes:
        return self.feature_id.encode()


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(LineageEvent)


class MalformedEvent(ValueError):
    """A message that is not a valid lineage event; the message says why."""


# What msgspec raises for a message that is not what it should be. RecursionError: JSON
# nested about 200,000 levels deep (400 KB, under Kafka's 1 MB) exhausts the decoder's
# stack; it says nothing about the process, only about the message.
DECODE_ERRORS = (msgspec.ValidationError, msgspec.DecodeError, RecursionError)


def malformed(e: Exception) -> MalformedEvent:
    if isinstance(e, RecursionError):
        return MalformedEvent(f"JSON nested too deeply to decode ({e})")
    return MalformedEvent(str(e))


def encode_event(event: LineageEvent) -> bytes:
    return _encoder.encode(event)


def decode_event(raw: bytes) -> LineageEvent:
    """Decode and validate completely: whatever passes can be written to the graph, so
    a bad message is dead-lettered here rather than failing graph writes forever."""
    try:
        event = _decoder.decode(raw)
    except DECODE_ERRORS as e:
        raise malformed(e) from None
    view, _, feature = event.feature_id.partition(":")
    if not view or not feature:
        raise MalformedEvent(f"feature_id {event.feature_id!r} is not 'view:feature'")
    parse_timestamp(event.timestamp)
    return event


def parse_timestamp(value: str) -> datetime:
    """The event's window start: ISO 8601 in UTC (``Z`` or ``+00:00``, any spelling
    ``datetime.fromisoformat`` reads). A naive or offset time would still parse, but a
    producer's clock zone is not a window's, so only UTC is accepted."""
    try:
        t = datetime.fromisoformat(value)
    except ValueError:
        raise MalformedEvent(f"timestamp {value!r} is not an ISO 8601 time") from None
    if t.utcoffset() != timedelta(0):
        raise MalformedEvent(f"timestamp {value!r} is not in UTC (end it with 'Z')")
    return t


def canonical_time(value: str) -> str:
    """The window start in one spelling, the one the built-in emitter writes
    (featurestore/emitter.py ``_iso``): whole seconds and ``Z``, a fraction only when
    not zero, to the millisecond (or the microsecond when finer). ``Z``, ``+00:00``,
    ``.000Z`` and the basic form ``20261102T100000Z`` are one instant, so one window
    (review s58 #7: as text, event identity counted that window four times)."""
    t = parse_timestamp(value)
    base = t.replace(tzinfo=None, microsecond=0).isoformat()
    us = t.microsecond
    if not us:
        return f"{base}Z"
    return f"{base}.{us // 1000:03d}Z" if us % 1000 == 0 else f"{base}.{us:06d}Z"
