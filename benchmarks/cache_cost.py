"""What a cache lookup costs against the round trip it can save: server CPU per join, in
process, with the cache off, with every read consulting a cache that holds every key, and
with the default (reads too large for their lookups to pay go past the cache:
``cache.fills_per_round_trip``, featurestore/bypass.py).

One Redis (started here on a free port) holds the demo's two user views; three runtimes
in this process read it: ``off`` (cache: false), ``consult`` (fills_per_round_trip 0)
and ``default``. Both caches are first filled with all 100,000 users by batch-10 joins
(TTL 10 minutes, so nothing expires while measuring): every lookup hits, the case most
favourable to the cache. Then, per batch size, ``--rounds`` interleaved rounds of
``--requests`` joins (the order alternates) through the HTTP join endpoint's handler
(JSON in and out, no socket), uniform random users; the figure is this process's CPU
time per join (``time.process_time``; Redis's own CPU is not in it, which favours the
cache), median over rounds.

    python -m benchmarks.cache_cost [--batches 1,10,16,32,50,100] [--rounds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import random
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from benchmarks.stack import config, materialize, redis
from featurestore.api.http import JoinEndpoint
from featurestore.cache import CachedSource
from featurestore.config import load_config
from featurestore.demo.data import FEATURE_REFS
from featurestore.runtime import Runtime, build_runtime

HERE = Path(__file__).resolve().parent
N_USERS = 100_000
VARIANTS = {
    "off": "",
    "consult": "cache: {ttl_seconds: 600, fills_per_round_trip: 0}\n",
    "default": "cache: {ttl_seconds: 600}\n",
}


def body(users: list[int]) -> bytes:
    return json.dumps({"entities": {"user_id": users}, "features": list(FEATURE_REFS)}).encode()


async def cpu_per_join(endpoint: JoinEndpoint, bodies: list[bytes]) -> float:
    t = time.process_time()
    for b in bodies:
        status, *_ = await endpoint(b, None, None, None)
        if status != 200:
            raise RuntimeError(f"join answered {status}")
    return (time.process_time() - t) / len(bodies) * 1e6


def hit_rate(rt: Runtime) -> float:
    """The default store's recent key hit rate of user_activity (NaN without a cache)."""
    store = rt.stores["default"]
    return store.bypass.hit_rate("user_activity") if isinstance(store, CachedSource) else float("nan")


async def measure(work: Path, a: argparse.Namespace) -> list[dict[str, Any]]:
    runs: list[dict[str, Any]] = []
    with ExitStack() as stack:
        url = stack.enter_context(redis(work))
        paths = {v: config(work, url, v, v != "off", extra) for v, extra in VARIANTS.items()}
        materialize(work, paths["off"])
        runtimes = {v: await build_runtime(load_config(p)) for v, p in paths.items()}
        try:
            endpoints = {v: JoinEndpoint(rt.engine, 5_000) for v, rt in runtimes.items()}
            fill = [body(list(range(i, i + 10))) for i in range(1, N_USERS + 1, 10)]
            for v in ("consult", "default"):
                await cpu_per_join(endpoints[v], fill)
            gc.collect()
            gc.freeze()  # as the server does after start-up
            rng = random.Random(7)
            for batch in a.batches:
                for rnd in range(a.rounds):
                    bodies = [
                        body([rng.randint(1, N_USERS) for _ in range(batch)]) for _ in range(a.requests)
                    ]
                    order = list(VARIANTS) if rnd % 2 == 0 else list(reversed(VARIANTS))
                    for v in order:
                        runs.append(
                            {"variant": v, "batch": batch, "cpu_us": await cpu_per_join(endpoints[v], bodies)}
                        )
                print(f"batch {batch}: done", file=sys.stderr, flush=True)
            runs.append({"variant": "consult", "batch": 0, "hit_rate": hit_rate(runtimes["consult"])})
        finally:
            for rt in runtimes.values():
                await rt.close()
    return runs


def render(runs: list[dict[str, Any]], a: argparse.Namespace) -> list[str]:
    hit = next(r["hit_rate"] for r in runs if r["batch"] == 0)
    out = [
        f"In process, one Redis on loopback, both caches holding all {N_USERS:,} users of the two views "
        f"(hit rate of the consulting cache at the end: {hit:.1%}); server CPU per join (µs), "
        f"median of {a.rounds} interleaved rounds of {a.requests} joins; Redis's own CPU not included.",
        "",
        "| batch | keys read | cache off | every read consults | default (bypass) | consults vs off | default vs off |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for batch in a.batches:
        med = {
            v: statistics.median(r["cpu_us"] for r in runs if r["variant"] == v and r["batch"] == batch)
            for v in VARIANTS
        }
        out.append(
            f"| {batch} | {2 * batch} | {med['off']:.0f} | {med['consult']:.0f} | {med['default']:.0f} | "
            f"{med['consult'] / med['off'] - 1:+.1%} | {med['default'] / med['off'] - 1:+.1%} |"
        )
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument(
        "--batches", type=lambda s: [int(x) for x in s.split(",")], default=[1, 10, 16, 32, 50, 100]
    )
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--requests", type=int, default=300)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        runs = asyncio.run(measure(Path(tmp), a))
    cmd = " ".join(["python -m benchmarks.cache_cost", *sys.argv[1:]])
    lines = ["## Cache lookups against the round trip (issue 16, requirement 2)", "", f"`{cmd}`", ""]
    lines += render(runs, a)
    part = HERE / "results" / "cache_cost.md"
    part.parent.mkdir(exist_ok=True)
    part.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    from benchmarks.report import stitch

    stitch()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
