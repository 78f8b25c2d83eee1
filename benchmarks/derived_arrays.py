"""Where derived features should leave the kernel as arrays: the join's CPU per request
with the array path (``featurestore.derived.evaluate.ARRAY_ROWS``: a float64 derived
feature served as its row of the kernel's output, NaN = null) against the list path
(Python floats, None = null), by batch size.

The demo server's HTTP path in process, as ``benchmarks.derived_cpu`` drives it (memory
stores); ranker_v2 (16 stored + the 4 derived features) on two connections, one request
of each in turn with ``ARRAY_ROWS`` set for it: 0 (arrays at every size) or past the
batch (lists); the same bodies on both, a pair's two requests asking different keys.
Reported: CPU per request of each, and what arrays save. Work a request leaves to the
event loop for later (done-callbacks, freeing its objects when the loop gets to them)
is charged to the request that runs then, of the other path: that pulls the difference
toward zero, and differences under ~1 µs are within this harness's noise.

    python -m benchmarks.derived_arrays [--requests 8000] [--batches 2,4,8,12,16,32,100]

Batch 1 is not among them: one entity row takes neither path (the kernels' one-row
entry, ``Kernel.row``).

Writes benchmarks/results/derived-arrays.md (stitched into RESULTS.md).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from benchmarks import derived_cpu, report
from benchmarks.derived import OURS
from benchmarks.run import log
from featurestore.demo.data import FEATURE_REFS, ensure_demo_data
from featurestore.derived import evaluate

HERE = Path(__file__).resolve().parent


async def measure(make: Any, batch: int, n: int) -> dict[str, float]:
    bodies = derived_cpu.requests([*FEATURE_REFS, *OURS], batch)
    conns = {"arrays": derived_cpu.Connection(make), "lists": derived_cpu.Connection(make)}
    limits = {"arrays": 0, "lists": batch + 1}
    spent = {"arrays": 0.0, "lists": 0.0}
    pool, half = len(bodies), len(bodies) // 2
    saved = evaluate.ARRAY_ROWS
    try:
        for i in range(pool + n):  # the first pass warms both
            order = ("arrays", "lists") if i % 2 else ("lists", "arrays")
            for k, path in enumerate(order):
                evaluate.ARRAY_ROWS = limits[path]
                t = await conns[path].request(bodies[(i + k * half) % pool])
                if i >= pool:
                    spent[path] += t
    finally:
        evaluate.ARRAY_ROWS = saved
    return {path: s / n * 1e6 for path, s in spent.items()}


def render(results: dict[int, dict[str, float]], command: str) -> list[str]:
    lines = [
        "### Derived features: arrays or lists out of the kernel, by batch size",
        "",
        f"* Run: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; command: `{command}`",
        "* ranker_v2 (16 stored + 4 derived) in the demo server's HTTP path in process, memory stores;",
        "  one request of each path in turn; CPU time of the serving thread. The server uses arrays from",
        f"  {evaluate.ARRAY_ROWS} rows on (`featurestore/derived/evaluate.py`).",
        "",
        "| batch | CPU µs/request, lists | arrays | arrays save |",
        "|---:|---:|---:|---:|",
    ]
    for batch, r in results.items():
        saved = r["lists"] - r["arrays"]
        lines.append(
            f"| {batch} | {r['lists']:,.1f} | {r['arrays']:,.1f} | {saved:+.1f} µs ({100 * saved / r['lists']:+.1f}%) |"
        )
    return lines


async def main(a: argparse.Namespace) -> None:
    data = a.out / "data"
    ensure_demo_data(data)
    make = await derived_cpu.serving_protocol(data)
    results: dict[int, dict[str, float]] = {}
    for batch in (int(b) for b in a.batches.split(",")):
        n = max(200, a.requests * 10 // max(batch, 10))  # ~the same time per point
        results[batch] = await measure(make, batch, n)
        log(f"arrays b={batch}: {results[batch]}")
    command = f"python -m benchmarks.derived_arrays --requests {a.requests} --batches {a.batches}"
    report.publish("derived-arrays.md", render(results, command))


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--requests", type=int, default=8000, help="request pairs at batch 10 (scaled by batch)")
    ap.add_argument("--batches", default="2,4,8,12,16,32,100")
    ap.add_argument("--out", type=Path, default=HERE / "out")
    args = ap.parse_args()
    if any(int(b) < 2 for b in args.batches.split(",")):
        ap.error("--batches: every batch at least 2 (one row takes neither path: Kernel.row)")
    import uvloop

    uvloop.run(main(args))
