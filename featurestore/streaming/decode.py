"""JSON events -> (entity key, event time, values), or the reason an event is malformed.

An event is a JSON object. Its key fields (``source.key_fields``) must hold the view's
entity keys (int64: an integer; string: a string), its timestamp field a number in the
source's unit or an ISO-8601 string, and every column an aggregation reads a number or
null (missing = null). ``filter`` drops events (not malformed) whose fields differ.
Anything else is malformed: the processor sends it to the dead-letter topic with the
reason returned here.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

import msgspec

from featurestore.definitions.stream import TIMESTAMP_UNITS
from featurestore.model import KEY_SEPARATOR, DType, FeatureView
from featurestore.streaming.tiles import view_layout

_json = msgspec.json.Decoder()
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


class Event(NamedTuple):
    key: str
    ts_us: int
    values: dict[str, Any]


class Malformed(NamedTuple):
    reason: str


class EventDecoder:
    """Decodes one view's events; built once per view, used for every message."""

    def __init__(self, view: FeatureView) -> None:
        spec = view.stream
        assert spec is not None
        src = spec.source
        self.keys = tuple(
            (field, entity.dtype is DType.INT64)
            for field, entity in zip(src.key_fields, view.entities, strict=True)
        )
        self.ts_field = src.timestamp_field
        self.scale = TIMESTAMP_UNITS[src.timestamp_unit]
        self.filter = src.filter
        self.columns = view_layout(view).columns

    def decode(self, raw: bytes | None) -> Event | Malformed | None:
        """The event, why it is malformed, or None when the filter drops it."""
        if not raw:
            return Malformed("empty message")
        try:
            doc = _json.decode(raw)
        except msgspec.DecodeError as e:
            return Malformed(f"not valid JSON: {e}")
        if type(doc) is not dict:
            return Malformed(f"expected a JSON object, got {type(doc).__name__}")
        for name, want in self.filter:
            if doc.get(name) != want:
                return None
        parts = []
        for name, is_int in self.keys:
            v = doc.get(name)
            if v is None:
                return Malformed(f"missing key field {name!r}")
            if is_int:
                if type(v) is not int:
                    return Malformed(f"key field {name!r}: expected an integer, got {type(v).__name__}")
            elif type(v) is not str or KEY_SEPARATOR in v:
                return Malformed(f"key field {name!r}: expected a string without '|'")
            parts.append(str(v))
        ts = self._timestamp(doc.get(self.ts_field))
        if isinstance(ts, Malformed):
            return ts
        values = {}
        for col in self.columns:
            v = doc.get(col)
            if v is not None:
                if type(v) is not int and type(v) is not float:
                    return Malformed(f"field {col!r}: expected a number or null, got {type(v).__name__}")
                values[col] = v
        return Event(parts[0] if len(parts) == 1 else KEY_SEPARATOR.join(parts), ts, values)

    def _timestamp(self, v: Any) -> int | Malformed:
        if v is None:
            return Malformed(f"missing timestamp field {self.ts_field!r}")
        if type(v) is int or type(v) is float:
            return int(v * self.scale)
        if type(v) is str:
            try:
                t = datetime.fromisoformat(v)
            except ValueError:
                return Malformed(f"timestamp field {self.ts_field!r}: not ISO-8601: {v[:40]!r}")
            if t.tzinfo is None:
                t = t.replace(tzinfo=UTC)
            return (t - _EPOCH) // _MICROSECOND
        return Malformed(f"timestamp field {self.ts_field!r}: expected a number or a string")
