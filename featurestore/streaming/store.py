"""The ``TileStore`` port: where a stream view's tiles and its consumer's marks live.

The processor (a thread, synchronous) writes one ``TileBatch`` per consumed batch: the
batch's tile records merge into the stored ones, and each partition's mark (the last
offset applied and the watermark) moves from the value the processor last saw to the
new one, all atomically. A mark that moved meanwhile (another processor took the
partition over and wrote) refuses the whole batch: nothing of it is applied, so an
event is never counted twice. Serving reads the tiles of many keys at once (async).

Adapters: ``MemoryTileStore`` here (one process: tests and the embedded demo) and
``RedisTileStore`` (``redis_store.py``); both pass ``tests/contract/test_tile_store.py``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol, runtime_checkable

from featurestore.model import FeatureView
from featurestore.streaming.tiles import TileLayout, merge, view_layout


class PartitionMark(NamedTuple):
    offset: int  # the last offset applied (-1: none yet)
    watermark_us: int  # the newest event time accepted from the partition
    # the partition's recent applied event times the watermark is judged with (turn.py),
    # oldest first; () where none were stored with the mark (a mark of before 2026-12-07)
    recent: tuple[int, ...] = ()


NO_MARK = PartitionMark(-1, -(2**62))


@dataclass(frozen=True, slots=True)
class TileBatch:
    topic: str
    # partition -> (the offset the processor last saw stored, the new mark)
    marks: Mapping[int, tuple[int, PartitionMark]]
    records: Mapping[str, Mapping[int, Sequence[float]]]  # entity key text -> tile -> partial record
    now_tile: int  # the processor's clock, for dropping tiles no window reaches any more
    events: int = field(default=0, compare=False)  # applied events in the batch (metrics)


# How far an event's time may be ahead of the clock it is judged by and still be a clock's
# skew: 60 s covers ordinary skew between hosts. It moves its partition's watermark only
# within this of its message's Kafka timestamp (turn.py); up to this + the view's longest
# window ahead of the processor's clock it is applied, in its future tile (further:
# malformed, decode.py), and its key is kept until that tile is served (``expiry_ms``). A
# processor's clock up to this ahead of a server's drops nothing its windows reach
# (``kept_tiles``, ``ttl_seconds``).
CLOCK_SKEW_US = 60_000_000


def kept_tiles(layout: TileLayout) -> int:
    """How many tiles back from its own clock's a write keeps (older ones it drops): those
    a window of a server with the writer's clock reaches, one of slack (``retention_tiles``),
    and ``CLOCK_SKEW_US`` more. Windows are read by the serving process's clock, the drop
    goes by the processor's: a processor clock ahead by more than the slack (two tiles)
    dropped events the servers' longest window still covered (review s58: 30 s ahead with
    10 s tiles emptied a 5-minute ``last``). The cost: up to ceil(60 s / tile) more tiles
    per key (docs/streaming.md, "Tiles expire")."""
    return layout.retention_tiles + -(-CLOCK_SKEW_US // layout.tile_us)


def ttl_seconds(view: FeatureView) -> int:
    """How long an idle key's tiles are kept: the longest window, one tile, the lateness,
    and ``CLOCK_SKEW_US`` (a server whose clock is behind the writer's still serves the
    key's newest tile that much longer). A key whose newest tile is ahead of the processor's
    clock is kept that much longer (``expiry_ms``), so its event is served once its time comes."""
    s = view.stream
    assert s is not None
    return s.max_window_seconds + s.tile_seconds + s.allowed_lateness_seconds + CLOCK_SKEW_US // 1_000_000


def ahead_seconds(view: FeatureView) -> int:
    """The most a key's expiry is extended: its newest tile at most ``CLOCK_SKEW_US`` +
    the longest window ahead of the processor's clock, plus the tile that starts in."""
    s = view.stream
    assert s is not None
    return CLOCK_SKEW_US // 1_000_000 + s.max_window_seconds + s.tile_seconds


def expiry_ms(ttl_ms: int, tile_ms: int, newest_tile: int, now_tile: int) -> int:
    """An idle key's time to live after a write (ms): ``ttl_ms``, and as many tiles more as
    its newest tile is ahead of the writer's clock (``now_tile``): the window that tile
    starts is served in full. (The Redis script computes the same.)"""
    return ttl_ms + max(0, newest_tile - now_tile) * tile_ms


# How much longer than any tile the marks of a view live without a write (Redis: a TTL
# each batch renews). Every batch renews the marks with its tiles, so marks that expire
# outlived every tile written with them: a processor then reads the topic from its start
# again, whose events, all older than this idle time, are outside every window and
# dropped by the write. 7 days is Kafka's default retention: by then little is left to read.
MARKS_EXTRA_SECONDS = 7 * 86_400


def marks_ttl_seconds(view: FeatureView) -> int:
    """How long a view's marks are kept without a write (after the layout changed: for
    good): the tiles' longest idle time (a key ahead included) + ``MARKS_EXTRA_SECONDS``."""
    return ttl_seconds(view) + ahead_seconds(view) + MARKS_EXTRA_SECONDS


class Eviction(NamedTuple):
    """A store's eviction settings (Redis: ``maxmemory-policy``, ``maxmemory``)."""

    policy: str  # "noeviction": it never drops a key on its own
    max_bytes: int  # 0: no limit, so no eviction until one is set


@runtime_checkable
class TileStore(Protocol):
    def marks(self, view: FeatureView, topic: str) -> dict[int, PartitionMark]:
        """The stored mark of every partition of ``topic`` applied to the view."""
        ...

    def apply(self, view: FeatureView, batch: TileBatch) -> str | None:
        """Apply the batch atomically; None when done, else why it was refused (a mark moved)."""
        ...

    async def read(self, view: FeatureView, keys: Sequence[str]) -> list[bytes | None]:
        """Each key's tile records, concatenated (any order); None for a key without any."""
        ...

    def table_uri(self, view: FeatureView) -> str: ...

    def eviction(self) -> Eviction | None:
        """Whether the store may drop keys on its own: its policy and memory limit; None
        when it cannot be told (docs/streaming.md: the store must not evict)."""
        ...

    def reset(self) -> None:
        """Drop idle read connections (the server was down: they are dead); over at once."""
        ...

    def close(self) -> None: ...

    async def aclose(self) -> None: ...


class MemoryTileStore:
    """Tiles in this process's memory; the processor and the join must share the object."""

    def __init__(self, name: str = "memory") -> None:
        self.name = name
        self._lock = threading.Lock()
        self._tiles: dict[tuple[str, str], dict[str, dict[int, list[float]]]] = {}
        self._expires: dict[tuple[str, str, str], float] = {}  # key -> when idle too long (monotonic)
        self._marks: dict[tuple[str, str, str], dict[int, PartitionMark]] = {}

    def marks(self, view: FeatureView, topic: str) -> dict[int, PartitionMark]:
        with self._lock:
            return dict(self._marks.get((view.name, view.layout, topic), {}))

    def apply(self, view: FeatureView, batch: TileBatch) -> str | None:
        layout = view_layout(view)
        with self._lock:
            marks = self._marks.setdefault((view.name, view.layout, batch.topic), {})
            for partition, (expected, _) in batch.marks.items():
                stored = marks.get(partition, NO_MARK).offset
                if stored != expected:
                    return f"partition {partition}: stored offset {stored}, expected {expected}"
            for partition, (_, mark) in batch.marks.items():
                marks[partition] = mark
            tiles = self._tiles.setdefault((view.name, view.layout), {})
            now = time.monotonic()
            oldest = batch.now_tile - kept_tiles(layout)
            ttl_ms, tile_ms = ttl_seconds(view) * 1000, layout.tile_us // 1000
            for key, records in batch.records.items():
                if max(records) < oldest:  # no window reaches them: nothing written (as in Redis)
                    continue
                by_tile = tiles.setdefault(key, {})
                for tile, record in records.items():
                    old = by_tile.get(tile)
                    by_tile[tile] = list(record) if old is None else merge(layout, old, record)
                for t in [t for t in by_tile if t < oldest]:
                    del by_tile[t]
                ms = expiry_ms(ttl_ms, tile_ms, max(by_tile), batch.now_tile)
                self._expires[(view.name, view.layout, key)] = now + ms / 1000
        return None

    async def read(self, view: FeatureView, keys: Sequence[str]) -> list[bytes | None]:
        layout = view_layout(view)
        tiles = self._tiles.get((view.name, view.layout), {})
        now = time.monotonic()
        out: list[bytes | None] = []
        for key in keys:
            by_tile = tiles.get(key)
            if not by_tile or self._expires.get((view.name, view.layout, key), 0.0) < now:
                out.append(None)
                continue
            out.append(b"".join(layout.pack(r) for r in list(by_tile.values())))
        return out

    def eviction(self) -> Eviction | None:
        return Eviction("noeviction", 0)

    def table_uri(self, view: FeatureView) -> str:
        return f"memory://{self.name}/{view.name}/tiles"

    def reset(self) -> None:
        pass

    def close(self) -> None:
        pass

    async def aclose(self) -> None:
        pass
