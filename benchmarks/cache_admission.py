"""The cache that never costs: cache off, plain LRU and LRU + TinyLFU admission, side by
side on uniform and Zipf (s=1.1) keys over the peer's 100k users.

1. Hit rates by simulation (in-process, deterministic, machine-independent): the same
   key trace through ``LRUCache`` with and without the frequency sketch, at several
   cache sizes, batches of 10 keys.
2. Servers on one Redis (started here on a free port; the demo's two views materialized
   into it): ``off`` (cache: false), ``lru`` (cache.admission: none), ``tinylfu`` (the
   default), one worker each, driven by wrk with ``benchmarks/wrk_keys.lua`` (the peer's
   body, KEYS=uniform|zipf), points interleaved (the order alternates), ``--rounds``
   rounds; per run: QPS, server CPU per request and the hit rate from each server's
   ``featurestore_cache_*`` counters.

    python -m benchmarks.cache_admission [--duration 8] [--rounds 2] [--batches 1,100]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.derived import process
from benchmarks.footprint import free_port
from featurestore.admission import FrequencySketch
from featurestore.cache import LRUCache
from featurestore.demo.data import ensure_demo_data

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
WRK_KEYS = HERE / "wrk_keys.lua"
N_USERS = 100_000
VARIANTS = ("off", "lru", "tinylfu")


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
        miss = [k for k, r in zip(ks, cache.get_many(ks), strict=True) if r is None]
        hits += len(ks) - len(miss)
        if miss:
            cache.put_many(miss, [(1,)] * len(miss))
    return hits / len(keys)


def simulation_section(requests: int) -> list[str]:
    traces = {
        "uniform": np.random.default_rng(1).integers(1, N_USERS + 1, requests).tolist(),
        "zipf": zipf_ids(N_USERS, 1.1, requests, 1),
    }
    out = [
        f"Hit rates, simulated: {requests:,} keys per trace over {N_USERS:,} ids, batches of 10.",
        "",
        "| keys | cache entries | plain LRU | LRU + TinyLFU |",
        "|---|---:|---:|---:|",
    ]
    for name, trace in traces.items():
        for size in (1_000, 10_000, 50_000, 200_000):
            lru, tiny = simulate(trace, size, False), simulate(trace, size, True)
            out.append(f"| {name} | {size:,} | {lru:.1%} | {tiny:.1%} |")
    return out


def tree_cpu(pid: int) -> float:
    """CPU seconds of a process and its live descendants (the serving workers)."""
    total, stack = 0.0, [pid]
    while stack:
        p = stack.pop()
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += sum(int(f) for f in fields[11:15])
            for task in Path(f"/proc/{p}/task").iterdir():
                stack += [int(c) for c in (task / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total / os.sysconf("SC_CLK_TCK")


def cache_counters(port: int) -> tuple[float, float]:
    """(hits, misses) summed over views, from the server's /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    sums = {}
    for name in ("hits", "misses"):
        pat = re.compile(rf"^featurestore_cache_{name}_total\{{[^}}]*\}} (\S+)$", re.M)
        sums[name] = sum(float(v) for v in pat.findall(text))
    return sums["hits"], sums["misses"]


