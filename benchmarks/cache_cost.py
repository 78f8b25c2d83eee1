"""What the row cache costs and saves, per join: server CPU in process, with the cache off,
with every read consulting it, and with the default (a read too unlikely to be answered
in full for its fills to pay goes past it: ``cache.fills_per_round_trip``,
featurestore/bypass.py), plus the two figures the default is derived from.

One Redis (started here on a free port) holds the demo's two user views; three runtimes
in this process read it: ``off`` (cache: false), ``consult`` (fills_per_round_trip 0)
and ``default``. Joins go through the HTTP join endpoint's handler (JSON in and out, no
socket), uniform random users; the figure is the event loop thread's CPU time per join
(``time.thread_time``; Redis's own CPU is not in it, which favours the cache), median of
``--rounds`` interleaved rounds (the order alternates) of ``--requests`` joins.

1. Full cache: both caches first hold all 100,000 users (TTL 10 minutes, so nothing
   expires), filled by batch-1 joins that all consult, and the default's rates are
   brought to >= 99% by batch-1 joins (consulting too): every lookup can hit, the case
   most favourable to the cache. The round trip
   a full hit saves is the batch-1 difference between ``off`` and ``consult``.
2. Warmed by its own traffic: fresh runtimes with a 5 s TTL (so trials, one per TTL,
   happen within the run), each warmed by ``--warmup`` seconds (>= 3 TTLs) of the batch
   being measured, so the default's rates are the ones that batch produces; the hit rate
   of each cache's user_activity at the end is printed beside.
3. A fill: ``LRUCache.put_many`` of keys not cached into a full 200,000-row cache with
   TinyLFU, its rows expired (every fill evicts) or live (admission decides), µs a key.

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
from contextlib import AsyncExitStack, ExitStack
from pathlib import Path
from typing import Any

from benchmarks.provenance import run_line, started
from benchmarks.stack import config, materialize, redis
from featurestore.admission import FrequencySketch
from featurestore.api.http import JoinEndpoint
from featurestore.cache import CachedSource, LRUCache
from featurestore.config import load_config
from featurestore.demo.data import FEATURE_REFS
from featurestore.factories import FILLS_PER_ROUND_TRIP
from featurestore.runtime import Runtime, build_runtime

N_USERS = 100_000
VARIANTS = ("off", "consult", "default")


def body(users: list[int]) -> bytes:
    return json.dumps({"entities": {"user_id": users}, "features": list(FEATURE_REFS)}).encode()


def bodies(rng: random.Random, batch: int, count: int) -> list[bytes]:
    return [body([rng.randint(1, N_USERS) for _ in range(batch)]) for _ in range(count)]


async def cpu_per_join(endpoint: JoinEndpoint, reqs: list[bytes]) -> float:
    # The event loop's thread only: the runtimes' other threads (gRPC, exporters) are not
    # the join's (the three runtimes' loop tasks still are).
    t = time.thread_time()
    for b in reqs:
        status, *_ = await endpoint(b, None, None, None)
        if status != 200:
            raise RuntimeError(f"join answered {status}")
    return (time.thread_time() - t) / len(reqs) * 1e6


def cached(rt: Runtime) -> CachedSource:
    store = rt.stores["default"]
    assert isinstance(store, CachedSource)
    return store


def skipped(rt: Runtime) -> int:
    """Reads the default store sent past its cache so far, skipped or on trial (a trial's
    read goes to the store for every key too, looking up only its sampled keys); 0
    without a cache."""
    store = rt.stores["default"]
    return store.bypass.skipped + store.bypass.tried if isinstance(store, CachedSource) else 0


async def runtimes_of(stack: AsyncExitStack, paths: dict[str, Path]) -> dict[str, Runtime]:
    """One runtime per config, each closed when ``stack`` closes (also if a later one fails)."""
    out = {}
    for v, p in paths.items():
        out[v] = rt = await build_runtime(load_config(p))
        stack.push_async_callback(rt.close)
    return out


def rate(rt: Runtime, view: str = "user_activity") -> float:
    """The default store's recent key hit rate of ``view`` (of the keys it looked up)."""
    store = rt.stores["default"]
    return store.bypass.hit_rate(view) if isinstance(store, CachedSource) else float("nan")


def rates(runtimes: dict[str, Runtime], table: str, batch: int) -> dict[str, Any]:
    return {"table": table, "variant": "rates", "batch": batch,
            "consult": rate(runtimes["consult"]), "default": rate(runtimes["default"])}  # fmt: skip


