"""A multi-process gRPC load generator for ``featurestore.v1.FeatureService/Join``.

P processes (spawned), each with its own channels (4 connections) and C/P closed-loop calls on
grpc.aio (uvloop), send pre-built serialized JoinRequests (B user ids, uniform or Zipf
as benchmarks/wrk_keys.lua draws them, all 16 demo features) and do not parse the
answers: the client's work per call is grpc's own, so the server is what is measured.
Every answer's status is checked (OK or counted as an error). Reported: QPS, plain
p50/p99/p99.9 and the generator's own CPU (cores, summed over its processes), so a
reader can see the client is not the bottleneck.

    python -m benchmarks.grpc_load --target 127.0.0.1:50051 --batch 10 --concurrency 32
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import random
import struct
import time
from collections import Counter
from pathlib import Path
from typing import Any

from featurestore.demo.data import FEATURE_REFS

METHOD = "/featurestore.v1.FeatureService/Join"


def requests(batch: int, count: int, seed: int, keys: str = "uniform") -> list[bytes]:
    from featurestore.v1 import featurestore_pb2 as pb

    if keys == "zipf":
        from benchmarks.cache_admission import N_USERS, zipf_ids

        ids = zipf_ids(N_USERS, 1.1, batch * count, seed)
    else:
        rnd = random.Random(seed)
        ids = [rnd.randint(1, 100_000) for _ in range(batch * count)]
    out = []
    for i in range(count):
        req = pb.JoinRequest(features=FEATURE_REFS)
        req.entities.add(name="user_id").int64_values.values.extend(ids[i * batch : (i + 1) * batch])
        out.append(req.SerializeToString())
    return out


def load_bodies(path: str) -> list[bytes]:
    """Messages written by benchmarks/feast_grpc_requests.py (each length-prefixed)."""
    data = Path(path).read_bytes()
    out, at = [], 0
    while at < len(data):
        size = struct.unpack_from("<I", data, at)[0] if at + 4 <= len(data) else len(data)
        if at + 4 + size > len(data):
            raise ValueError(f"{path}: the message at byte {at} is cut short (the file is truncated)")
        out.append(data[at + 4 : at + 4 + size])
        at += 4 + size
    return out


async def _worker(
    target: str,
    batch: int,
    conc: int,
    seconds: float,
    seed: int,
    keys: str,
    channels_n: int,
    method: str = METHOD,
    bodies_from: str | None = None,
) -> dict[str, Any]:
    import grpc

    bodies = load_bodies(bodies_from.format(seed=seed)) if bodies_from else requests(batch, 2048, seed, keys)
    latencies: list[float] = []
    errors = 0
    codes: Counter[str] = Counter()  # the errors by status name (RESOURCE_EXHAUSTED: shed)
    # Own connections (grpc shares one per target between channels otherwise), so the
    # server's SO_REUSEPORT spreads them over its workers as it spreads HTTP clients'.
    options = [("grpc.use_local_subchannel_pool", 1)]
    channels = [
        grpc.aio.insecure_channel(target, options=options) for _ in range(max(1, min(conc, channels_n)))
    ]
    joins = [ch.unary_unary(method) for ch in channels]  # bytes in, bytes out: no (de)serialization
    try:
        for join in joins:  # connected (and the server's path warm) before the clock starts
            try:
                await join(bodies[0], timeout=10)
            except grpc.aio.AioRpcError as e:  # shed, so connected: a shedding server's
                if e.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
                    raise
        end = time.perf_counter() + seconds
        cpu0, t_start = time.process_time(), time.perf_counter()

        async def loop(k: int) -> None:
            nonlocal errors
            join = joins[k % len(joins)]
            i = k * 97
            while time.perf_counter() < end:
                body = bodies[i % len(bodies)]
                i += 1
                t0 = time.perf_counter()
                try:
                    await join(body, timeout=10)
                except grpc.aio.AioRpcError as e:
                    errors += 1
                    codes[e.code().name] += 1
                    continue
                latencies.append(time.perf_counter() - t0)

        import asyncio

        await asyncio.gather(*(loop(k) for k in range(conc)))
        wall = time.perf_counter() - t_start
        cpu = time.process_time() - cpu0
    finally:
        for ch in channels:
            await ch.close()
    return {"latencies": latencies, "errors": errors, "codes": dict(codes), "wall": wall, "cpu": cpu}


def _run(args: tuple[str, int, int, float, int, str, int, str, str | None]) -> dict[str, Any]:
    import uvloop

    return uvloop.run(_worker(*args))


def measure(
    target: str,
    batch: int,
    conc: int,
    seconds: float,
    procs: int = 2,
    keys: str = "uniform",
    channels: int = 4,
    method: str = METHOD,
    bodies_from: str | None = None,
) -> dict[str, Any]:
    """``method`` and ``bodies_from`` (a path with ``{seed}``, one file per process's seed,
    1000 + its index) drive another server with its own pre-serialized requests (the Feast
    peer: benchmarks/feast_grpc.py)."""
    procs = max(1, min(procs, conc))
    per = [conc // procs + (1 if i < conc % procs else 0) for i in range(procs)]
    with mp.get_context("spawn").Pool(procs) as pool:
        parts = pool.map(
            _run,
            [
                (target, batch, per[i], seconds, 1000 + i, keys, channels, method, bodies_from)
                for i in range(procs)
            ],
        )
    lat = sorted(x for p in parts for x in p["latencies"])
    codes = sum((Counter(p["codes"]) for p in parts), Counter[str]())
    wall = max(p["wall"] for p in parts)

    def pct(q: float) -> float:
        return round(lat[min(int(q * len(lat)), len(lat) - 1)] * 1000, 3) if lat else float("nan")

    return {
        "tool": f"grpc_load ({procs} proc)", "batch": batch, "concurrency": conc, "keys": keys,
        "requests": len(lat), "qps": round(len(lat) / wall, 1), "p50_ms": pct(0.5), "p99_ms": pct(0.99),
        "p999_ms": pct(0.999), "errors": sum(p["errors"] for p in parts), "codes": dict(codes),
        "client_cores": round(sum(p["cpu"] for p in parts) / wall, 2),
    }  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--target", default="127.0.0.1:50051")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--duration", type=float, default=10)
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--keys", choices=["uniform", "zipf"], default="uniform")
    ap.add_argument("--channels", type=int, default=4, help="connections per process")
    a = ap.parse_args()
    print(json.dumps(measure(a.target, a.batch, a.concurrency, a.duration, a.processes, a.keys, a.channels)))


if __name__ == "__main__":
    main()
