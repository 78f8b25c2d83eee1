"""Time tiles and their partial aggregates (pure: no I/O).

A stream view's events are cut into tiles of ``tile_seconds`` (tile index =
``event_time // tile``). Each (entity key, tile) holds one *record*: a row of float64
slots, the partial aggregates every window is later assembled from:

* slot 0: the tile index; slot 1: the newest event time in the tile (epoch µs);
* then one slot per partial the aggregations need: ``n`` (count, add), ``s`` (sum,
  add), ``lo`` (min), ``hi`` (max), and for ``last`` a pair ``lt`` (its event time,
  newest wins, ties to the later offset) followed by ``lv`` (its value).

``avg`` is ``s / n`` of its column; ``count`` without a column counts events. Two
records of the same tile merge slot by slot with the slot's op (``OPS``), which is what
the tile stores do atomically (the Redis adapter in Lua). Float64 holds epoch µs
exactly (2^53 µs is year 2255) and counts up to 2^53.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from featurestore.model import FeatureView, StreamSpec

# Merge op per slot: I keep (tile index), c count and a sum (both add), m min, M max,
# T newest time (takes the V slot after it along), V value of the T before it.
KEEP, COUNT, ADD, MIN, MAX, LAST_TS, LAST_VALUE = "I", "c", "a", "m", "M", "T", "V"
ADDS = (COUNT, ADD)
_IDENTITY = {
    KEEP: 0.0, COUNT: 0.0, ADD: 0.0, MIN: math.inf, MAX: -math.inf, LAST_TS: -math.inf, LAST_VALUE: 0.0,
}  # fmt: skip
_PARTIALS = {
    "count": (("n", COUNT),),
    "sum": (("s", ADD),),
    "avg": (("s", ADD), ("n", COUNT)),
    "min": (("lo", MIN),),
    "max": (("hi", MAX),),
    "last": (("lt", LAST_TS), ("lv", LAST_VALUE)),
}


@dataclass(frozen=True, slots=True)
class AggregationSlots:
    """Where one aggregation reads its partials, and its window in tiles."""

    name: str
    function: str
    slots: tuple[int, ...]  # count/sum/min/max: (slot,); avg: (s, n); last: (lt, lv)
    window_tiles: int


@dataclass(frozen=True, slots=True)
class TileLayout:
    tile_us: int
    ops: str  # one merge op per slot
    slot_columns: tuple[str, ...]  # the event column each slot reads ("" for slots 0 and 1, count of events)
    aggregations: tuple[AggregationSlots, ...]
    identity: tuple[float, ...]
    retention_tiles: int  # tiles any window can still reach, plus one of slack

    @property
    def width(self) -> int:
        return len(self.ops)

    @property
    def record_bytes(self) -> int:
        return 8 * len(self.ops)

    @property
    def columns(self) -> tuple[str, ...]:
        """The event fields read (each must be a number or null)."""
        return tuple(dict.fromkeys(c for c in self.slot_columns if c))

    def pack(self, record: list[float]) -> bytes:
        return struct.pack(f"<{len(self.ops)}d", *record)

    def unpack(self, raw: bytes) -> list[float]:
        return list(struct.unpack(f"<{len(self.ops)}d", raw))


def layout_of(spec: StreamSpec) -> TileLayout:
    index: dict[tuple[str, str], int] = {}
    ops, cols = [KEEP, MAX], ["", ""]
    aggs = []
    for a in spec.aggregations:
        slots = []
        for kind, op in _PARTIALS[a.function]:
            slot = index.get((kind, a.column))
            if slot is None:
                slot = index[(kind, a.column)] = len(ops)
                ops.append(op)
                cols.append(a.column)
            slots.append(slot)
        aggs.append(AggregationSlots(a.name, a.function, tuple(slots), a.window_seconds // spec.tile_seconds))
    return TileLayout(
        tile_us=spec.tile_seconds * 1_000_000,
        ops="".join(ops),
        slot_columns=tuple(cols),
        aggregations=tuple(aggs),
        identity=tuple(_IDENTITY[op] for op in ops),
        retention_tiles=spec.max_window_seconds // spec.tile_seconds + 1,
    )


_LAYOUTS: dict[str, TileLayout] = {}


def view_layout(view: FeatureView) -> TileLayout:
    """The view's tile layout, computed once per definition (keyed by its layout hash)."""
    got = _LAYOUTS.get(view.layout)
    if got is None:
        assert view.stream is not None, f"{view.name} is not a stream view"
        got = _LAYOUTS[view.layout] = layout_of(view.stream)
    return got


class TileAccumulator:
    """Partial aggregates of one batch of events, per (entity key, tile), in memory.

    ``add`` must see a partition's events in offset order (``last`` ties go to the later
    one). Values are numbers or None (checked by the decoder)."""

    __slots__ = ("_plan", "identity", "layout", "records")

    def __init__(self, layout: TileLayout) -> None:
        self.layout = layout
        self.identity = list(layout.identity)
        self.records: dict[tuple[str, int], list[float]] = {}
        self._plan = [
            (slot, op, col)
            for slot, (op, col) in enumerate(zip(layout.ops, layout.slot_columns, strict=True))
            if slot >= 2
        ]

    def add(self, key: str, ts_us: int, values: Mapping[str, Any]) -> None:
        tile = ts_us // self.layout.tile_us
        rec = self.records.get((key, tile))
        if rec is None:
            rec = self.records[(key, tile)] = self.identity.copy()
            rec[0] = float(tile)
        if ts_us > rec[1]:
            rec[1] = float(ts_us)
        for slot, op, col in self._plan:
            if col:
                v = values.get(col)
                if v is None:
                    continue
            else:
                v = 1.0
            if op == COUNT:
                rec[slot] += 1.0
            elif op == ADD:
                rec[slot] += v
            elif op == MIN:
                if v < rec[slot]:
                    rec[slot] = v
            elif op == MAX:
                if v > rec[slot]:
                    rec[slot] = v
            elif op == LAST_TS and ts_us >= rec[slot]:
                rec[slot] = float(ts_us)
                rec[slot + 1] = float(v)

    def __len__(self) -> int:
        return len(self.records)


def merge(layout: TileLayout, old: list[float], new: list[float]) -> list[float]:
    """Merge two records of one tile (what the stores do on write; Lua in Redis)."""
    out = list(old)
    for s, op in enumerate(layout.ops):
        if op in ADDS:
            out[s] = old[s] + new[s]
        elif op == MIN:
            out[s] = min(old[s], new[s])
        elif op == MAX:
            out[s] = max(old[s], new[s])
        elif op == LAST_TS and new[s] >= old[s]:
            out[s], out[s + 1] = new[s], new[s + 1]
    return out
