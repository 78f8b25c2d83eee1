"""The cache that never costs: cache off, CLOCK without and with TinyLFU admission, side by
side on uniform and Zipf (s=1.1) keys over the peer's 100k users.

1. Hit rates by simulation (in-process, deterministic, machine-independent): the same
   key trace through ``LRUCache`` with and without the frequency sketch, at several
   cache sizes, batches of 10 keys.
2. Servers on one Redis (started here on a free port; the demo's two views materialized
   into it): ``off`` (cache: false), ``lru`` (cache.admission: none, every read consults), ``consult``
   (TinyLFU, every read consults the cache: cache.fills_per_round_trip 0, the cache before
   bypass), ``tinylfu`` (the default: TinyLFU, and a read the cache is unlikely to answer
   in full goes past it), one worker each, driven by wrk with ``benchmarks/wrk_keys.lua`` (the peer's
   body, KEYS=uniform|zipf), points interleaved (the order alternates), ``--rounds``
   rounds; per run: QPS, server CPU per request, the hit rate of the keys looked up in the
   cache and the share of keys read past it, from each server's ``featurestore_cache_*``
   counters.

    python -m benchmarks.cache_admission [--duration 8] [--rounds 2] [--batches 1,100]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from collections import OrderedDict
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.stack import config, materialize, metric_sum, redis, server, tree_cpu, wrk
from featurestore.admission import FrequencySketch
from featurestore.cache import LRUCache

N_USERS = 100_000
VARIANTS = ("off", "lru", "consult", "tinylfu")
# Per variant, the cache section of its config (``off`` has none: cache false).
CACHE_YAML = {
    "lru": "admission: none, fills_per_round_trip: 0",  # as before admission and bypass
    "consult": "admission: tinylfu, fills_per_round_trip: 0",  # the cache before bypass: every read consults it
    "tinylfu": "admission: tinylfu",  # the default, bypass included
}


def zipf_ids(n: int, s: float, count: int, seed: int) -> list[int]:
    """``count`` user ids, rank r drawn with weight 1/r^s, mapped as wrk_keys.lua maps them."""
    rng = np.random.default_rng(seed)
    cdf = np.cumsum(1.0 / np.arange(1, n + 1) ** s)
    ranks = np.searchsorted(cdf / cdf[-1], rng.random(count))
    return [int(x) for x in (ranks * 7919) % n + 1]


def simulate(keys: list[int], size: int, admission: bool, batch: int = 10) -> float:
    cache = LRUCache(size, 1e9, admission=FrequencySketch(size) if admission else None)
    hits = 0
    for i in range(0, len(keys), batch):
        ks = list(dict.fromkeys(keys[i : i + batch]))
        miss = [k for k, r in zip(ks, cache.get_many("v", ks), strict=True) if r is None]
        hits += len(ks) - len(miss)
        if miss:
            cache.put_many("v", miss, [(1,)] * len(miss))
    return hits / len(keys)


def simulate_exact_lru(keys: list[int], size: int, batch: int = 10) -> float:
    """The cache before CLOCK (every hit moved to the back): the hit rate to keep."""
    data: OrderedDict[int, None] = OrderedDict()
    hits = 0
    for i in range(0, len(keys), batch):
        for k in dict.fromkeys(keys[i : i + batch]):
            if k in data:
                hits += 1
                data.move_to_end(k)
            else:
                data[k] = None
                if len(data) > size:
                    data.popitem(last=False)
    return hits / len(keys)


def simulation_section(requests: int) -> list[str]:
    traces = {
        "uniform": np.random.default_rng(1).integers(1, N_USERS + 1, requests).tolist(),
        "zipf": zipf_ids(N_USERS, 1.1, requests, 1),
    }
    out = [
        f"Hit rates, simulated: {requests:,} keys per trace over {N_USERS:,} ids, batches of 10.",
        "",
        "| keys | cache entries | exact LRU (before) | CLOCK, no admission | CLOCK + TinyLFU (default) |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, trace in traces.items():
        for size in (1_000, 10_000, 50_000, 200_000):
            exact, lru, tiny = (
                simulate_exact_lru(trace, size),
                simulate(trace, size, False),
                simulate(trace, size, True),
            )
            out.append(f"| {name} | {size:,} | {exact:.1%} | {lru:.1%} | {tiny:.1%} |")
    return out


def cache_counters(port: int) -> tuple[float, float, float]:
    """Keys hit, missed and read past the cache (bypassed), over the server's life."""
    return (
        metric_sum(port, "featurestore_cache_hits_total"),
        metric_sum(port, "featurestore_cache_misses_total"),
        metric_sum(port, "featurestore_cache_bypassed_total"),
    )


def run(srv: dict[str, int], keys: str, batch: int, conns: int, seconds: float) -> dict[str, Any]:
    h0, m0, b0 = cache_counters(srv["http"])
    cpu0 = tree_cpu(srv["pid"])
    res = wrk(f"http://127.0.0.1:{srv['http']}/v1/feature/join", batch, conns, seconds, keys)
    cpu = tree_cpu(srv["pid"]) - cpu0
    h1, m1, b1 = cache_counters(srv["http"])
    # non-2xx (a join shed on a starved machine) are counted, not fatal: see the table
    res["cpu_us"] = cpu / max(res["requests"] - res["err_status"], 1) * 1e6  # per 200, as ``qps`` counts
    looked = (h1 - h0) + (m1 - m0)
    res["hit_rate"] = (h1 - h0) / looked if looked else None
    res["bypassed"] = (b1 - b0) / (looked + b1 - b0) if looked + b1 - b0 else None
    # hits among every key the joins asked for, cache consulted or not
    res["served_from_cache"] = (h1 - h0) / (looked + b1 - b0) if looked + b1 - b0 else None
    return res


