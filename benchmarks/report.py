"""Turn a bench.py run (JSON lines) plus the redis-py floor into the Feast comparison
section of benchmarks/RESULTS.md (benchmarks/results/feast.md), and stitch RESULTS.md.

For every (server, tool, batch, concurrency) the best clean attempt is used (a run is
clean when other tenants used at most --max-other cores); ratios divide each
featurestore variant by Feast at the same point of the same run.

    python -m benchmarks.report RAW.jsonl FLOOR.jsonl
    python -m benchmarks.report --stitch
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from benchmarks.derived_targets import derived_section
from benchmarks.feast_targets import Row, cpu_ms, refusals, targets


def load(path: Path) -> list[Row]:
    """The raw runs; a run's ``qps`` counts its 200s only (wrk's and loadgen's count every
    answer, and a shed join is a fast 503), the count of all answers kept as ``qps_all``."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    for r in rows:
        # A run with connection, read, write or timeout errors (wrk) or failed requests and
        # bodies of the wrong length (loadgen) is not clean: the best clean attempt is used.
        failed = sum(
            r.get(k, 0) for k in ("err_connect", "err_read", "err_write", "err_timeout", "errors", "bad_body")
        )
        if failed:
            r["failed"] = failed
            r["accepted"] = False
        bad = r.get("err_status", 0) or r.get("bad_status", 0)
        if bad and r.get("duration_s"):
            r["qps_all"] = r["qps"]
            r["qps"] = (r["requests"] - bad) / r["duration_s"]
    return rows


def _outcomes(counts: dict[str, float]) -> str:
    return ", ".join(f"{int(n):,} {outcome}" for outcome, n in sorted(counts.items())) or "none"


def merge_floors(rows: list[Row]) -> list[Row]:
    """One floor per batch: the mean of its measurements (``benchmarks.run`` takes one
    before and one after the servers' runs, the VM's speed drifting by several per cent
    over a run), their spread kept as ``qps_range``."""
    by_batch: dict[int, list[Row]] = defaultdict(list)
    for r in rows:
        by_batch[r["batch"]].append(r)
    out = []
    for _, rs in sorted(by_batch.items()):
        qps = [r["qps"] for r in rs]
        out.append({**rs[-1], "qps": sum(qps) / len(qps), "qps_range": (min(qps), max(qps))})
    return out


def best(rows: list[Row]) -> dict[tuple[str, str, int, int], Row]:
    groups: dict[tuple[str, str, int, int], list[Row]] = defaultdict(list)
    for r in rows:
        groups[(r["label"], r["tool"], r["batch"], r["concurrency"])].append(r)
    out = {}
    for key, rs in groups.items():
        clean = [r for r in rs if r.get("accepted", True)]
        pick = max(clean or rs, key=lambda r: r["qps"])
        pick = {**pick, "_clean": f"{len(clean)}/{len(rs)}"}
        out[key] = pick
    return out


