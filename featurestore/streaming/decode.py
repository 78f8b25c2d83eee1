"""JSON events -> (entity key, event time, values), or the reason an event is malformed.

An event is a JSON object. Its key fields (``source.key_fields``) must hold the view's
entity keys (int64: an integer; string: a string without ``|``), its timestamp field a
number in the source's unit or an ISO-8601 string (without a zone: UTC) within
1970..2255, and every column an aggregation reads a number or null (missing = null; an
integer within +-2^53, so it is exact as float64; a float within +-1e292, so no window's
sum overflows). These checks come before ``filter``, which drops events (not malformed)
whose fields differ (as JSON values: ``true`` is no number), so a producer's broken events
are dead-lettered whatever their kind. After the filter, an event time more than
``CLOCK_SKEW_US`` + the view's longest window ahead of the processor's clock is
malformed: a judgement of this view's windows, which an event it drops does not concern
(reminders stamped with their due time, say). Anything else is malformed (invalid UTF-8
in a string field and JSON nested too deeply included: ``decode`` raises for no input):
the processor sends it to the dead-letter topic with the reason returned here.

Decoding is msgspec into a struct type built once per view (fields typed as above), so
type checks happen in C; an event's values stay on the struct, whose attribute names
the accumulator is given (``column_attrs``).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, NamedTuple

import msgspec

from featurestore.definitions.stream import TIMESTAMP_UNITS
from featurestore.model import KEY_SEPARATOR, DType, FeatureView
from featurestore.streaming.store import CLOCK_SKEW_US
from featurestore.streaming.tiles import view_layout

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_INT64 = Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]
# A column's integers must be exact as float64 (tiles hold float64): beyond +-2^53 one would
# be rounded (9007199254740993 -> ...992) and a `last` or `sum` silently wrong. Decoded as
# int (then exact in the record) or float; a JSON float is the producer's own rounding.
_EXACT_INT = Annotated[int, msgspec.Meta(ge=-(2**53), le=2**53)]
# And a column's floats within +-1e292, so no window's sum (or avg) overflows to +-inf:
# 2^53 of them (more events than a float64 count holds exactly) sum to at most 9.0e307,
# under float64's largest, 1.8e308. Two values of 1e308 made a sum of inf, served as null
# over HTTP and as inf over gRPC; the sign of such an overflow even followed the order
# the tiles were added in. Beyond the bound an event is malformed, with msgspec's reason.
MAX_FLOAT = 1e292
_BOUNDED_FLOAT = Annotated[float, msgspec.Meta(ge=-MAX_FLOAT, le=MAX_FLOAT)]
# Event times are kept as float64 epoch µs (tiles.py): exact up to 2^53 µs (year 2255).
# Outside [1970, 2255) a time is malformed: a far-future one would otherwise move the
# partition's watermark so far that every later event counts as late.
MAX_TS_US = 2**53
_MICROSECOND = timedelta(microseconds=1)


class Event(NamedTuple):
    key: str
    ts_us: int
    values: Any  # the decoded struct: column values at ``EventDecoder.column_attrs``


class Malformed(NamedTuple):
    reason: str


class EventDecoder:
    """Decodes one view's events; built once per view, used for every message."""

    def __init__(self, view: FeatureView) -> None:
        spec = view.stream
        assert spec is not None
        src = spec.source
        fields: dict[str, tuple[str, Any, bool]] = {}  # JSON name -> (attribute, type, required)

        def attr(name: str, kind: Any, required: bool) -> str:
            if name not in fields:
                fields[name] = (f"a{len(fields)}", kind, required)
            return fields[name][0]

        self.keys = [
            attr(f, _INT64 if e.dtype is DType.INT64 else str, True)
            for f, e in zip(src.key_fields, view.entities, strict=True)
        ]
        self.string_keys = [
            a for a, e in zip(self.keys, view.entities, strict=True) if e.dtype is DType.STRING
        ]
        self.ts_field = src.timestamp_field
        self.ts = attr(src.timestamp_field, int | float | str, True)
        self.column_attrs = [
            attr(c, _EXACT_INT | _BOUNDED_FLOAT | None, False) for c in view_layout(view).columns
        ]
        # (attribute, value, whether it is a boolean): compared as JSON values, where a boolean
        # is no number; Python's == has True == 1 == 1.0 (review s58)
        self.filter = [(attr(name, Any, False), want, type(want) is bool) for name, want in src.filter]
        self.scale = TIMESTAMP_UNITS[src.timestamp_unit]
        # Further ahead of the processor's clock, an event is malformed: until its time comes
        # no window reaches its tile, which its key would keep meanwhile (``store.py``);
        # usually a wrong timestamp unit or clock.
        self.ahead_us = CLOCK_SKEW_US + spec.max_window_seconds * 1_000_000
        struct = msgspec.defstruct(
            f"{view.name}_event",
            [(a, kind) if required else (a, kind, None) for a, kind, required in fields.values()],
            rename={a: name for name, (a, _, _) in fields.items()},
        )
        self._decoder = msgspec.json.Decoder(struct)

    def decode(self, raw: bytes | None, latest_us: int = MAX_TS_US) -> Event | Malformed | None:
        """The event, why it is malformed, or None when the filter drops it; ``latest_us``:
        the latest event time taken (the processor's clock + ``self.ahead_us``)."""
        if not raw:
            return Malformed("empty message")
        try:
            ev = self._decoder.decode(raw)
        except msgspec.ValidationError as e:
            return Malformed(str(e))
        except msgspec.DecodeError as e:
            return Malformed(f"not valid JSON: {e}")
        except UnicodeDecodeError as e:  # msgspec checks the UTF-8 of the strings it keeps
            return Malformed(f"a string field is not valid UTF-8 ({e.reason})")
        except RecursionError:  # msgspec skips ignored fields recursively too
            return Malformed("not valid JSON: nested too deeply")
        for name in self.string_keys:  # checked before the filter, like the types and the time
            if KEY_SEPARATOR in getattr(ev, name):
                return Malformed(f"a string key may not contain {KEY_SEPARATOR!r}")
        v = getattr(ev, self.ts)
        if type(v) is str:
            try:
                # printable ASCII only: CPython 3.11's fromisoformat stops at a NUL, so
                # "...Z\x00anything" read as its first part (as push's check, review s56)
                if not (v.isascii() and v.isprintable()):
                    raise ValueError(v)
                t = datetime.fromisoformat(v)
            except ValueError:
                return Malformed(f"timestamp field {self.ts_field!r}: not ISO-8601: {v[:40]!r}")
            if t.tzinfo is None:
                t = t.replace(tzinfo=UTC)
            ts = (t - _EPOCH) // _MICROSECOND
        else:
            try:
                ts = int(v * self.scale)
            except OverflowError:  # a float past float64's range once scaled (1e306 ms): out of range too
                ts = -1
        if not 0 <= ts < MAX_TS_US:
            return Malformed(
                f"timestamp field {self.ts_field!r}: outside 1970..2255 (a wrong timestamp_unit?)"
            )
        for name, want, boolean in self.filter:
            got = getattr(ev, name)
            if got != want or (type(got) is bool) is not boolean:  # (the only types == mixes here)
                return None
        if ts > latest_us:  # after the filter: about this view's windows (module docstring)
            return Malformed(self._too_far(ts))
        keys = self.keys
        key = (
            str(getattr(ev, keys[0]))
            if len(keys) == 1
            else KEY_SEPARATOR.join(str(getattr(ev, k)) for k in keys)
        )
        return Event(key, ts, ev)

    def _too_far(self, ts_us: int) -> str:
        when = datetime.fromtimestamp(ts_us / 1e6, UTC).isoformat(timespec="seconds")
        return (
            f"event time {when} is more than {CLOCK_SKEW_US // 1_000_000}s + the longest window "
            f"({(self.ahead_us - CLOCK_SKEW_US) // 1_000_000}s) ahead of the processor's clock "
            "(a wrong timestamp_unit or clock?)"
        )