async def rounds(
    runtimes: dict[str, Runtime], batch: int, a: argparse.Namespace, rng: random.Random, table: str
) -> list[dict[str, Any]]:
    endpoints = {v: JoinEndpoint(rt.engine, 5_000) for v, rt in runtimes.items()}
    out: list[dict[str, Any]] = []
    for rnd in range(a.rounds):
        reqs = bodies(rng, batch, a.requests)
        for v in VARIANTS if rnd % 2 == 0 else VARIANTS[::-1]:
            before = skipped(runtimes[v])
            cpu = await cpu_per_join(endpoints[v], reqs)
            out.append({"table": table, "variant": v, "batch": batch, "cpu_us": cpu,
                        "skipped": (skipped(runtimes[v]) - before) / len(reqs)})  # fmt: skip
    return out


async def full_cache(work: Path, url: str, a: argparse.Namespace) -> list[dict[str, Any]]:
    extra = {"off": "", "consult": "fills_per_round_trip: 0, ", "default": ""}
    paths = {
        # room for every row and more: filled in order, user after user, every read misses, and
        # a cache full at the last one would send batch-1 reads past it on that rate
        v: config(
            work,
            url,
            f"full-{v}",
            v != "off",
            f"cache: {{{extra[v]}ttl_seconds: 600, max_entries: 250000}}\n",
        )
        for v in VARIANTS
    }
    gc.collect()
    gc.freeze()  # before any row is cached, as the server freezes at start-up
    try:
        async with AsyncExitStack() as stack:
            runtimes = await runtimes_of(stack, paths)
            for v in ("consult", "default"):
                endpoint = JoinEndpoint(runtimes[v].engine, 5_000)
                # Batch-1 joins fill every user in (every read consulting, whatever the
                # default's rule would say of a cold cache), then hits bring the default's
                # rates up to what the cache now holds.
                bypass = cached(runtimes[v]).bypass
                figure, bypass.fills_per_round_trip = bypass.fills_per_round_trip, 0
                await cpu_per_join(endpoint, [body([u]) for u in range(1, N_USERS + 1)])
                while min(rate(runtimes[v]), rate(runtimes[v], "user_profile")) < 0.99:
                    await cpu_per_join(endpoint, bodies(random.Random(3), 1, 500))
                bypass.fills_per_round_trip = figure
            rng = random.Random(7)
            out = []
            for batch in a.batches:
                out += await rounds(runtimes, batch, a, rng, "full")
                out.append(rates(runtimes, "full", batch))
                print(f"full cache, batch {batch}: done", file=sys.stderr, flush=True)
    finally:
        gc.unfreeze()
    return out


async def warmed(work: Path, url: str, a: argparse.Namespace) -> list[dict[str, Any]]:
    out = []
    rng = random.Random(11)
    for batch in a.batches:
        tag = f"warm{batch}"
        extra = {"off": "", "consult": "fills_per_round_trip: 0, ", "default": ""}
        paths = {v: config(work, url, f"{tag}-{v}", v != "off", f"cache: {{{extra[v]}ttl_seconds: 5}}\n") for v in VARIANTS}  # fmt: skip
        async with AsyncExitStack() as stack:
            runtimes = await runtimes_of(stack, paths)
            endpoints = {v: JoinEndpoint(runtimes[v].engine, 5_000) for v in ("consult", "default")}
            until = time.monotonic() + a.warmup
            while time.monotonic() < until:  # both warmed side by side, to the same age
                reqs = bodies(rng, batch, 20)
                for endpoint in endpoints.values():
                    await cpu_per_join(endpoint, reqs)
            out += await rounds(runtimes, batch, a, rng, "warm")
            out.append(rates(runtimes, "warm", batch))
        print(f"warmed by its own traffic, batch {batch}: done", file=sys.stderr, flush=True)
    return out


def fill_cost(live: bool) -> float:
    """µs per key of ``put_many`` into a full 200k-row TinyLFU cache, 100 keys at a time."""
    now = [0.0]
    cache = LRUCache(200_000, 30, clock=lambda: now[0], admission=FrequencySketch(200_000))
    row = (0.1, 2, 3.0, 4, 0.5, "us", 0.7, 1_700_000_000_000_000)
    for space in ("a", "b"):
        cache.put_many(space, list(range(N_USERS)), [row] * N_USERS)
    now[0] = 10.0 if live else 100.0  # live: within the TTL; else every row expired
    batches = [list(range(N_USERS + i * 100, N_USERS + (i + 1) * 100)) for i in range(300)]
    t = time.process_time()
    for keys in batches:
        cache.put_many("a", keys, [row] * len(keys))
    return (time.process_time() - t) / (300 * 100) * 1e6


def med(runs: list[dict[str, Any]], table: str, v: str, batch: int, key: str = "cpu_us") -> float:
    picked = [
        float(r[key]) for r in runs if r["table"] == table and r["variant"] == v and r["batch"] == batch
    ]
    return statistics.median(picked)


