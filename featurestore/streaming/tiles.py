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
import sys
from array import array
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from featurestore.errors import InvalidArgument
from featurestore.model import FeatureView, StreamSpec

# Merge op per slot: I keep (tile index), c count and a sum (both add), m min, M max,
# T newest time (takes the V slot after it along), V value of the T before it.
KEEP, COUNT, ADD, MIN, MAX, LAST_TS, LAST_VALUE = "I", "c", "a", "m", "M", "T", "V"
ADDS = (COUNT, ADD)
_IDENTITY = {
    KEEP: 0.0, COUNT: 0.0, ADD: 0.0, MIN: math.inf, MAX: -math.inf, LAST_TS: -math.inf, LAST_VALUE: 0.0,
}  # fmt: skip
_BIG_ENDIAN = sys.byteorder == "big"
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

    def pack(self, record: Sequence[float]) -> bytes:
        if isinstance(record, array):
            if _BIG_ENDIAN:
                record = array("d", record)
                record.byteswap()
            return record.tobytes()
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


# A request may not make one view assemble more tile records than this: its distinct keys
# x the tiles of the view's longest window (what a key's windows can hold). Checked when
# the join plans its reads (plan.py, ViewPlan.max_keys: a 400 / INVALID_ARGUMENT before any
# store is read), and again by the reader (streaming/serving.py). 2,000,000 records are
# 0.6-2 s of a worker thread (~300-900 ns per record: the demo view, a 7-day window of
# 1-minute tiles) and up to 144 MB of tiles at 9 slots: 198 keys of a 7-day window of
# 1-minute tiles per request, 5,540 of the demo view's. So the limit is not the deadline:
# a request under it may still miss the default 500 ms (its view's values UNAVAILABLE, as
# for a slow store; docs/streaming.md), and the worker thread stops at its next run of keys.
MAX_READ_RECORDS = 2_000_000


def max_read_keys(view: FeatureView) -> int:
    """The most distinct keys one request may read of a stream view."""
    return MAX_READ_RECORDS // view_layout(view).retention_tiles


def too_many_keys(view: FeatureView, keys: int) -> InvalidArgument:
    """The error for a request of more distinct keys than ``max_read_keys(view)``."""
    tiles = view_layout(view).retention_tiles
    return InvalidArgument(
        f"stream view {view.name!r}: {keys} distinct keys x {tiles} tiles each (its longest window) is "
        f"over the {MAX_READ_RECORDS:,} tile records one request may make it assemble (at most "
        f"{MAX_READ_RECORDS // tiles} keys); ask for fewer keys per request",
        details=[
            {
                "feature_view": view.name,
                "keys": keys,
                "tiles_per_key": tiles,
                "max_tile_records": MAX_READ_RECORDS,
                "max_keys": MAX_READ_RECORDS // tiles,
            }
        ],
    )


# How an event's value of ``layout.columns[i]`` is named on the objects the accumulator
# reads (the decoder's structs, ``decode.py``).
COLUMN_ATTR = "v{}"


class _Values:
    """A mapping's values as the attributes the accumulator reads (tests, tools)."""

    def __init__(self, values: Mapping[str, Any], columns: tuple[str, ...]) -> None:
        for i, col in enumerate(columns):
            setattr(self, COLUMN_ATTR.format(i), values.get(col))


class TileAccumulator:
    """Partial aggregates of one batch of events, per entity key and tile, in memory:
    ``records[key][tile]`` is an ``array('d')`` record.

    ``add_event`` must see a partition's events in offset order (``last`` ties go to the
    later one); the event's column values are numbers or None (the decoder checked).

    Shortcut: ``add_event`` is Python source generated once per layout (straight-line
    slot updates, no per-slot loop or op dispatch): 1.1 µs per event against 2.9 µs for
    the generic loop over 9 slots (benchmarks/streaming.py, throughput); the generic
    form is ``merge`` below, and tests/unit/test_stream_windows.py holds both to the
    recomputation."""

    __slots__ = ("add_event", "layout", "records")

    def __init__(self, layout: TileLayout, attrs: Sequence[str] | None = None) -> None:
        """``attrs``: the attribute holding each of ``layout.columns`` on the events passed
        to ``add_event`` (default ``v0``, ``v1``, ...)."""
        self.layout = layout
        self.records: dict[str, dict[int, array[float]]] = {}
        names = (
            list(attrs) if attrs is not None else [COLUMN_ATTR.format(i) for i in range(len(layout.columns))]
        )
        self.add_event = _compile_adder(layout, self.records, names)

    def add(self, key: str, ts_us: int, values: Mapping[str, Any]) -> None:
        """One event given as a mapping (tests, tools; slower than ``add_event``)."""
        self.add_event(key, ts_us, _Values(values, self.layout.columns))

    def __len__(self) -> int:
        return sum(len(tiles) for tiles in self.records.values())


def _adder_source(layout: TileLayout, attrs: list[str]) -> str:
    columns = layout.columns
    body = ["def add_event(key, ts, ev):"]
    # Every value first, each made a float: a value that is no number raises here, before
    # the event has touched a record (a dead-lettered event must leave no trace in the tiles).
    for i in range(len(columns)):
        body += [f"    v{i} = ev.{attrs[i]}", f"    if v{i} is not None:", f"        v{i} = v{i} + 0.0"]
    body += [
        "    tile = ts // TILE_US",
        "    tiles = records.get(key)",
        "    if tiles is None:",
        "        tiles = records[key] = {}",
        "    rec = tiles.get(tile)",
        "    if rec is None:",
        "        rec = tiles[tile] = array('d', IDENTITY)",
        "        rec[0] = tile",
        "    if ts > rec[1]:",
        "        rec[1] = ts",
    ]
    for slot, col in enumerate(layout.slot_columns):
        if slot >= 2 and not col:
            body.append(f"    rec[{slot}] += 1.0")
    for i, col in enumerate(columns):
        v = f"v{i}"
        body.append(f"    if {v} is not None:")
        for slot, (op, c) in enumerate(zip(layout.ops, layout.slot_columns, strict=True)):
            if c != col:
                continue
            if op == COUNT:
                body.append(f"        rec[{slot}] += 1.0")
            elif op == ADD:
                body.append(f"        rec[{slot}] += {v}")
            elif op == MIN:
                body.append(f"        if {v} < rec[{slot}]: rec[{slot}] = {v}")
            elif op == MAX:
                body.append(f"        if {v} > rec[{slot}]: rec[{slot}] = {v}")
            elif op == LAST_TS:
                body.append(f"        if ts >= rec[{slot}]: rec[{slot}] = ts; rec[{slot + 1}] = {v}")
    return "\n".join(body) + "\n"


def _compile_adder(
    layout: TileLayout, records: dict[str, dict[int, array[float]]], attrs: list[str]
) -> Callable[[str, int, Any], None]:
    if not all(a.isidentifier() for a in attrs):
        raise ValueError(f"attribute names must be identifiers: {attrs}")
    namespace: dict[str, Any] = {
        "records": records, "array": array, "IDENTITY": list(layout.identity), "TILE_US": layout.tile_us,
    }  # fmt: skip
    exec(compile(_adder_source(layout, attrs), f"<tile adder {layout.ops}>", "exec"), namespace)
    return namespace["add_event"]  # type: ignore[no-any-return]


def merge(layout: TileLayout, old: Sequence[float], new: Sequence[float]) -> list[float]:
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
