"""Stream views' windows at read time: the three ways ``windows.compute`` assembles them.

The stream benchmark's view (``benchmarks/streaming.py``: 5 functions x 3 windows over
1-minute tiles, 8 slots a record) and its data (200,000 events over 10,000 users in the
last 2 hours: ~19 records a user), read at batch 1, 10, 100 and 1,000 (uniform random
users, the same reads for every path): plain Python (record by record, the path for small
reads while the compiled pass is not loaded), numpy (~25 array operations a read) and the
compiled pass (``featurestore/streaming/kernel.py``, numba). Every path's answers are
checked against numpy's before timing. In process, one thread: µs per read, best of
``--repeat`` runs of ``--reads`` reads.

    python -m benchmarks.stream_windows [--reads 200] [--repeat 7]
"""

from __future__ import annotations

import argparse
import math
import random
import sys
import time
from typing import Any

import numpy as np

from benchmarks.provenance import machine
from benchmarks.streaming import USERS, definitions
from featurestore.definitions.parser import parse_definitions
from featurestore.streaming import windows
from featurestore.streaming.tiles import TileAccumulator, TileLayout, view_layout

BATCHES = (1, 10, 100, 1000)
PATHS = ("python", "numpy", "compiled")


def data(now_us: int) -> tuple[TileLayout, dict[str, bytes]]:
    defs = parse_definitions(definitions("w", "w", ("count", "sum", "avg", "max", "last"), False), source="b")
    layout = view_layout(defs.views["activity"])
    rng = np.random.default_rng(3)
    acc = TileAccumulator(layout)
    users = rng.integers(0, USERS, 200_000).tolist()
    times = (now_us - rng.integers(0, 7_200_000_000, 200_000)).tolist()
    for user, ts, amount in zip(users, times, rng.uniform(1, 100, 200_000).tolist(), strict=True):
        acc.add(str(user), ts, {"amount": amount})
    blobs = {
        key: b"".join(layout.pack(r) for _, r in sorted(tiles.items())) for key, tiles in acc.records.items()
    }
    return layout, blobs


def use(path: str) -> None:
    windows.SMALL_READ_RECORDS = 10**9 if path == "python" else 0
    if path == "compiled":
        from featurestore.streaming import kernel

        windows.use_kernel(kernel.reduce_windows)
    else:
        windows.use_kernel(None)


def alike(a: windows.Windows, b: windows.Windows) -> bool:
    if (a.found, a.event_ts_us) != (b.found, b.event_ts_us):
        return False
    return all(
        (x is None and y is None) or (x is not None and y is not None and math.isclose(x, y, rel_tol=1e-9))
        for ca, cb in zip(a.columns, b.columns, strict=True)
        for x, y in zip(ca, cb, strict=True)
    )


def measure(reads: int, repeat: int) -> dict[tuple[int, str], tuple[float, int]]:
    now_us = time.time_ns() // 1000
    layout, blobs = data(now_us)
    wanted = list(range(len(layout.aggregations)))
    rnd = random.Random(1)
    out: dict[tuple[int, str], tuple[float, int]] = {}
    for batch in BATCHES:
        requests = [[blobs.get(str(rnd.randrange(USERS))) for _ in range(batch)] for _ in range(reads)]
        records = sum(len(b) for r in requests for b in r if b) // layout.record_bytes // reads
        use("numpy")
        reference = [windows.compute(layout, r, now_us, wanted) for r in requests]
        for path in PATHS:
            use(path)
            if not all(
                alike(windows.compute(layout, r, now_us, wanted), ref)
                for r, ref in zip(requests, reference, strict=True)
            ):
                raise SystemExit(f"{path} answers differ from numpy's at batch {batch}")
            best = math.inf
            for _ in range(repeat):
                t0 = time.perf_counter()
                for r in requests:
                    windows.compute(layout, r, now_us, wanted)
                best = min(best, (time.perf_counter() - t0) / reads)
            out[(batch, path)] = (best * 1e6, records)
    use("numpy")
    return out


def render(results: dict[tuple[int, str], Any], cmd: str) -> list[str]:
    lines = [
        "## Stream windows at read time: Python, numpy, the compiled pass",
        "",
        f"* Run: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; command: `{cmd}`",
        f"* {machine()}",
        "* The stream benchmark's view (5 functions x 3 windows, 1-minute tiles) and data (~19 tile records "
        "a user); `windows.compute` per read, one thread, best of the repeats; every path's answers checked "
        "against numpy's first. In serving, reads under 48 records take the Python path while the compiled "
        "pass is not loaded, numpy the others; once it is, the compiled pass takes every read.",
        "",
        "| batch | records a read | Python µs | numpy µs | compiled µs | compiled vs numpy |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for batch in BATCHES:
        py, records = results[(batch, "python")]
        npy, _ = results[(batch, "numpy")]
        comp, _ = results[(batch, "compiled")]
        lines.append(
            f"| {batch:,} | {records:,} | {py:,.1f} | {npy:,.1f} | {comp:,.1f} | {npy / comp:.1f}x faster |"
        )
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--reads", type=int, default=200)
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--no-write", action="store_true", help="print only; leave benchmarks/results alone")
    a = ap.parse_args()
    results = measure(a.reads, a.repeat)
    lines = render(results, " ".join(["python -m benchmarks.stream_windows", *sys.argv[1:]]))
    if a.no_write:
        print("\n".join(lines))
        return 0
    from benchmarks.report import publish

    publish("stream-windows.md", lines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
