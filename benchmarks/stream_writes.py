"""What one stream batch write holds Redis for, by how many tiles its keys already hold.

Redis runs the processor's apply script (featurestore/streaming/redis_store.py) alone:
every other client of that Redis, the plain views' joins included, waits while it runs.
For the stream benchmark's view (count, sum, max, last of ``amount`` over 5m, 1h, 24h;
1-minute tiles) on a Redis of its own: KEYS keys are first filled with TILES one-minute
tiles each (a key that has seen events every minute for TILES minutes; 1,440 = the 24-hour
window's day; and STALE older ones no window reaches any more), then a batch of EVENTS
events, one per key, appends the previous minute's tile (the keys' strings then have the
spare room a running processor's have), and the measured batch, the same in the current
tile, is applied. Per shape, the median of ``--rounds`` batches (each on freshly filled keys): the
script's time in Redis (its SLOWLOG entry; Redis's own clock), and the longest a GET of
another client, issued every 0.5 ms meanwhile, waited.

    python -m benchmarks.stream_writes [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks import report
from benchmarks.provenance import run_line, started
from benchmarks.streaming import definitions
from tests.servers import RedisServer

# (tiles a window reaches, tiles no window reaches any more, keys, events)
SHAPES = [
    (30, 0, 3_300, 5_000),
    (360, 0, 3_300, 5_000),
    (1_440, 0, 3_300, 5_000),
    (1_440, 500, 3_300, 5_000),  # every key past the trim threshold at once (a quarter: 481)
    (1_440, 0, 500, 500),
]
LATE_SHAPES = [(120, 5_000), (1_440, 3_300)]  # (tiles, keys): one event per key 30 tiles back


def one_batch(url: str, tiles: int, stale: int, keys: int, events: int, late: int = 0) -> dict[str, float]:
    from redis import Redis

    from featurestore.definitions.parser import parse_definitions
    from featurestore.streaming.redis_store import RedisTileStore
    from featurestore.streaming.store import PartitionMark, TileBatch
    from featurestore.streaming.tiles import TileAccumulator, view_layout

    view = parse_definitions(definitions("w", "t", ("count", "sum", "max", "last"), False), source="b").views[
        "activity"
    ]
    layout = view_layout(view)
    r = Redis.from_url(url)
    r.flushall()
    store = RedisTileStore("default", "w", url)
    now_us = time.time_ns() // 1000
    now_tile = now_us // layout.tile_us
    prefix = f"fs:w:activity:t{view.layout}:k:"
    pipe = r.pipeline(transaction=False)
    for k in range(keys):  # the key's tiles, as the script keeps them: sorted records
        acc = TileAccumulator(layout)
        for t in range(now_tile - 1 - tiles - stale, now_tile - 1):  # (the oldest ``stale``: no window's)
            acc.add(str(k), t * layout.tile_us + 1, {"amount": 1.0})
        recs = acc.records[str(k)]
        pipe.set(prefix + str(k), b"".join(layout.pack(recs[t]) for t in sorted(recs)), px=3_600_000)
        if k % 500 == 499:
            pipe.execute()
    pipe.execute()

    def batch(tile: int, offset: int) -> TileBatch:
        acc = TileAccumulator(layout)
        for i in range(events):
            acc.add(str(i % keys), tile * layout.tile_us + i, {"amount": 2.0})
        return TileBatch("t", {0: (offset - 1, PartitionMark(offset, now_us))}, acc.records, now_tile)

    # A batch into the previous tile first: it appends a tile to every key, whose string then
    # has the spare room a running processor's keys have (Redis grows it greedily).
    assert store.apply(view, batch(now_tile - 1, 0)) is None
    r.config_set("slowlog-log-slower-than", 500)  # µs: the script, not the other client's GETs
    r.slowlog_reset()
    waits: list[float] = []
    stop = threading.Event()

    def other_client() -> None:
        c = Redis.from_url(url)
        while not stop.is_set():
            t0 = time.perf_counter()
            c.get("elsewhere")
            waits.append(time.perf_counter() - t0)
            time.sleep(0.0005)
        c.close()

    thread = threading.Thread(target=other_client)
    thread.start()
    time.sleep(0.1)
    assert store.apply(view, batch(now_tile - late, 1)) is None  # (late: a tile it holds, that far back)
    time.sleep(0.1)
    stop.set()
    thread.join()
    scripts = [e["duration"] for e in r.slowlog_get(128) if e["command"].upper().startswith(b"EVALSHA")]
    r.config_set("slowlog-log-slower-than", 10_000)
    value = r.strlen(prefix + "0")
    store.close()
    r.close()
    return {"script_ms": max(scripts) / 1000, "other_wait_ms": max(waits) * 1000, "value_bytes": value}


def render(rows: list[dict[str, Any]], run: str, command: str) -> list[str]:
    out = [
        "## Stream batch writes: what one holds Redis for, by tiles per key (review round 20)",
        "",
        run,
        f"* Command: `{command}`",
        "* The stream benchmark's view (12 aggregations, 1-minute tiles), a Redis of its own; keys filled",
        "  with TILES tiles each (and older ones no window reaches), a batch appending the previous",
        "  minute's tile to each, then the measured batch of one event per key in the current tile (or,",
        "  late, into a tile it holds 30 back); medians of the rounds. Script: its SLOWLOG time. Other",
        "  client: the longest a GET issued every 0.5 ms waited.",
        "",
        "| tiles per key (no window's) | key size after | keys x events in the batch | into | script (ms) "
        "| another client waited (ms) "
        "| events per second of script |",
        "|---:|---:|---|---|---:|---:|---:|",
    ]
    for r in rows:
        out.append(
            f"| {r['tiles']:,} ({r['stale']:,}) | {r['value_bytes'] / 1000:,.1f} KB | {r['keys']:,} x {r['events']:,} "
            f"| {'the current tile' if not r['late'] else str(r['late']) + ' tiles back (late)'} "
            f"| {r['script_ms']:.1f} | {r['other_wait_ms']:.1f} | {r['events'] / r['script_ms'] * 1000:,.0f} |"
        )
    out += [
        "",
        "Before the in-place write (each touched key read whole, merged and written back whole), the",
        "current-tile shapes without stale records held Redis 42.6, 312.9, 1,218.8 and 210.8 ms (round 20's",
        "measurement, 2026-12-05, on the code of d900cad: keys filled, no batch before): the cost grew",
        "with what the keys held. With the in-place write but no trim budget, every key of the stale",
        "shape rewritten in one batch held Redis 482-496 ms (review round 21).",
    ]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    start = started()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        redis = RedisServer(Path(tmp)).start()
        try:
            shapes = [(*shape, 0) for shape in SHAPES] + [(t, 0, k, k, 30) for t, k in LATE_SHAPES]
            for tiles, stale, keys, events, late in shapes:
                runs = [one_batch(redis.url, tiles, stale, keys, events, late) for _ in range(a.rounds)]
                row = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
                rows.append(
                    {"tiles": tiles, "stale": stale, "keys": keys, "events": events, "late": late, **row}
                )
                print(rows[-1], flush=True)
        finally:
            redis.stop()
    report.publish(
        "stream-writes.md",
        render(rows, run_line(start), f"python -m benchmarks.stream_writes --rounds {a.rounds}"),
    )


if __name__ == "__main__":
    main()
