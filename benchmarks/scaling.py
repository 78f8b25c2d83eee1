"""1 -> 2 workers on this machine, and the fleet for 187,000 QPS at batch 10 worked out
from what one core of the server and one core of Redis measurably do.

Two servers on one Redis (started here; demo data; cache off, so every key is read
from Redis, the worst case for Redis), ``--workers 1`` and ``--workers 2``, wrk
(benchmarks/wrk_keys.lua) at concurrency 32, points interleaved. Per run: QPS, server
cores used, server CPU per request, Redis CPU per request. The sizing below the table
is computed from the batch-10 figures:

* a server core answers 1 / (server CPU per request) joins per second;
* a Redis core (Redis executes commands on one thread) serves 1 / (Redis CPU per
  request) joins per second (2 MGETs of 10 keys each plus the layout markers);
* pods of 2 cores (2 workers, deploy/k8s/featurestore.yaml) run at the HPA's 60% CPU
  target, so a pod carries 2 x 0.6 x per-core QPS; Redis primaries are kept at 50% of a
  core (headroom for replication, persistence and failover).

By default on one standalone Redis: a view's keys in one MGET, auto-pipelined with the
other joins of a tick. The store reaches several Redis only as a Redis Cluster
(``cluster: true``), where a read is a write of GETs per node (on the store's own
connections, auto-pipelined per node): ``--cluster`` runs the same points on a local
Cluster of 3 primaries (tests/servers.py's, no replicas), Redis's CPU summed over its
nodes, and sizes a Cluster fleet from it (results/scaling-cluster.md).

    python -m benchmarks.scaling [--duration 8] [--rounds 2] [--batches 1,10,100] [--cluster]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from benchmarks.provenance import run_line, started
from benchmarks.stack import config, materialize, redis, server, tree_cpu, wrk

TARGET_QPS = 187_000
TARGET_BATCH = 10
HPA_UTILIZATION = 0.6
POD_CORES = 2
REDIS_UTILIZATION = 0.5


def redis_pid(url: str) -> int:
    port = url.rsplit(":", 1)[1].split("/")[0]
    out = subprocess.run(["pgrep", "-f", f"redis-server 127.0.0.1:{port}"], capture_output=True, text=True)
    return int(out.stdout.split()[0])


@contextmanager
def cluster(work: Path) -> Iterator[tuple[str, list[int]]]:
    """A local Redis Cluster of 3 primaries: its URL and its nodes' pids."""
    from tests.servers import RedisCluster  # real servers, stopped at the end

    nodes = RedisCluster(work / "cluster").start()
    try:
        yield nodes.url, [n.proc.pid for n in nodes.nodes if n.proc is not None]
    finally:
        nodes.stop()


def redis_cpu(pids: list[int]) -> float:
    return sum(tree_cpu(p) for p in pids)


def one_run(srv: dict[str, int], rpids: list[int], batch: int, a: argparse.Namespace) -> dict[str, Any]:
    s0, r0 = tree_cpu(srv["pid"]), redis_cpu(rpids)
    res = wrk(f"http://127.0.0.1:{srv['http']}/v1/feature/join", batch, a.concurrency, a.duration)
    s, r = tree_cpu(srv["pid"]) - s0, redis_cpu(rpids) - r0
    n = max(res["requests"] - res["err_status"], 1)  # per 200, as ``qps`` counts
    res.update(
        server_cores=s / res["duration_s"],
        cpu_us=s / n * 1e6,
        redis_us=r / n * 1e6,
        redis_cores=r / res["duration_s"],
    )
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--duration", type=float, default=8)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--batches", type=lambda s: [int(x) for x in s.split(",")], default=[1, 10, 100])
    ap.add_argument("--cluster", action="store_true", help="a Redis Cluster of 3 primaries, not one Redis")
    a = ap.parse_args()
    a.started = started()  # before any server loads the code
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        work = Path(tmp)
        if a.cluster:
            url, rpids = stack.enter_context(cluster(work))
        else:
            url = stack.enter_context(redis(work))
            rpids = [redis_pid(url)]
        cfg = config(work, url, "nocache", cache=False, store=", cluster: true" if a.cluster else "")
        materialize(work, cfg)
        servers = {w: stack.enter_context(server(work, cfg, w)) for w in (1, 2)}
        point = 0
        for batch in a.batches:
            for srv in servers.values():
                wrk(f"http://127.0.0.1:{srv['http']}/v1/feature/join", batch, 8, 2)
            for rnd in range(a.rounds):
                for w in (1, 2) if point % 2 == 0 else (2, 1):
                    res = one_run(servers[w], rpids, batch, a)
                    res.update(workers=w, batch=batch, round=rnd)
                    print(json.dumps(res), flush=True)
                    runs.append(res)
                point += 1
    lines = render(runs, a)
    from benchmarks.report import publish

    publish("scaling-cluster.md" if a.cluster else "scaling.md", lines)
    return 0


def med(runs: list[dict[str, Any]], key: str, **where: Any) -> float:
    return float(statistics.median(r[key] for r in runs if all(r[k] == v for k, v in where.items())))


