"""What the row cache costs and saves, per join: server CPU in process, with the cache off,
with every read consulting it, and with the default (a read too unlikely to be answered
in full for its fills to pay goes past it: ``cache.fills_per_round_trip``,
featurestore/bypass.py), plus the two figures the default is derived from.

One Redis (started here on a free port) holds the demo's two user views; three runtimes
in this process read it: ``off`` (cache: false), ``consult`` (fills_per_round_trip 0)
and ``default``. Joins go through the HTTP join endpoint's handler (JSON in and out, no
socket), uniform random users; the figure is this process's CPU time per join
(``time.process_time``; Redis's own CPU is not in it, which favours the cache), median of
``--rounds`` interleaved rounds (the order alternates) of ``--requests`` joins.

1. Full cache: both caches first hold all 100,000 users (batch-10 joins, TTL 10 minutes,
   so nothing expires): every lookup can hit, the case most favourable to the cache.
   (The default is filled by batch-1 joins, which always consult; its batch-10 joins of
   keys it does not hold would soon skip it.) The round trip a full hit saves is the
   batch-1 difference between ``off`` and ``consult``.
2. Warmed by its own traffic: fresh runtimes (TTL 30 s, the default), each warmed by
   ``--warmup`` seconds of the batch being measured, so the default's rates are the ones
   that batch produces (a trial every TTL included).
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
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from benchmarks.stack import config, materialize, redis
from featurestore.admission import FrequencySketch
from featurestore.api.http import JoinEndpoint
from featurestore.cache import CachedSource, LRUCache
from featurestore.config import load_config
from featurestore.demo.data import FEATURE_REFS
from featurestore.runtime import Runtime, build_runtime

HERE = Path(__file__).resolve().parent
N_USERS = 100_000
VARIANTS = ("off", "consult", "default")


def body(users: list[int]) -> bytes:
    return json.dumps({"entities": {"user_id": users}, "features": list(FEATURE_REFS)}).encode()


def bodies(rng: random.Random, batch: int, count: int) -> list[bytes]:
    return [body([rng.randint(1, N_USERS) for _ in range(batch)]) for _ in range(count)]


async def cpu_per_join(endpoint: JoinEndpoint, reqs: list[bytes]) -> float:
    t = time.process_time()
    for b in reqs:
        status, *_ = await endpoint(b, None, None, None)
        if status != 200:
            raise RuntimeError(f"join answered {status}")
    return (time.process_time() - t) / len(reqs) * 1e6


def skipped(rt: Runtime) -> int:
    """Reads the default store sent past its cache so far (0 without a cache)."""
    store = rt.stores["default"]
    return store.bypass.skipped if isinstance(store, CachedSource) else 0


class Servers:
    """The three runtimes on one Redis, built from configs written once."""

    def __init__(self, paths: dict[str, Path]) -> None:
        self.paths = paths
        self.runtimes: dict[str, Runtime] = {}

    async def __aenter__(self) -> dict[str, Runtime]:
        for v, p in self.paths.items():
            self.runtimes[v] = await build_runtime(load_config(p))
        return self.runtimes

    async def __aexit__(self, *exc: object) -> None:
        for rt in self.runtimes.values():
            await rt.close()


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
        v: config(work, url, f"full-{v}", v != "off", f"cache: {{{extra[v]}ttl_seconds: 600}}\n")
        for v in VARIANTS
    }
    async with Servers(paths) as runtimes:
        fill = [body(list(range(i, i + 10))) for i in range(1, N_USERS + 1, 10)]
        for v in ("consult", "default"):
            endpoint = JoinEndpoint(runtimes[v].engine, 5_000)
            # The fill misses every key, so the default stops filling after its first
            # joins (rate 0): fill with reads that always consult (batch 1, 2 keys), then
            # let hits bring the rates up to what the cache now holds.
            await cpu_per_join(
                endpoint, fill if v == "consult" else [body([u]) for u in range(1, N_USERS + 1)]
            )
            await cpu_per_join(endpoint, bodies(random.Random(3), 1, 3_000))
        gc.collect()
        gc.freeze()  # as the server does after start-up
        rng = random.Random(7)
        out = []
        for batch in a.batches:
            out += await rounds(runtimes, batch, a, rng, "full")
            print(f"full cache, batch {batch}: done", file=sys.stderr, flush=True)
        gc.unfreeze()
    return out


async def warmed(work: Path, url: str, a: argparse.Namespace) -> list[dict[str, Any]]:
    out = []
    rng = random.Random(11)
    for batch in a.batches:
        tag = f"warm{batch}"
        paths = {v: config(work, url, f"{tag}-{v}", v != "off",
                           "cache: {fills_per_round_trip: 0}\n" if v == "consult" else "") for v in VARIANTS}  # fmt: skip
        async with Servers(paths) as runtimes:
            for v in ("consult", "default"):
                endpoint = JoinEndpoint(runtimes[v].engine, 5_000)
                until = time.monotonic() + a.warmup
                while time.monotonic() < until:
                    await cpu_per_join(endpoint, bodies(rng, batch, 50))
            out += await rounds(runtimes, batch, a, rng, "warm")
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
        f"rounds of {a.requests} joins, uniform users; Redis's own CPU not included. *Skipped*: the "
        "default's reads that went past its cache, per join.",
        "",
        f"**The figures the default is derived from**: a full hit at batch 1 saves {trip:.0f} µs per join "
        f"(the round trip and two decoded rows, less two lookups); a fill costs {fills[0]:.1f} µs a key when "
        f"it evicts an expired row, {fills[1]:.1f} µs when admission weighs it against a live one: "
        f"{trip / fills[1]:.0f}-{trip / fills[0]:.0f} fills per round trip (default: 30).",
    ]
    for table, title in (("full", "Full cache (all 100,000 users cached, TTL 10 min)"),
                         ("warm", f"Warmed by its own traffic ({a.warmup:g} s of the same batch, TTL 30 s)")):  # fmt: skip
        out += ["", f"{title}:", "",
                "| batch | keys read | cache off | every read consults | default | skipped | consults vs off | default vs off |",
                "|---:|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
        for batch in a.batches:
            off, con, dft = (med(runs, table, v, batch) for v in VARIANTS)
            skip = med(runs, table, "default", batch, "skipped")
            out.append(f"| {batch} | {2 * batch} | {off:.0f} | {con:.0f} | {dft:.0f} | {skip:.0%} | "
                       f"{con / off - 1:+.1%} | {dft / off - 1:+.1%} |")  # fmt: skip
    return out


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
    ap.add_argument("--warmup", type=float, default=8.0)
    a = ap.parse_args()
    runs = asyncio.run(measure(a))
    fills = (fill_cost(live=False), fill_cost(live=True))
    cmd = " ".join(["python -m benchmarks.cache_cost", *sys.argv[1:]])
    lines = [
        "## Cache: what a lookup, a fill and a round trip cost (issue 16, requirement 2)",
        "",
        f"`{cmd}`",
        "",
    ]
    lines += render(runs, fills, a)
    part = HERE / "results" / "cache_cost.md"
    part.parent.mkdir(exist_ok=True)
    part.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    from benchmarks.report import stitch

    stitch()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