def wrk(port: int, pid: int, keys: str, batch: int, conns: int, seconds: float) -> dict[str, Any]:
    env = {**os.environ, "BATCH": str(batch), "KEYS": keys}
    h0, m0 = cache_counters(port)
    cpu0 = tree_cpu(pid)
    out = subprocess.run(
        ["wrk", "-t1", f"-c{conns}", f"-d{seconds:g}s", "--timeout", "30s", "-s", str(WRK_KEYS),
         f"http://127.0.0.1:{port}/v1/feature/join"],
        env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    cpu = tree_cpu(pid) - cpu0
    h1, m1 = cache_counters(port)
    res: dict[str, Any] = json.loads(next(x for x in out.stdout.splitlines() if x.startswith("RESULT "))[7:])
    if res["err_status"] or res["err_connect"] or res["err_read"]:
        raise RuntimeError(f"errors in the load run: {res}")
    res["cpu_us"] = cpu / max(res["requests"], 1) * 1e6
    looked = (h1 - h0) + (m1 - m0)
    res["hit_rate"] = (h1 - h0) / looked if looked else None
    return res


@contextmanager
def redis(workdir: Path) -> Iterator[str]:
    port = free_port()
    p = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(workdir)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        end = time.monotonic() + 10
        while (
            subprocess.run(["redis-cli", "-p", str(port), "ping"], capture_output=True).stdout.strip()
            != b"PONG"
        ):
            if time.monotonic() > end:
                raise RuntimeError("redis-server did not answer")
            time.sleep(0.1)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        p.terminate()
        p.wait(10)


def config(workdir: Path, url: str, variant: str, max_entries: int) -> Path:
    data = workdir / "data"
    path = workdir / f"config-{variant}.yaml"
    cache = "false" if variant == "off" else "true"
    admission = "none" if variant == "lru" else "tinylfu"
    path.write_text(
        f"project: demo\nregistry:\n  path: {workdir / 'registry'}\n"
        f"  definitions: {ROOT / 'featurestore' / 'demo' / 'features.yaml'}\n  definitions_base_dir: {data}\n"
        f"stores:\n  default: {{kind: redis, url: '{url}', cache: {cache}}}\n  analytics: {{kind: redis, url: '{url}'}}\n"
        f"cache: {{max_entries: {max_entries}, admission: {admission}}}\n"
    )
    return path


def server_section(a: argparse.Namespace) -> list[str]:
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        work = Path(tmp)
        ensure_demo_data(work / "data")
        url = stack.enter_context(redis(work))
        configs = {v: config(work, url, v, a.max_entries) for v in VARIANTS}
        for view in ("user_profile", "user_activity"):
            subprocess.run(
                [sys.executable, "-m", "featurestore.cli", "materialize", "--config", str(configs["off"]),
                 "--view", view, "--source", str(work / "data" / "users.parquet"), "--quiet"],
                check=True, cwd=ROOT,
            )  # fmt: skip
        servers = {}
        for v in VARIANTS:
            port = free_port()
            cmd = [sys.executable, "-m", "featurestore.cli", "serve", "--config", str(configs[v]), "--no-apply",
                   "--workers", "1", "--http-port", str(port), "--grpc-port", str(free_port()),
                   "--log-level", "warning"]  # fmt: skip
            pid = stack.enter_context(
                process(cmd, work / f"serve-{v}.log", f"http://127.0.0.1:{port}/readyz")
            )
            servers[v] = (port, pid)
        point = 0
        for keys in ("uniform", "zipf"):
            for batch in a.batches:
                for port, pid in servers.values():  # warm-up: fills the caches
                    wrk(port, pid, keys, batch, a.connections, a.warmup)
                for rnd in range(a.rounds):
                    order = list(VARIANTS) if point % 2 == 0 else list(reversed(VARIANTS))
                    point += 1
                    for v in order:
                        res = wrk(*servers[v], keys, batch, a.connections, a.duration)
                        res.update(variant=v, keys=keys, batch=batch, round=rnd)
                        print(json.dumps(res), flush=True)
                        runs.append(res)
    return render(runs, a)


def render(runs: list[dict[str, Any]], a: argparse.Namespace) -> list[str]:
    out = [
        f"Servers, 1 worker each, one Redis, wrk `-c{a.connections}`, {a.duration:g} s per run after a "
        f"{a.warmup:g} s warm-up, {a.rounds} interleaved rounds (median); cache.max_entries {a.max_entries:,}. "
        "QPS / server CPU per request (us) / hit rate:",
        "",
        "| keys | batch | cache off | plain LRU | LRU + TinyLFU | TinyLFU vs off (QPS) |",
        "|---|---:|---|---|---|---:|",
    ]
    for keys in ("uniform", "zipf"):
        for batch in a.batches:
            cells, qps = [], {}
            for v in VARIANTS:
                rs = [r for r in runs if r["variant"] == v and r["keys"] == keys and r["batch"] == batch]
                qps[v] = statistics.median(r["qps"] for r in rs)
                cpu = statistics.median(r["cpu_us"] for r in rs)
                hr = [r["hit_rate"] for r in rs if r["hit_rate"] is not None]
                cells.append(
                    f"{qps[v]:,.0f} / {cpu:.0f} / " + (f"{statistics.median(hr):.1%}" if hr else "-")
                )
            out.append(f"| {keys} | {batch} | {' | '.join(cells)} | {qps['tinylfu'] / qps['off'] - 1:+.1%} |")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--duration", type=float, default=8)
    ap.add_argument("--warmup", type=float, default=4)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--batches", type=lambda s: [int(x) for x in s.split(",")], default=[1, 100])
    ap.add_argument("--max-entries", type=int, default=200_000)
    ap.add_argument("--sim-keys", type=int, default=1_000_000)
    ap.add_argument("--no-servers", action="store_true", help="only the simulation")
    a = ap.parse_args()
    lines = ["## Cache admission: uniform and Zipf keys (issue 16, requirement 2)", ""]
    cmd = " ".join(["python -m benchmarks.cache_admission", *sys.argv[1:]])
    lines += [f"`{cmd}`", "", *simulation_section(a.sim_keys), ""]
    if not a.no_servers:
        lines += server_section(a)
    part = HERE / "results" / "cache.md"
    part.parent.mkdir(exist_ok=True)
    part.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    from benchmarks.report import stitch

    stitch()
    return 0


if __name__ == "__main__":
    sys.exit(main())
