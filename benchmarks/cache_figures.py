"""The bypass figure under load: what a full cache hit saves and what a missed key costs a
loaded server, so what a round trip to Redis is worth in missed keys
(``cache.fills_per_round_trip``, featurestore/bypass.py).

One Redis (started here on a free port) with the demo's two user views; three servers,
one worker each, every read consulting its cache (``fills_per_round_trip: 0``):

* ``off``: no cache, every key from Redis (auto-pipelined, as by default);
* ``hits``: a cache holding every user (250,000 rows, TTL 10 minutes), filled by
  batch-100 joins before the runs, so every batch-1 lookup hits: what a full hit costs;
* ``misses``: a cache of 1,000 rows over the 100,000 users (TinyLFU: a full cache weighing
  each miss against a resident, as in steady state), so ~99% of lookups miss.

Driven by wrk with ``benchmarks/wrk_keys.lua`` (uniform keys, fresh draws per run) at
``--batch`` and concurrency 32, points interleaved; server CPU per request from /proc.
A full hit saves ``off - hits``; a missed key costs ``(misses - off) / missed keys per
join``; the figure is their ratio.

    python -m benchmarks.cache_figures [--duration 8] [--rounds 3] [--batches 1,10]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from benchmarks.cache_admission import cache_counters
from benchmarks.provenance import run_line, started
from benchmarks.stack import config, materialize, redis, server, tree_cpu, wrk
from featurestore.factories import FILLS_PER_ROUND_TRIP

CACHE_YAML = {
    # TTL: longer than the whole run (set in measure()), so no filled row expires
    "hits": "cache: {{fills_per_round_trip: 0, ttl_seconds: {ttl}, max_entries: 250000}}\n",
    "misses": "cache: {{fills_per_round_trip: 0, max_entries: 1000}}\n",
}
VARIANTS = ("off", "hits", "misses")


def run(srv: dict[str, int], batch: int, seconds: float) -> dict[str, Any]:
    h0, m0, _ = cache_counters(srv["http"])
    cpu0 = tree_cpu(srv["pid"])
    res = wrk(f"http://127.0.0.1:{srv['http']}/v1/feature/join", batch, 32, seconds)
    ok = max(res["requests"] - res["err_status"], 1)
    res["cpu_us"] = (tree_cpu(srv["pid"]) - cpu0) / ok * 1e6
    h1, m1, _ = cache_counters(srv["http"])
    res["hit_rate"] = (h1 - h0) / ((h1 - h0) + (m1 - m0)) if (h1 - h0) + (m1 - m0) else None
    res["misses_per_join"] = (m1 - m0) / ok
    return res


def measure(a: argparse.Namespace) -> list[dict[str, Any]]:
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        work = Path(tmp)
        url = stack.enter_context(redis(work))
        ttl = 600 + len(a.batches) * a.rounds * len(VARIANTS) * (a.duration + 5)
        configs = {
            v: config(work, url, v, v != "off", CACHE_YAML.get(v, "").format(ttl=ttl)) for v in VARIANTS
        }
        materialize(work, configs["off"])
        servers = {v: stack.enter_context(server(work, configs[v])) for v in VARIANTS}
        # Fill the hits server with every user: batch-100 joins cover the key space quickly.
        for _ in range(10):
            res = run(servers["hits"], 100, 5)
            if res["hit_rate"] is not None and res["hit_rate"] >= 0.999:
                break
        else:
            raise RuntimeError(f"the hits server's cache did not fill: {res['hit_rate']} of lookups hit")
        point = 0
        for batch in a.batches:
            for srv in servers.values():
                run(srv, batch, 3)  # warm-up
            for rnd in range(a.rounds):
                order = list(VARIANTS) if point % 2 == 0 else list(reversed(VARIANTS))
                point += 1
                for v in order:
                    res = run(servers[v], batch, a.duration)
                    res.update(variant=v, batch=batch, round=rnd)
                    print(json.dumps(res), flush=True)
                    runs.append(res)
    return runs


def render(runs: list[dict[str, Any]], a: argparse.Namespace, run: str) -> list[str]:
    out = [
        "## Cache: the bypass figure under load (issue 16, requirement 2)",
        "",
        f"`python -m benchmarks.cache_figures {' '.join(sys.argv[1:])}`".replace(" `", "`"),
        "",
        run,  # when and on what commit it ran (the README dates its figures by it)
        "",
        f"Servers, 1 worker each, one Redis, every read consulting its cache; wrk `-c32` (uniform keys, fresh "
        f"draws per run), {a.duration:g} s per run, {a.rounds} interleaved rounds (median). QPS / server CPU per "
        "request (µs) / hit rate of the keys looked up. *hits*: a cache holding every user; *misses*: 1,000 rows "
        "(TinyLFU) over 100,000 users.",
        "",
        "| batch | off | hits | misses | a full hit saves (µs) | a missed key costs (µs) | round trip, in missed keys |",
        "|---:|---|---|---|---:|---:|---:|",
    ]
    for batch in a.batches:
        med: dict[str, dict[str, float]] = {}
        cells = []
        for v in VARIANTS:
            rs = [r for r in runs if r["variant"] == v and r["batch"] == batch]
            med[v] = {k: statistics.median(r[k] for r in rs) for k in ("qps", "cpu_us", "misses_per_join")}
            hr = [r["hit_rate"] for r in rs if r["hit_rate"] is not None]
            cells.append(
                f"{med[v]['qps']:,.0f} / {med[v]['cpu_us']:.0f} / "
                + (f"{statistics.median(hr):.1%}" if hr else "-")
            )
        saves = med["off"]["cpu_us"] - med["hits"]["cpu_us"]
        costs = (med["misses"]["cpu_us"] - med["off"]["cpu_us"]) / max(med["misses"]["misses_per_join"], 1e-9)
        ratio = f"{saves / costs:.2f}" if costs > 0 else "- (a miss cost nothing measurable)"
        out.append(f"| {batch} | {' | '.join(cells)} | {saves:.0f} | {costs:.0f} | {ratio} |")
    out += [
        "",
        f"The default figure on Redis (`featurestore/factories.py`): {FILLS_PER_ROUND_TRIP['redis']:g}.",
    ]
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--duration", type=float, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batches", type=lambda s: [int(x) for x in s.split(",")], default=[1, 10])
    a = ap.parse_args()
    start = started()
    runs = measure(a)
    from benchmarks.report import publish

    publish("cache-figures.md", render(runs, a, run_line(start)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