def _cmd(args: list[str]) -> str:
    try:
        return subprocess.run(args, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return "?"


def machine() -> str:
    model = next(
        (ln.split(":", 1)[1].strip() for ln in _cmd(["lscpu"]).splitlines() if ln.startswith("Model name")),
        "?",
    )
    mem = next(
        (ln.split()[1] for ln in Path("/proc/meminfo").read_text().splitlines() if ln.startswith("MemTotal")),
        "0",
    )
    return (
        f"{model}, {_cmd(['nproc'])} vCPU, {int(mem) // 1024 // 1024} GiB RAM, Linux {platform.release()}; "
        f"Python {platform.python_version()}; {_cmd(['redis-server', '--version']).split(' sha=')[0]}; "
        f"featurestore commit {_cmd(['git', 'rev-parse', '--short', 'HEAD'])}"
    )


def fmt(x: float | None, digits: int = 1) -> str:
    return "-" if x is None else f"{x:,.{digits}f}"


PARTS = (
    "feast.md",
    "feast-zipf.md",
    "cache.md",
    "cache-figures.md",
    "cache_cost.md",
    "grpc.md",
    "grpc-floor.md",
    "redis-protocol.md",
    "overload.md",
    "store-faults.md",
    "scaling.md",
    "experiments.md",
    "json-encoding.md",
    "deadlines.md",
    "clickhouse.md",
    "derived.md",  # under the section derived_section() writes, with the targets
    "derived-cpu.md",
    "derived-arrays.md",
    "footprint-demo.md",
    "footprint-demo-no-derived.md",
    "footprint-no-clickhouse.md",
    "lineage.md",
    "lineage-latency.md",
    "drift.md",
    "lineage-page.md",
    "streaming.md",
)
RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def stitch(results: Path = RESULTS) -> None:
    """RESULTS.md = every benchmark's latest part, in a fixed order."""
    parts_dir = results.parent / "results"
    body = [
        "# Benchmark results",
        "",
        "Each section is written by its benchmark (see its command) into `benchmarks/results/`;",
        "`python -m benchmarks.report --stitch` puts them together here.",
        "",
    ]
    for name in PARTS:
        if name == "derived.md":
            body += derived_section(parts_dir)
        part = parts_dir / name
        if part.exists():
            body += [part.read_text().rstrip(), ""]
    results.write_text("\n".join(body))


def publish(name: str, lines: list[str], results: Path = RESULTS) -> None:
    """Write a benchmark's section as ``results/<name>``, print it, and restitch RESULTS.md."""
    part = results.parent / "results" / name
    part.parent.mkdir(exist_ok=True)
    part.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    stitch(results)


def write(
    raw: Path,
    floor: Path | None,
    out: Path,
    *,
    workers: int,
    duration: float,
    command: str,
    keys: str = "uniform",
    not_ok: dict[str, dict[str, float]] | None = None,
) -> None:
    rows = load(raw)
    b = best(rows)
    labels = list(dict.fromkeys(r["label"] for r in rows))
    feast = next(lbl for lbl in labels if lbl.startswith("feast"))
    ours = [lbl for lbl in labels if lbl != feast]
    points = sorted({(r["batch"], r["concurrency"]) for r in rows})
    tools = sorted({r["tool"] for r in rows}, key=lambda t: t != "wrk")
    qps_tool = "wrk" if "wrk" in tools else tools[0]
    lat_tool = next((t for t in tools if t.startswith("loadgen")), qps_tool)
    floors = merge_floors(load(floor)) if floor and floor.exists() else []

    drawn = (
        "uniformly random users (`benchmarks/wrk_keys.lua`, the peer's bodies, and the peer's `loadgen.py`)"
        if keys == "uniform"
        else "users drawn from a Zipf law (s=1.1) over the 100,000 ids (`benchmarks/wrk_keys.lua` with KEYS=zipf in "
        "place of the peer's wrk script; wrk only)"
    )
    lines = [
        "## featurestore vs Feast (same Redis, same data, same load, one run)"
        + ("" if keys == "uniform" else ": Zipf keys"),
        "",
        f"* Run: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(raw.stat().st_mtime))}; command: `{command}`",
        f"* Machine: {machine()}. Server, Redis and load generator share the cores.",
        f"* Servers, {workers} worker processes each: `{feast}` = `feast serve --workers {workers} --max-requests 0 "
        "--no-access-log` (Feast 0.67.0, ../shared/peers/feast); "
        + ", ".join(f"`{o}`" for o in ours)
        + f" = `featurestore serve --workers {workers}` on the Redis store"
        " (`_nocache`: LRU cache off, every key read from Redis).",
        "* Data: the peer's 100,000 users x 16 features (identical values: canonical sha256 checked). Every request asks "
        f"all 16 features of B {drawn}.",
        f"* Protocol: the peer's `bench.py`, all servers as targets of one call (points interleaved), {duration:g} s per "
        "run after a warm-up, best clean attempt per point. QPS from wrk; wrk's p99/p99.9 are coordinated-omission "
        "corrected (marked *), loadgen.py's are plain measured percentiles.",
        f"* Raw runs: `{raw.resolve().relative_to(RESULTS.parent) if raw.resolve().is_relative_to(RESULTS.parent) else raw}`.",
        *(
            [
                "* featurestore's answers other than ok over the whole run, from its `featurestore_requests_total` "
                "(a partial answer is a 200 the load generators count): "
                + "; ".join(f"cache {k}: {_outcomes(v)}" for k, v in not_ok.items())
                + "."
            ]
            if not_ok is not None
            else []
        ),
        "",
        "### Throughput (QPS, wrk) and ratio to Feast",
        "",
        "| batch | conc | " + " | ".join([feast, *(f"{o} | x Feast" for o in ours)]) + " |",
        "|---:|---:|" + "---:|" * (1 + 2 * len(ours)),
    ]
    for batch, conc in points:
        f = b.get((feast, qps_tool, batch, conc))
        cells = [fmt(f["qps"] if f else None, 0)]
        for o in ours:
            r = b.get((o, qps_tool, batch, conc))
            cells.append(fmt(r["qps"] if r else None, 0))
            cells.append(f"{r['qps'] / f['qps']:.1f}x" if r and f and f["qps"] else "-")
        lines.append(f"| {batch} | {conc} | " + " | ".join(cells) + " |")

    lines += refusals(b)
    lines += targets(b, feast, ours, qps_tool, lat_tool, floors)

    lines += ["", "### Latency (ms): p50 / p99 / p99.9", ""]
    for tool in tools:
        star = "*" if tool == "wrk" else ""
        lines += [
            f"#### {tool}",
            "",
            "| batch | conc | " + " | ".join(labels) + " |",
            "|---:|---:|" + "---|" * len(labels),
        ]
        for batch, conc in points:
            cells = []
            for lbl in labels:
                r = b.get((lbl, tool, batch, conc))
                cells.append(
                    "-"
                    if not r
                    else f"{r['p50_ms']:.2f} / {r['p99_ms']:.2f}{star} / {r['p999_ms']:.2f}{star}"
                )
            lines.append(f"| {batch} | {conc} | " + " | ".join(cells) + " |")
        lines.append("")

    lines += ["### Server CPU per answered (200) request (ms) and clean runs", ""]
    lines += ["| batch | conc | " + " | ".join(labels) + " |", "|---:|---:|" + "---|" * len(labels)]
    for batch, conc in points:
        cells = []
        for lbl in labels:
            r = b.get((lbl, qps_tool, batch, conc))
            if not r:
                cells.append("-")
                continue
            cpu = r["server_cores"] * 1000 / r["qps"] if r.get("server_cores") and r["qps"] else None
            cells.append(f"{fmt(cpu, 2)} ({r.get('server_cores', '-')} cores, clean {r['_clean']})")
        lines.append(f"| {batch} | {conc} | " + " | ".join(cells) + " |")

    if floors:
        lines += [
            "",
            "### The floor: bare redis-py doing the same reads, no HTTP",
            "",
            "`benchmarks/redis_floor.py`: per request one pipelined MGET per view (2 views) of B random keys on a "
            f"pooled connection plus msgpack decoding; {workers} processes, 32 concurrent loops in all.",
            "",
            "| batch | floor QPS (mean of before and after the servers' runs; lowest / highest) | p50 | p99 | featurestore_nocache QPS at c=32 | share of the floor | the floor in Feast's QPS at c=32 |",
            "|---:|---:|---:|---:|---:|---:|---:|",
        ]
        nocache = next((o for o in ours if o.endswith("_nocache")), ours[0])
        for fl in floors:
            r = b.get((nocache, qps_tool, fl["batch"], 32))
            share = f"{r['qps'] / fl['qps'] * 100:.0f}%" if r else "-"
            peer = b.get((feast, qps_tool, fl["batch"], 32))
            ceiling = f"{fl['qps'] / peer['qps']:.1f}x" if peer and peer["qps"] else "-"
            lines.append(
                f"| {fl['batch']} | {fl['qps']:,.0f} ({' / '.join(f'{q:,.0f}' for q in fl['qps_range'])}) | {fl['p50_ms']:.2f} | {fl['p99_ms']:.2f} | "
                f"{fmt(r['qps'] if r else None, 0)} | {share} | {ceiling} |"
            )
        lines += [
            "",
            "The last column is what the bare client of `benchmarks/redis_floor.py` reached against "
            "Feast's QPS in this run (one MGET per view per request, 32 loops): a target above it "
            "(issue 16's 30x at batch 100) asks a server for more than that client did without HTTP, "
            "JSON or a join (a server merging concurrent joins' keys into fewer round trips could pass it).",
        ]
    out.write_text("\n".join(lines) + "\n" + notes(b, feast, ours, points, qps_tool))
    stitch()


def notes(b: dict[Any, Any], feast: str, ours: list[str], points: list[tuple[int, int]], tool: str) -> str:
    """The notes, with this run's numbers (never numbers from an older run)."""
    cached = next((o for o in ours if not o.endswith("_nocache")), ours[0])
    nocache = next((o for o in ours if o.endswith("_nocache")), ours[-1])

    def span(label: str, batch: int) -> str:
        vals = [
            v
            for c in sorted({c for bb, c in points if bb == batch})
            if (v := cpu_ms(b.get((label, tool, batch, c))))
        ]
        if not vals:
            return "-"
        lo, hi = min(vals), max(vals)
        return f"{lo:.2f}" if f"{lo:.2f}" == f"{hi:.2f}" else f"{lo:.2f}-{hi:.2f}"

    batches = sorted({bb for bb, _ in points})
    cpu = "; ".join(
        f"batch {bb}: {span(cached, bb)} ms against Feast's {span(feast, bb)} ms" for bb in batches
    )
    big = max(batches)
    c_on, c_off = cpu_ms(b.get((cached, tool, big, 32))), cpu_ms(b.get((nocache, tool, big, 32)))
    cache_line = (
        f"At batch {big} (c=32) the server spent {c_on:.2f} ms CPU per request with the cache on, "
        f"{c_off:.2f} ms with it off"
        if c_on is not None and c_off is not None
        else f"At batch {big} no CPU figure for both cache settings"
    )
    return NOTES.format(cpu=cpu, cache_line=cache_line)


NOTES = """
### Reading these numbers

* The 2 vCPUs are shared by the servers under test, Redis and the load generator, and
  the VM is shared with other tenants: `bench.py` measures other tenants' CPU per run
  and repeats noisy runs; only runs made in the same call are compared. Server CPU per
  request is the steadiest comparison; in this run: {cpu}.
* Where the time goes (py-spy, one featurestore process, batch 1, concurrency 32, cache
  off; a profile taken once, not per run): join engine incl. the Redis socket write 33%,
  uvicorn/httptools and the ASGI glue 25%, redis-py reply reading and msgpack decoding
  18%, JSON decode/encode 10%, the event loop 9%, tracing 2%, metrics 0.7%, lineage 0.2%
  (before auto-pipelining was on by default: since, the MGETs of the joins of one
  event-loop tick share one write, "Requirement 3 experiments" below). What would take
  more off: a smaller HTTP layer than uvicorn's ASGI cycle.
* featurestore serves the HTTP join from the ASGI scope directly (no framework routing
  on the hot path), reads Redis with one pipelined MGET per view (plus the view's layout
  marker) on a lean connection pool without per-call timeouts, decodes msgpack rows once
  per unique key, computes statuses once per view, buffers its metrics, and calls
  `gc.freeze()` after start-up so full collections do not walk the loaded heap (Feast's
  workers pause 130-190 ms for that reason).
* With the cache on (TTL 30 s, 200,000 rows: both views' 100,000 users fit, the
  production default), keys come from the in-process cache once read in the last 30 s.
  wrk's bodies (`benchmarks/wrk_keys.lua`) hold three draws per user (batch 1: 300,000
  pre-built bodies), so the cache sees the whole key space; the peer's loadgen.py (the
  latency columns) cycles its 4,096 bodies, at batch 1 a hot set of ~4,000 users.
  Until 2026-12-03 wrk cycled 4,096 bodies too. The `_nocache` columns read every
  key from Redis. {cache_line}. A cached row
  costs about what a row from Redis on loopback costs; the cache saves the round trip,
  and only for a read it answers in full. So a large read whose chance of a full hit
  does not pay for its expected fills (batch 100: 200 keys, almost always one miss) goes
  past the cache to Redis for every key (`cache.fills_per_round_trip`,
  `docs/storage.md`); on Redis under load that rule also sends batch-1 reads past a cache
  that misses often (a round trip auto-pipelining shares is worth half a missed key).
* featurestore's workers share the port with SO_REUSEPORT; gunicorn's (Feast) share one
  accepting socket, which can spread few connections unevenly (see the cores column).
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("raw", type=Path, nargs="?")
    ap.add_argument("floor", type=Path, nargs="?")
    ap.add_argument("--out", type=Path, default=RESULTS.parent / "results" / "feast.md")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--duration", type=float, default=10)
    ap.add_argument(
        "--command", default="python -m benchmarks.run", help="the command that made the raw runs"
    )
    ap.add_argument("--stitch", action="store_true", help="only rebuild RESULTS.md from benchmarks/results/")
    a = ap.parse_args()
    if a.stitch or a.raw is None:
        stitch()
        return
    write(
        a.raw,
        a.floor,
        a.out,
        workers=a.workers,
        duration=a.duration,
        command=a.command,
    )


if __name__ == "__main__":
    main()
