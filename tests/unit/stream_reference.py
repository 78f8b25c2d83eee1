"""A straightforward recomputation of stream views from an event log (the oracle).

No tiles, no numpy: every event is kept, and a window read at ``now`` takes the events
whose tile (``ts // tile``) lies in ``(now_tile - k, now_tile]``, as docs/streaming.md
defines it. Per partition, in offset order: malformed events are left out (whatever their kind),
then those of another kind (the filter), and events older
than the newest accepted event time minus the allowed lateness are late.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any


@dataclass
class Accepted:
    key: int
    ts_us: int
    amount: float | None
    partition: int
    offset: int


@dataclass
class Replay:
    accepted: list[Accepted]
    late: int
    malformed: int
    filtered: int


def replay(log: list[tuple[int, int, bytes]], lateness_us: int, kind: str = "click") -> Replay:
    """``log``: (partition, offset, message value)."""
    out = Replay([], 0, 0, 0)
    watermark: dict[int, int] = {}
    for partition, offset, raw in sorted(log, key=lambda m: (m[0], m[1])):
        try:
            doc = json.loads(raw)
        except ValueError:
            out.malformed += 1
            continue
        if not isinstance(doc, dict):
            out.malformed += 1
            continue
        user, ts, amount = doc.get("user"), doc.get("ts"), doc.get("amount")
        bad_amount = amount is not None and (isinstance(amount, bool) or not isinstance(amount, (int, float)))
        bad_ts = isinstance(ts, bool) or not isinstance(ts, (int, float))
        if not isinstance(user, int) or isinstance(user, bool) or bad_ts or bad_amount:
            out.malformed += 1  # checked before the filter: a malformed event cannot be told apart
            continue
        if doc.get("kind") != kind:
            out.filtered += 1
            continue
        ts_us = int(ts * 1000)  # type: ignore[operator]
        wm = watermark.get(partition, -(2**62))
        if ts_us < wm - lateness_us:
            out.late += 1
            continue
        watermark[partition] = max(wm, ts_us)
        out.accepted.append(Accepted(user, ts_us, amount, partition, offset))
    return out


def window_values(
    events: list[Accepted], key: int, now_us: int, tile_us: int, aggs: list[tuple[str, str, str, int]]
) -> tuple[bool, int | None, dict[str, Any]]:
    """(found, newest event time, {name: value}) of one key; ``aggs``: (name, function,
    column, window in tiles)."""
    now_tile = now_us // tile_us
    mine = [e for e in events if e.key == key]
    longest = max(w for *_, w in aggs)
    in_longest = [e for e in mine if now_tile - longest < e.ts_us // tile_us <= now_tile]
    if not in_longest:
        return False, None, {}
    values: dict[str, Any] = {}
    for name, function, column, tiles in aggs:
        inside = [e for e in mine if now_tile - tiles < e.ts_us // tile_us <= now_tile]
        amounts = [e.amount for e in inside if e.amount is not None]
        if function == "count":  # of events, or of the column's non-null values
            values[name] = len(amounts) if column else len(inside)
        elif function == "sum":
            values[name] = float(sum(amounts))
        elif function == "avg":
            values[name] = sum(amounts) / len(amounts) if amounts else None
        elif function == "min":
            values[name] = min(amounts) if amounts else None
        elif function == "max":
            values[name] = max(amounts) if amounts else None
        elif function == "last":
            withvalue = [e for e in inside if e.amount is not None]
            newest = max(withvalue, key=lambda e: (e.ts_us, e.partition, e.offset), default=None)
            values[name] = None if newest is None else newest.amount
    return True, max(e.ts_us for e in in_longest), values


def close(a: Any, b: Any, rel: float = 1e-9) -> bool:
    if a is None or b is None:
        return a is b
    if isinstance(a, int) and isinstance(b, int):
        return a == b
    return bool(abs(a - b) <= rel * max(abs(a), abs(b), 1e-300))
