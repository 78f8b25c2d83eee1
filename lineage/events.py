"""The lineage event: one (feature, version) served during one window.

Wire format: UTF-8 JSON, Kafka key = ``feature_id``. Decoding is strict (unknown or
missing fields and wrong types are errors) so the consumer can dead-letter a
malformed message with a precise reason instead of writing garbage to the graph.
"""

from __future__ import annotations

import msgspec

SCHEMA_VERSION = 1


class LineageEvent(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    feature_id: str  # "view:feature"
    feature_version: int  # registry version in which the feature's definition last changed
    source_table: str  # e.g. "redis://fs/user_profile", "clickhouse://db.table"
    timestamp: str  # window start, UTC, ISO 8601 ("2024-01-01T00:00:07Z")
    upstream_deps: list[str]  # feature ids and table names the feature derives from
    registry_version: int
    served_count: int
    trace_ids: list[str]  # a small sample of the window's trace ids
    service: str  # the serving service instance, e.g. "featurestore@host:8080"
    schema_version: int = SCHEMA_VERSION

    @property
    def key(self) -> bytes:
        return self.feature_id.encode()


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(LineageEvent)


class MalformedEvent(ValueError):
    """A message that is not a valid lineage event; the message says why."""


def encode_event(event: LineageEvent) -> bytes:
    return _encoder.encode(event)


def decode_event(raw: bytes) -> LineageEvent:
    try:
        event = _decoder.decode(raw)
    except (msgspec.ValidationError, msgspec.DecodeError) as e:
        raise MalformedEvent(str(e)) from None
    if ":" not in event.feature_id:
        raise MalformedEvent(f"feature_id {event.feature_id!r} is not 'view:feature'")
    if event.served_count < 0:
        raise MalformedEvent("served_count is negative")
    return event