def server_section(a: argparse.Namespace) -> list[str]:
    out: list[str] = []
    for size in a.max_entries:
        out += [*server_runs(a, size), ""]
    return out


def server_runs(a: argparse.Namespace, size: int) -> list[str]:
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        work = Path(tmp)
        url = stack.enter_context(redis(work))
        configs = {
            v: config(work, url, v, v != "off",
                      f"cache: {{max_entries: {size}, {CACHE_YAML.get(v, '')}}}\n")
            for v in VARIANTS
        }  # fmt: skip
        materialize(work, configs["off"])
        servers = {v: stack.enter_context(server(work, configs[v])) for v in VARIANTS}
        point = 0
        for keys in ("uniform", "zipf"):
            for batch in a.batches:
                for srv in servers.values():  # warm-up: fills the caches
                    run(srv, keys, batch, a.connections, a.warmup)
                for rnd in range(a.rounds):
                    order = list(VARIANTS) if point % 2 == 0 else list(reversed(VARIANTS))
                    point += 1
                    for v in order:
                        res = run(servers[v], keys, batch, a.connections, a.duration)
                        res.update(variant=v, keys=keys, batch=batch, round=rnd)
                        print(json.dumps(res), flush=True)
                        runs.append(res)
    return render(runs, a, size)


def render(runs: list[dict[str, Any]], a: argparse.Namespace, size: int) -> list[str]:
    holds = (
        "both views' 100,000 users fit"
        if size >= 2 * N_USERS
        else f"{size / (2 * N_USERS):.0%} of both views' rows fit: every fill in a full cache weighs a victim"
    )
    out = [
        f"Servers, 1 worker each, one Redis, wrk `-c{a.connections}` (a pool of three draws per user: the whole key "
        f"space), {a.duration:g} s per run after a {a.warmup:g} s warm-up, {a.rounds} interleaved rounds (median); "
        f"**cache.max_entries {size:,}** ({holds}). "
        "QPS / server CPU per request (us) / hit rate of the keys looked up in the cache "
        "(where keys went past the cache: their share, and the share of all keys served from it):",
        "",
        "| keys | batch | cache off | CLOCK, no admission, every read consults | CLOCK + TinyLFU, every read consults | "
        "CLOCK + TinyLFU + bypass (default) | default vs off (QPS) |",
        "|---|---:|---|---|---|---|---:|",
    ]
    for keys in ("uniform", "zipf"):
        for batch in a.batches:
            cells, qps = [], {}
            for v in VARIANTS:
                rs = [r for r in runs if r["variant"] == v and r["keys"] == keys and r["batch"] == batch]
                qps[v] = statistics.median(r["qps"] for r in rs)
                cpu = statistics.median(r["cpu_us"] for r in rs)
                hr = [r["hit_rate"] for r in rs if r["hit_rate"] is not None]
                bp = [r["bypassed"] for r in rs if r.get("bypassed") is not None]
                served = [r["served_from_cache"] for r in rs if r.get("served_from_cache") is not None]
                cells.append(
                    f"{qps[v]:,.0f} / {cpu:.0f} / "
                    + (f"{statistics.median(hr):.1%}" if hr else "-")
                    + (
                        f" ({statistics.median(bp):.0%} of keys past it, {statistics.median(served):.0%} served from it)"
                        if bp and statistics.median(bp) > 0
                        else ""
                    )
                )
            out.append(f"| {keys} | {batch} | {' | '.join(cells)} | {qps['tinylfu'] / qps['off'] - 1:+.1%} |")
    shed = sum(r["err_status"] for r in runs)
    if shed:
        out += [
            "",
            f"{shed:,} answers of {sum(r['requests'] for r in runs):,} were not 200 (shed: the machine was starved).",
        ]
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--duration", type=float, default=8)
    ap.add_argument("--warmup", type=float, default=4)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--batches", type=lambda s: [int(x) for x in s.split(",")], default=[1, 100])
    ap.add_argument(
        "--max-entries",
        type=lambda s: [int(x) for x in s.split(",")],
        default=[200_000, 20_000],
        help="cache sizes, each measured with servers of its own (200,000 holds every row; 20,000 a tenth)",
    )
    ap.add_argument("--sim-keys", type=int, default=1_000_000)
    ap.add_argument("--no-servers", action="store_true", help="only the simulation")
    a = ap.parse_args()
    lines = ["## Cache admission: uniform and Zipf keys (issue 16, requirement 2)", ""]
    cmd = " ".join(["python -m benchmarks.cache_admission", *sys.argv[1:]])
    lines += [f"`{cmd}`", "", *simulation_section(a.sim_keys), ""]
    if not a.no_servers:
        lines += server_section(a)
    from benchmarks.report import publish

    publish("cache.md", lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