def render(runs: list[dict[str, Any]], a: argparse.Namespace) -> list[str]:
    cmd = " ".join(["python -m benchmarks.scaling", *sys.argv[1:]])
    on_cluster = getattr(a, "cluster", False)
    where = ", on a Redis Cluster of 3 primaries" if on_cluster else ""
    redis_of = (
        "a local Redis Cluster (3 primaries, no replicas; Redis CPU over all nodes)"
        if on_cluster
        else "Redis"
    )
    out = [
        f"## Scaling: 1 -> 2 workers, and the fleet for 187,000 QPS at batch 10{where} (issue 16, requirement 6)",
        "",
        f"`{cmd}`: {redis_of} store, cache off, wrk -t1 -c{a.concurrency}, {a.duration:g} s per run, "
        f"{a.rounds} interleaved rounds (median). Server, Redis and wrk share this machine's cores.",
        "",
        run_line(a.started),
        "",
        "| batch | QPS, 1 worker | QPS, 2 workers | 2 / 1 | server cores used (1 / 2) | server CPU us/request (1 / 2) "
        "| Redis CPU us/request |",
        "|---:|---:|---:|---:|---|---|---:|",
    ]
    for b in a.batches:
        q1, q2 = med(runs, "qps", batch=b, workers=1), med(runs, "qps", batch=b, workers=2)
        out.append(
            f"| {b} | {q1:,.0f} | {q2:,.0f} | {q2 / q1:.2f}x | {med(runs, 'server_cores', batch=b, workers=1):.2f} / "
            f"{med(runs, 'server_cores', batch=b, workers=2):.2f} | {med(runs, 'cpu_us', batch=b, workers=1):.0f} / "
            f"{med(runs, 'cpu_us', batch=b, workers=2):.0f} | {med(runs, 'redis_us', batch=b):.0f} |"
        )
    if TARGET_BATCH in a.batches:
        out += ["", *sizing(runs, on_cluster)]
    return out


def sizing(runs: list[dict[str, Any]], on_cluster: bool = False) -> list[str]:
    cpu_us = med(runs, "cpu_us", batch=TARGET_BATCH, workers=2)
    redis_us = med(runs, "redis_us", batch=TARGET_BATCH)
    per_core = 1e6 / cpu_us
    per_pod = per_core * POD_CORES * HPA_UTILIZATION
    pods = math.ceil(TARGET_QPS / per_pod)
    redis_core = 1e6 / redis_us
    shards = math.ceil(TARGET_QPS / (redis_core * REDIS_UTILIZATION))
    head = (
        [
            f"**Fleet for {TARGET_QPS:,} QPS at batch {TARGET_BATCH} on a Redis Cluster** (from the 2-worker "
            "figures above, measured on a local Cluster of 3 primaries: a join's read is a write of GETs per node, "
            "the nodes at once, auto-pipelined per node; cache off, so every key is a Redis read: a cache hit rate h "
            "leaves (1 - h) of the Redis side):",
            "",
        ]
        if on_cluster
        else [
            f"**Fleet for {TARGET_QPS:,} QPS at batch {TARGET_BATCH}, sized for standalone Redis reads** (from the "
            "2-worker figures above, measured on one standalone Redis: a join's read is two MGETs, auto-pipelined; "
            "cache off, so every key is a Redis read: a cache hit rate h leaves (1 - h) of the Redis side):",
            "",
        ]
    )
    redis_line = (
        f"* Redis: {redis_us:.0f} us of Redis CPU per join over the Cluster's nodes = {redis_core:,.0f} joins/s "
        f"per Redis core. At {REDIS_UTILIZATION:.0%} of a core each: **{shards} primaries** (+1 replica each). "
        "A join's 10 keys fall on up to 3 primaries here; on a Cluster of more primaries on up to 10, a round "
        "trip each: these figures hold for 3 and bound larger Clusters from below."
        if on_cluster
        else f"* Redis: {redis_us:.0f} us of Redis CPU per join = {redis_core:,.0f} joins/s per Redis core (one "
        f"command thread per Redis). At {REDIS_UTILIZATION:.0%} of a core each: **{shards} standalone primaries' "
        f"worth** of MGET reads (+1 replica each). One Redis cannot carry it, and the store spreads keys over "
        "several Redis only as a Redis Cluster (`cluster: true`, docs/storage.md), whose read is a write of GETs "
        "per node (auto-pipelined per node on the store's own connections): `python -m benchmarks.scaling "
        '--cluster` measures that path ("on a Redis Cluster of 3 primaries" below).'
    )
    return [
        *head,
        f"* Server: {cpu_us:.0f} us of CPU per join = {per_core:,.0f} joins/s per core. A pod of {POD_CORES} cores "
        f"({POD_CORES} workers) held at the HPA's {HPA_UTILIZATION:.0%} CPU target carries {per_pod:,.0f} QPS: "
        f"**{pods} pods** ({pods * POD_CORES} cores) at the target, {math.ceil(pods * 1.25)} with a zone's worth "
        "of headroom (25%).",
        redis_line,
        "* HPA (deploy/k8s/featurestore.yaml): `averageUtilization: 60` on CPU (the figure the pod count is "
        f"sized at), `minReplicas: {math.ceil(pods / 2)}` (half the peak: a cold start adds pods at 100% per 30 s, "
        f"so half to full takes one step), `maxReplicas: {math.ceil(pods * 1.5)}` (peak plus 50% for bursts and "
        "a lost zone; the FeatureStoreShedding alert fires if even that is not enough); scale-up "
        "stabilization 0 s, +100% per 30 s; scale-down stabilization 300 s and at most 10% of the pods per 60 s "
        "(the shipped 1 pod per 60 s suits its 3-20 pods, not this fleet). "
        "Load shedding (limits.max_inflight, docs/api.md#overload) holds latency while new pods start.",
        "* Measured on a 2-core VM with Redis and the load generator beside the server: per-core figures "
        "come from CPU accounting, not from QPS, so they hold whatever else shares the cores; a fleet's nodes "
        "(the server alone on its cores, Redis on its own) should do at least as well.",
    ]


if __name__ == "__main__":
    sys.exit(main())
