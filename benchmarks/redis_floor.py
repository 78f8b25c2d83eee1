"""The floor: a bare redis-py loop doing the reads a join does, with no HTTP at all.

Each "request" takes B user ids, sends one MGET per view (2 views) pipelined on one
pooled connection (each distinct id once, as a join asks), and decodes the msgpack rows:
the Redis work of one join. The ids are drawn as the side-by-side's wrk bodies draw them
(``--keys``): uniformly over the 100,000 users, or from the Zipf law of
``benchmarks/wrk_keys.lua`` (s=1.1, rank r -> user (r-1)*7919 mod N + 1, as
``cache_admission.zipf_ids``), pre-drawn before the clock starts. C asyncio tasks per
process run closed-loop for D seconds, in W processes (the same worker count as the
servers). What a server adds on top of this is its HTTP, JSON and join overhead.

    python -m benchmarks.redis_floor --url redis://127.0.0.1:6379/0 --batch 10 --concurrency 32 [--keys zipf]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import statistics
import time
from typing import Any

import msgspec

VIEWS = ("user_profile", "user_activity")
N_USERS = 100_000
POOL = 1 << 20  # ids pre-drawn per process; each loop walks them from its own offset


def draw_ids(keys: str, count: int, seed: int, n: int = N_USERS) -> list[int]:
    """``count`` user ids in 1..n: uniform, or Zipf (s=1.1) mapped as wrk_keys.lua maps ranks."""
    import numpy as np

    if keys == "zipf":
        from benchmarks.cache_admission import zipf_ids

        return zipf_ids(n, 1.1, count, seed)
    if keys != "uniform":
        raise ValueError(f"keys must be uniform or zipf, got {keys!r}")
    return [int(x) for x in np.random.default_rng(seed).integers(1, n + 1, count)]


async def _worker(
    url: str, project: str, version: int, batch: int, conc: int, seconds: float, keys: str, seed: int
) -> dict[str, Any]:
    from redis.asyncio import BlockingConnectionPool

    pool = BlockingConnectionPool.from_url(url, max_connections=conc)
    decode = msgspec.msgpack.Decoder().decode
    prefixes = [f"fs:{project}:{v}:v{version}:" for v in VIEWS]
    latencies: list[float] = []
    pool_ids = draw_ids(keys, POOL, seed)
    end = time.perf_counter() + seconds

    async def loop(n: int) -> None:
        at = n * (POOL // max(conc, 1))
        while time.perf_counter() < end:
            if at + batch > POOL:
                at = 0
            ids = dict.fromkeys(pool_ids[at : at + batch])  # each key read once, as a join reads it
            at += batch
            t0 = time.perf_counter()
            conn = await pool.get_connection()  # type: ignore[no-untyped-call]
            try:
                # each MGET carries the view's layout marker too, as the server's does
                cmds = [("MGET", *(p + str(i) for i in ids), p[:-1]) for p in prefixes]
                await conn.send_packed_command(conn.pack_commands(cmds), check_health=False)
                for _ in cmds:
                    *rows, _marker = await conn.read_response()
                    for blob in rows:
                        if blob is not None:
                            decode(blob)
            finally:
                await pool.release(conn)
            latencies.append(time.perf_counter() - t0)

    t_start = time.perf_counter()
    await asyncio.gather(*(loop(i) for i in range(conc)))
    wall = time.perf_counter() - t_start
    await pool.disconnect()
    return {"requests": len(latencies), "wall": wall, "latencies": latencies}


def _run(args: tuple[str, str, int, int, int, float, str, int]) -> dict[str, Any]:
    import uvloop

    return uvloop.run(_worker(*args))


def measure(
    url: str,
    project: str,
    version: int,
    batch: int,
    conc: int,
    seconds: float,
    procs: int,
    keys: str = "uniform",
) -> dict[str, Any]:
    per = max(conc // procs, 1)
    with mp.get_context("spawn").Pool(procs) as pool:
        parts = pool.map(_run, [(url, project, version, batch, per, seconds, keys, i) for i in range(procs)])
    lat = sorted(x for p in parts for x in p["latencies"])
    qps = sum(p["requests"] / p["wall"] for p in parts)

    def pct(q: float) -> float:
        return float(lat[min(int(q * len(lat)), len(lat) - 1)]) * 1000

    return {
        "tool": "redis_floor", "label": f"redis-py floor ({procs} proc)", "keys": keys, "batch": batch,
        "concurrency": conc,
        "qps": round(qps, 1), "p50_ms": round(pct(0.5), 3), "p99_ms": round(pct(0.99), 3),
        "p999_ms": round(pct(0.999), 3), "mean_ms": round(statistics.fmean(lat) * 1000, 3), "requests": len(lat),
    }  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--url", default="redis://127.0.0.1:6379/0")
    ap.add_argument("--project", default="demo")
    ap.add_argument("--data-version", type=int, default=1)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--duration", type=float, default=10)
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--keys", choices=["uniform", "zipf"], default="uniform")
    a = ap.parse_args()
    got = measure(a.url, a.project, a.data_version, a.batch, a.concurrency, a.duration, a.processes, a.keys)
    print(json.dumps(got))


if __name__ == "__main__":
    main()
