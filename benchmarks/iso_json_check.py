"""What the years check before orjson's timestamps cost a join, request by request in one
serving process over a real Redis (cache off): ``featurestore/api/timestamps.py``'s
``iso_json`` as it is, against the same function with the check it had until 2026-12-06
(a scan for None and two numpy reductions before orjson; kept here as ``checked``).

Why beside ``benchmarks.ab``: on this shared 2-core VM its wrk rounds of one tree read
40-100% apart on the evening of the change, so a difference of a few percent cannot be
read from them. Here ``benchmarks.derived_cpu``'s harness (connection guard, uvicorn's
protocol, the HTTP API, the join, the JSON response) serves every demo feature of B users
(uniform keys, no body repeated within the pool), the JSON codec's ``iso_json`` swapped
between the two before each request, one of each in turn, the order alternating, each
timed in CPU time of the serving thread; drift and other tenants hit both alike. One
request at a time: no two joins' Redis reads share a write.

    python -m benchmarks.iso_json_check [--requests 6000] [--blocks 10]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from benchmarks import report
from benchmarks.cache_cpu import bodies, runtime
from benchmarks.derived_cpu import Connection, protocol_factory, summary
from benchmarks.provenance import run_line, started
from benchmarks.run import log
from benchmarks.stack import config, materialize, redis
from featurestore.api import json_codec, timestamps

POOL = 2000  # request bodies per batch size, cycled
SWAPPED = "iso_json"  # the JSON codec's global, looked up per response


def checked(values: Sequence[int | None]) -> bytes:
    """``iso_json`` before 2026-12-06: the None scan and the years 1-9999 check first."""
    if values and None not in values:
        us = np.fromiter(values, dtype=np.int64, count=len(values))
        if us.min() >= timestamps._YEAR_1 and us.max() < timestamps._YEAR_10000:
            try:
                return orjson.dumps(us.view("datetime64[us]"), option=timestamps._DATETIME64)
            except TypeError:
                pass
    return orjson.dumps(timestamps.iso_list(values))


async def measure(conn: Connection, batch: int, n: int, blocks: int) -> dict[str, Any]:
    gen = bodies("uniform", batch, 11)
    pool = [next(gen) for _ in range(POOL)]
    unchecked = timestamps.iso_json
    for body in pool[:200]:  # warm-up: plans, the rendered-timestamp cache
        await conn.request(body)
    per = max(1, n // blocks)
    before, now = [0.0] * blocks, [0.0] * blocks
    try:
        for i in range(per * blocks):
            k = i // per
            pair = ((checked, before), (unchecked, now)) if i % 2 else ((unchecked, now), (checked, before))
            for j, (fn, acc) in enumerate(pair):
                setattr(json_codec, SWAPPED, fn)
                acc[k] += await conn.request(pool[(2 * i + j) % POOL])
    finally:
        setattr(json_codec, SWAPPED, unchecked)
    # derived_cpu's figures of a pair, "without" being the code as it is: its QPS cost is
    # what dropping the check saved (1 - CPU without / CPU with), per block too
    figures = summary(batch, now, before, per * blocks, (0, 0))
    return {
        "batch": batch,
        "cpu_us": figures["cpu_us"][::-1],  # with the check, without
        "saved_pct": figures["cost_pct"],
        "blocks": figures["block_cost_pct"],
    }


async def main(a: argparse.Namespace) -> None:
    from featurestore import collector

    start = started()
    results = []
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        work = Path(tmp)
        url = stack.enter_context(redis(work))
        cfg = config(work, url, "off", False)
        materialize(work, cfg)
        cfg_, rt = await runtime(cfg, apply=True)
        try:
            conn = Connection(protocol_factory(cfg_, rt))
            collector.serve()  # as a serving worker after start-up
            for batch, scale in ((100, 1), (10, 3), (1, 6)):
                r = await measure(conn, batch, a.requests * scale, a.blocks)
                log(f"iso_json check b={batch}: {r['cpu_us'][0]} -> {r['cpu_us'][1]} us, -{r['saved_pct']}%")
                results.append(r)
        finally:
            await rt.close()
    command = f"python -m benchmarks.iso_json_check --requests {a.requests} --blocks {a.blocks}"
    lines = [
        "### Event timestamps: the years check before orjson against none, request-interleaved",
        "",
        run_line(start),
        f"* Command: `{command}`; one serving process, one Redis, cache off, every demo feature of B",
        "  users; the check (before 2026-12-06) and none alternating request by request; CPU time of",
        f"  the serving thread; per block: the saving over each of {a.blocks} consecutive blocks.",
        "",
        "| batch | CPU µs/request, with the check | without | saved | per block (min / median / max) |",
        "|---:|---:|---:|---:|---|",
    ]
    for r in results:
        lo, med, hi = r["blocks"]
        lines.append(
            f"| {r['batch']} | {r['cpu_us'][0]:,.1f} | {r['cpu_us'][1]:,.1f} | {r['saved_pct']:.1f}% "
            f"| {lo:.1f}% / {med:.1f}% / {hi:.1f}% |"
        )
    report.publish("iso-json-check.md", lines)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--requests", type=int, default=6000, help="pairs at batch 100 (x3 at 10, x6 at 1)")
    ap.add_argument("--blocks", type=int, default=10)
    import uvloop

    t0 = time.monotonic()
    uvloop.run(main(ap.parse_args()))
    log(f"iso_json check: {time.monotonic() - t0:.0f} s")