def render(runs: list[dict[str, Any]], fills: tuple[float, float], a: argparse.Namespace) -> list[str]:
    trip = med(runs, "full", "off", 1) - med(runs, "full", "consult", 1)
    out = [
        f"In process, one Redis on loopback; server CPU per join (µs), median of {a.rounds} interleaved "
        f"rounds of {a.requests} joins, uniform users; the event loop thread's CPU, Redis's own not "
        "included. *Past the cache*: the default's reads that went past its cache (skipped, or on trial: "
        "a trial's read goes to the store for every key too), per join.",
        "",
        f"**The figures the default is derived from**: a full hit at batch 1 saves {trip:.0f} µs per join "
        f"(the round trip and two decoded rows, less two lookups); a fill costs {fills[0]:.1f} µs a key when "
        f"it evicts an expired row, {fills[1]:.1f} µs when admission weighs it against a live one: "
        f"{trip / fills[1]:.0f}-{trip / fills[0]:.0f} fills per round trip "
        f"(default on Redis: {FILLS_PER_ROUND_TRIP['redis']:g}, from `benchmarks.cache_figures` under load, where a full hit saves no CPU since 2026-12-05). *Hit rate*: of "
        "user_activity's keys looked up, the last ~2,000, at the end of the batch's rounds.",
    ]
    for table, title in (("full", "Full cache (all 100,000 users cached, TTL 10 min)"),
                         ("warm", f"Warmed by its own traffic ({a.warmup:g} s of the same batch, TTL 5 s)")):  # fmt: skip
        out += ["", f"{title}:", "",
                "| batch | keys read | cache off | every read consults | default | past the cache (skipped or on trial) | consults vs off | "
                "default vs off | hit rate: consults / default |",
                "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
        for batch in a.batches:
            off, con, dft = (med(runs, table, v, batch) for v in VARIANTS)
            skip = med(runs, table, "default", batch, "skipped")
            r = next(
                x for x in runs if x["table"] == table and x["variant"] == "rates" and x["batch"] == batch
            )
            out.append(f"| {batch} | {2 * batch} | {off:.0f} | {con:.0f} | {dft:.0f} | {skip:.0%} | "
                       f"{con / off - 1:+.1%} | {dft / off - 1:+.1%} | {r['consult']:.1%} / {r['default']:.1%} |")  # fmt: skip
    return [*out, "", *miss_costs(runs, trip, a)]


def miss_costs(runs: list[dict[str, Any]], trip: float, a: argparse.Namespace) -> list[str]:
    """What a missed key costs a read that consults, all told (lookup, the store query
    of the misses, fill, admission, merging), from the warmed table: the consulting
    read's extra CPU over cache off, plus what its full hits saved, per missed key."""
    cells = []
    for batch in a.batches:
        off, con = med(runs, "warm", "off", batch), med(runs, "warm", "consult", batch)
        h = next(x for x in runs if x["table"] == "warm" and x["variant"] == "rates" and x["batch"] == batch)[
            "consult"
        ]
        misses = 2 * batch * (1 - h)
        if misses > 0.05:
            cost = (con - off + h ** (2 * batch) * trip) / misses
            cells.append((batch, cost, trip / cost if cost > 0 else float("inf")))
    if not cells:
        return []
    return [
        "**A missed key, all told** (warmed table: a consulting read's CPU over cache off, plus what "
        "its full hits saved, per missed key): "
        + "; ".join(f"batch {b}: {c:.1f} µs ({t:.0f} per round trip)" for b, c, t in cells)
        + f". `cache.fills_per_round_trip` (default on Redis {FILLS_PER_ROUND_TRIP['redis']:g}; under load: `benchmarks.cache_figures`) weighs these."
    ]


async def measure(a: argparse.Namespace) -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        work = Path(tmp)
        url = stack.enter_context(redis(work))
        materialize(work, config(work, url, "load", False))
        return await full_cache(work, url, a) + await warmed(work, url, a)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument(
        "--batches", type=lambda s: [int(x) for x in s.split(",")], default=[1, 10, 16, 32, 50, 100]
    )
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--warmup", type=float, default=16.0, help="seconds, >= 3 TTLs of 5 s")
    a = ap.parse_args()
    start = started()  # the tree as the run starts (its code is imported already)
    runs = asyncio.run(measure(a))
    fills = (fill_cost(live=False), fill_cost(live=True))
    cmd = " ".join(["python -m benchmarks.cache_cost", *sys.argv[1:]])
    lines = [
        "## Cache: what a lookup, a fill and a round trip cost (issue 16, requirement 2)",
        "",
        f"`{cmd}`",
        "",
        run_line(start),
        "",
    ]
    lines += render(runs, fills, a)
    from benchmarks.report import publish

    publish("cache_cost.md", lines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
