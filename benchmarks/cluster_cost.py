"""What a batch-10 join's store read costs on Redis Cluster against one standalone Redis:
the read path ``benchmarks.scaling`` sizes its fleet from is the standalone one, and the
fleet it prescribes needs more than one Redis, which the store reaches only as a Cluster.

On one Redis a join's read is one MGET per view, packed into one write and, with
auto-pipelining, shared with the other joins of the event-loop tick; on Cluster it is one
write of GETs per node on the store's own connections (``redis_cluster_read.py``),
auto-pipelined per node (a row with ``auto_pipeline: false`` too), and, for a read the
slot map cannot answer, redis-py's
ClusterPipeline of one GET per key (the only Cluster read before; docs/storage.md). All
four rows are measured in this process through the store itself (``RedisSource.read``,
decoding included; no HTTP, no join engine): the demo's two user views (16 features),
20,000 users written, reads of 10 distinct users drawn uniformly, one read at a time and
32 in flight; the store's CPU (this process) and Redis's (every node, from /proc) per
read. One standalone Redis and a Cluster of 3 primaries, started here; the Cluster paths
(a store each, on the one Cluster) take turns, ``--rounds`` times, and each figure is the median of
its rounds (the standalone's too).

    python -m benchmarks.cluster_cost [--reads 2000] [--users 20000] [--rounds 3]

Writes benchmarks/results/cluster-cost.md (stitched into RESULTS.md after "Scaling").
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from statistics import median
from typing import Any

import pyarrow.parquet as pq

from benchmarks.on_off import cpu_seconds
from benchmarks.provenance import run_line, started
from featurestore.definitions.parser import load_definitions
from featurestore.demo.data import ensure_demo_data
from featurestore.model import FeatureView
from featurestore.sources.base import ViewQuery
from featurestore.sources.redis import RedisOptions, RedisSource

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BATCH = 10
IN_FLIGHT = (1, 32)
VIEWS = ("user_profile", "user_activity")
STANDALONE, LEAN, DIRECT, PIPELINE = (
    "standalone",
    "cluster, 3 primaries: own connections",
    "cluster, 3 primaries: own connections, auto_pipeline false",
    "cluster, 3 primaries: redis-py pipeline",
)
# Per path measured: the store's options, and (on a Cluster) whether reads go on the
# store's own connections.
PATHS: dict[str, tuple[dict[str, Any], bool]] = {
    STANDALONE: ({"cluster": False}, True),
    LEAN: ({"cluster": True}, True),
    DIRECT: ({"cluster": True, "auto_pipeline": False}, True),
    PIPELINE: ({"cluster": True}, False),
}


async def measure(
    source: RedisSource,
    views: Sequence[FeatureView],
    redis_pids: Sequence[int],
    draws: list[list[int]],
    in_flight: int,
) -> dict[str, float]:
    """The store's and Redis's CPU per read over ``draws`` (one read each), ``in_flight``
    reads at a time."""

    async def read(keys: list[int]) -> None:
        got = await source.read([ViewQuery(v, keys, range(len(v.features)), 1) for v in views])
        for r in got:
            if isinstance(r, BaseException) or not all(r.found):
                raise RuntimeError(f"a read did not find every user: {r!r}")

    async def worker(mine: list[list[int]]) -> None:
        for keys in mine:
            await read(keys)

    for keys in draws[:200]:  # warm-up: connections open, code warm
        await read(keys)
    r0, c0 = sum(map(cpu_seconds, redis_pids)), time.process_time()
    await asyncio.gather(*(worker(draws[i::in_flight]) for i in range(in_flight)))
    c1, r1 = time.process_time(), sum(map(cpu_seconds, redis_pids))
    return {"client_us": (c1 - c0) / len(draws) * 1e6, "redis_us": (r1 - r0) / len(draws) * 1e6}


async def one_store(
    url: str, paths: Sequence[str], redis_pids: Sequence[int], views: Sequence[FeatureView], rows: Any, a: Any
) -> dict[str, dict[int, dict[str, float]]]:
    """Per path (``PATHS``, a store each), per reads in flight: the median of ``a.rounds``
    measures, the paths taking turns in each round."""
    sources = {p: RedisSource("bench", "demo", RedisOptions(url=url, **PATHS[p][0])) for p in paths}
    try:
        for path, source in sources.items():
            await source.start()
            reader = source._cluster  # (the benchmark's switch to redis-py's pipeline)
            if reader is not None:
                assert await reader.mapped()
                reader.lean = PATHS[path][1]
        for v in views:
            await sources[paths[0]].write(v, rows, 1)
        rng = random.Random(1)  # the same users on every store
        draws = [rng.sample(range(1, a.users + 1), BATCH) for _ in range(a.reads)]
        rounds: dict[str, dict[int, list[dict[str, float]]]] = {p: {n: [] for n in IN_FLIGHT} for p in paths}
        for _ in range(a.rounds):
            for path, source in sources.items():
                for n in IN_FLIGHT:
                    rounds[path][n].append(await measure(source, views, redis_pids, draws, n))
        return {
            p: {n: {k: median(r[k] for r in runs) for k in runs[0]} for n, runs in by.items()}
            for p, by in rounds.items()
        }
    finally:
        for source in sources.values():
            await source.close()


def render(results: dict[str, dict[int, dict[str, float]]], a: argparse.Namespace, start: str) -> list[str]:
    cmd = " ".join(["python -m benchmarks.cluster_cost", *sys.argv[1:]]).rstrip()
    out = [
        "## Redis Cluster against one Redis: the store's read of a batch-10 join (issue 16, requirement 6)",
        "",
        run_line(start),
        f"* Command: `{cmd}`",
        f"* In process, through the store (`RedisSource.read`, decoding included; no HTTP, no join engine): "
        f"the demo's two user views (16 features), {a.users:,} users written, {a.reads:,} reads of {BATCH} "
        "distinct users drawn uniformly (the same on every store), after 200 to warm up; one read at a time, then "
        f"{IN_FLIGHT[-1]} in flight. CPU of this process (the store's side) and of Redis (every node) per read, "
        f"the median of {a.rounds} rounds. "
        "Standalone: one MGET per view, auto-pipelined (the joins of a tick share a write). Cluster (3 "
        "primaries, no replicas), own connections: GETs per node on the store's connections "
        "(sources/redis_cluster_read.py), the nodes at once, each node's auto-pipelined (the joins of a tick "
        "share a write to it; with `auto_pipeline: false` a write per node a read); redis-py pipeline: a "
        "ClusterPipeline of one GET per key (the Cluster read before; now the fallback of a read the slot "
        "map cannot answer). A store per path, on one Cluster; the paths take turns in each round.",
        "",
        "| Redis | reads in flight | store CPU µs/read | Redis CPU µs/read (all nodes) |",
        "|---|---:|---:|---:|",
    ]
    for name, by in results.items():
        for n, r in by.items():
            out.append(f"| {name} | {n} | {r['client_us']:,.0f} | {r['redis_us']:,.0f} |")
    one = results[STANDALONE]
    out += [""]
    for n in IN_FLIGHT:
        s, c, d, old = one[n], results[LEAN][n], results[DIRECT][n], results[PIPELINE][n]
        out.append(
            f"* {n} in flight: Cluster on own connections / standalone = {c['client_us'] / s['client_us']:.1f}x "
            f"the store's CPU (+{c['client_us'] - s['client_us']:,.0f} µs a read), "
            f"{c['redis_us'] / s['redis_us']:.1f}x Redis's (auto_pipeline false: "
            f"{d['client_us'] / s['client_us']:.1f}x and {d['redis_us'] / s['redis_us']:.1f}x); redis-py "
            f"pipeline / standalone = {old['client_us'] / s['client_us']:.1f}x and "
            f"{old['redis_us'] / s['redis_us']:.1f}x."
        )
    out += [
        "",
        "What this is not: a server under load (`benchmarks.scaling` measures that, on one standalone Redis); "
        "a Cluster of more primaries (a join's keys reach more of them: more round trips a read); "
        "replicas, persistence or another host's network.",
    ]
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--reads", type=int, default=2000)
    ap.add_argument("--users", type=int, default=20_000)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    start = started()
    from tests.servers import RedisCluster, RedisServer  # real servers, stopped at the end

    defs = load_definitions(ROOT / "featurestore" / "demo" / "features.yaml")
    views = [defs.views[v] for v in VIEWS]
    rows = pq.read_table(ensure_demo_data(HERE / "out" / "data")).slice(0, a.users)
    results: dict[str, dict[int, dict[str, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="fs-cluster-cost-") as tmp:
        single = RedisServer(Path(tmp) / "single").start()
        try:
            assert single.proc is not None
            results |= asyncio.run(one_store(single.url, [STANDALONE], [single.proc.pid], views, rows, a))
        finally:
            single.stop()
        cluster = RedisCluster(Path(tmp)).start()
        try:
            pids = [n.proc.pid for n in cluster.nodes if n.proc is not None]
            results |= asyncio.run(one_store(cluster.url, [LEAN, DIRECT, PIPELINE], pids, views, rows, a))
        finally:
            cluster.stop()
    from benchmarks.report import publish

    publish("cluster-cost.md", render(results, a, start))
    return 0


if __name__ == "__main__":
    sys.exit(main())
