"""Turn a bench.py run (JSON lines) plus the redis-py floor into the Feast comparison
section of benchmarks/RESULTS.md (benchmarks/results/feast.md), and stitch RESULTS.md.

For every (server, tool, batch, concurrency) the best clean attempt is used (a run is
clean when other tenants used at most --max-other cores); ratios divide each
featurestore variant by Feast at the same point of the same run.

    python -m benchmarks.report RAW.jsonl FLOOR.jsonl
    python -m benchmarks.report --stitch
    python -m benchmarks.report --rerender benchmarks/results/feast.md
"""

from __future__ import annotations

import argparse
import json
import re
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from benchmarks.derived_targets import derived_section
from benchmarks.feast_notes import notes
from benchmarks.feast_targets import STARVED_LATENCY, Row, footnotes, low_cores, mark, refusals, targets
from benchmarks.provenance import machine


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


def fmt(x: float | None, digits: int = 1) -> str:
    return "-" if x is None else f"{x:,.{digits}f}"


def tail(r: Row, key: str, resolves: int, star: str) -> str:
    """Percentile ``key`` of run ``r`` (``star``: wrk's corrected mark), or, when the run
    has fewer than ``resolves`` requests (1,000 for p99.9), their maximum and count: the
    nearest rank of so few is the last sample, not a p99.9."""
    n = r.get("requests")
    if n is not None and n < resolves and r.get("max_ms") is not None:
        return f"{r['max_ms']:.2f} max (n={n:,})"
    return f"{r[key]:.2f}{star}"


PARTS = (
    "feast.md",
    "feast-zipf.md",
    "cache.md",
    "cache-cpu.md",
    "cache-side-by-side.md",
    "cache-figures.md",
    "cache_cost.md",
    "grpc.md",
    "grpc-intake-ab.md",
    "grpc-floor.md",
    "proto-encoding.md",
    "redis-protocol.md",
    "overload.md",
    "overload-b1000.md",
    "overload-grpc.md",
    "overload-grpc-deadline.md",
    "grpc-refusal.md",
    "store-faults.md",
    "scaling.md",
    "scaling-cluster.md",
    "cluster-cost.md",
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
    "stream-windows.md",
    "stream-writes.md",
)
HAND_KEPT = ("experiments.md",)  # parts written by hand as a whole: dated experiments, no one command
RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def notes_of(part: Path) -> Path:
    """The hand-kept notes on a part (``X.md`` -> ``X.notes.md``): readings, comparisons with
    earlier runs and history that no command writes, kept apart so that a rerun of the
    command neither loses them nor passes them off as its own output."""
    return part.with_name(part.name.removesuffix(".md") + ".notes.md")


def stitch(results: Path = RESULTS) -> None:
    """RESULTS.md = every benchmark's latest part, in a fixed order, each followed by its
    hand-kept notes (``notes_of``) under a line saying so."""
    parts_dir = results.parent / "results"
    body = [
        "# Benchmark results",
        "",
        "Each section is written by its benchmark (see its command) into `benchmarks/results/`;",
        "`python -m benchmarks.report --stitch` puts them together here. Not written by a command:",
        "the notes after a section, under a line that says so (`benchmarks/results/<part>.notes.md`,",
        "kept by hand: dated readings of that run and of earlier ones), and the sections kept by hand",
        "as a whole, " + ", ".join(f"`benchmarks/results/{name}`" for name in HAND_KEPT) + ".",
        "",
    ]
    for name in PARTS:
        if name == "derived.md":
            body += derived_section(parts_dir)
        part = parts_dir / name
        if part.exists():
            body += [part.read_text().rstrip(), ""]
        notes = notes_of(part)
        if notes.exists():
            body += [
                f"*Notes kept by hand on the section above (`benchmarks/results/{notes.name}`), not written by its command:*",
                "",
                notes.read_text().rstrip(),
                "",
            ]
    results.write_text("\n".join(body))


def publish(name: str, lines: list[str], results: Path = RESULTS) -> None:
    """Write a benchmark's section as ``results/<name>``, print it, and restitch RESULTS.md."""
    part = results.parent / "results" / name
    part.parent.mkdir(exist_ok=True)
    part.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    stitch(results)


def run_span(rows: list[dict[str, Any]], raw: Path) -> str:
    """When the runs were made: their first and last start (bench.py's ``started``, the
    machine's UTC clock), not when the raw file was last written or copied."""
    started = sorted(r["started"] for r in rows if r.get("started"))
    if not started:
        return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(raw.stat().st_mtime))
    first, last = (t.replace("T", " ")[:16] for t in (started[0], started[-1]))
    return f"{first}-{last[11:] if last[:10] == first[:10] else last} UTC"


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
    source: str | None = None,
    data_check: str = "not recorded",
    seeds: str | None = None,
    machine_line: str | None = None,
) -> None:
    """``source``: ``provenance.source_state()`` taken when the run started; ``data_check``:
    what the data check found; ``seeds``: how wrk's keys were seeded (``seeds_text``);
    ``machine_line``: the machine and source tree as the run recorded them (``rerender``),
    read now from ``source`` when not given."""
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
        f"* Run: {run_span(rows, raw)}; command: `{command}`",
        f"* Machine: {machine_line or machine(source)}. Server, Redis and load generator share the cores.",
        f"* Servers, {workers} worker processes each: `{feast}` = `feast serve --workers {workers} --max-requests 0 "
        "--no-access-log` (Feast 0.67.0, ../shared/peers/feast); "
        + ", ".join(f"`{o}`" for o in ours)
        + f" = `featurestore serve --workers {workers}` on the Redis store"
        " (`_nocache`: row cache off, every key read from Redis).",
        f"* Data: the peer's 100,000 users x 16 features ({data_check}). Every request asks "
        f"all 16 features of B {drawn}.",
        *([f"* Keys: {seeds}"] if seeds else []),
        "* Protocol: the peer's `bench.py` once per point, all servers as targets of each call (their order "
        f"alternating between points), {duration:g} s per "
        "run after a warm-up, best clean attempt per point. QPS from wrk; wrk's p99/p99.9 are coordinated-omission "
        "corrected (marked *), loadgen.py's are plain measured percentiles.",
        f"* Raw runs (every attempt): `{shown(raw)}`"
        + (f"; the floor's measurements: `{shown(floor)}`." if floor and floor.exists() else "."),
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
    starved: list[str] = []
    for batch, conc in points:
        f = b.get((feast, qps_tool, batch, conc))
        cells = [fmt(f["qps"] if f else None, 0) + mark(starved, low_cores(b, feast, qps_tool, batch, conc))]
        for o in ours:
            r = b.get((o, qps_tool, batch, conc))
            cells.append(
                fmt(r["qps"] if r else None, 0) + mark(starved, low_cores(b, o, qps_tool, batch, conc))
            )
            cells.append(f"{r['qps'] / f['qps']:.1f}x" if r and f and f["qps"] else "-")
        lines.append(f"| {batch} | {conc} | " + " | ".join(cells) + " |")
    lines += footnotes(starved)

    lines += refusals(b)
    lines += targets(b, feast, ours, qps_tool, lat_tool, floors)

    lines += [
        "",
        "### Latency (ms): p50 / p99 / p99.9",
        "",
        "A percentile a run's requests cannot resolve (p99.9 of fewer than 1,000, p99 of fewer than 100) is "
        "printed as their maximum with their count, `max (n=...)`: a nearest-rank percentile of fewer samples "
        "is the slowest one.",
        "",
    ]
    for tool in tools:
        star = "*" if tool == "wrk" else ""
        lines += [
            f"#### {tool}",
            "",
            "| batch | conc | " + " | ".join(labels) + " |",
            "|---:|---:|" + "---|" * len(labels),
        ]
        slow: list[str] = []  # a server on fewer cores at a point: its latency is not the whole server's
        for batch, conc in points:
            cells = []
            for lbl in labels:
                r = b.get((lbl, tool, batch, conc))
                cells.append(
                    "-"
                    if not r
                    else f"{r['p50_ms']:.2f} / {tail(r, 'p99_ms', 100, star)} / {tail(r, 'p999_ms', 1000, star)}"
                    + mark(slow, low_cores(b, lbl, tool, batch, conc, STARVED_LATENCY))
                )
            lines.append(f"| {batch} | {conc} | " + " | ".join(cells) + " |")
        lines += [*footnotes(slow), ""]

    lines += [
        "### Server CPU per answered (200) request (ms) and clean runs",
        "",
        "bench.py's `server_cores` is the server's CPU over the wall time of the whole wrk or loadgen "
        "process (its start-up and the building of its bodies included), the QPS is over the load's own "
        "duration: the CPU per request below (cores x 1000 / QPS) reads up to ~10% low, alike for every "
        "server, so the ratios hold.",
        "",
    ]
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
            f"### The floor: bare redis-py doing the same reads ({keys} keys), no HTTP",
            "",
            "`benchmarks/redis_floor.py`: per request one pipelined MGET per view (2 views) of the distinct ids "
            f"among B drawn {'uniformly' if keys == 'uniform' else 'from the same Zipf law (s=1.1, same rank-to-id mapping)'} "
            f"as the servers' wrk bodies, on a pooled connection plus msgpack decoding; {workers} processes, "
            "32 concurrent loops in all.",
            "",
            "| batch | floor QPS (mean of before and after the servers' runs; lowest / highest) | p50 (after) | p99 (after) | featurestore_nocache QPS at c=32 | share of the floor | the floor in Feast's QPS at c=32 |",
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


RETRY_SEED_STEP = 1_000  # benchmarks.run: a point's retry draws SEED + 1,000, keys no server was sent yet


def seeds_text(seed: int, points: int, retried: int, tool: str) -> str:
    """How wrk's keys were seeded (``benchmarks.run.run_points``), for the "Keys" line; the
    peer's loadgen.py named only when the run used it (``tool`` "py" or "both"; a Zipf run
    is wrk only)."""
    return (
        f"wrk's bodies seeded with SEED {seed} + the point's index ({seed}..{seed + points - 1}, points in "
        "batch-then-concurrency order): every server got the same keys at a point; a point with a noisy "
        f"attempt was run once more for every server with SEED + {RETRY_SEED_STEP:,} ({retried} such points), "
        "keys no server had been sent; bench.py's warm-up draws others"
        + (
            "; the peer's loadgen.py (latency tables) sends its own fixed 4,096 bodies to every server."
            if tool != "wrk"
            else "."
        )
    )


def rerender(part: Path) -> None:
    """Write a Feast comparison part (feast.md, feast-zipf.md) again from its raw files,
    with the facts of the run that only the run knew (its command, machine and source tree,
    data check, seeds, answers other than ok) read from the part as it stands: for a change
    to how the report renders a run, without running it again."""
    text = part.read_text()

    def one(pattern: str) -> str:
        found = re.search(pattern, text, re.M)
        if found is None:
            raise SystemExit(f"{part}: no match for {pattern!r}: not a benchmarks.run part?")
        return found[1]

    root = RESULTS.parent.parent
    raw = root / one(r"^\* Raw runs \(every attempt\): `([^`]+)`")
    floor_path = re.search(r"the floor's measurements: `([^`]+)`", text)
    floor = root / floor_path[1] if floor_path else None
    rows = load(raw)
    seed = int(one(r"SEED (\d+) \+ the point's index"))
    last = int(one(r"the point's index \(\d+\.\.(\d+),"))
    retried = int(one(r"\((\d+) such points\)"))
    not_ok: dict[str, dict[str, float]] | None = None
    answers = re.search(r"featurestore_requests_total` \(.*?\): (.*)\.$", text, re.M)
    if answers:
        not_ok = {}
        for label, counts in re.findall(r"cache (\w+): ([^;]*)", answers[1]):
            not_ok[label] = {
                outcome: float(n.replace(",", "")) for n, outcome in re.findall(r"([\d,]+) (\w+)", counts)
            }
    write(
        raw,
        floor,
        part,
        workers=int(one(r"^\* Servers, (\d+) worker processes each")),
        duration=float(one(r"alternating between points\), (\S+) s per run")),
        command=one(r"^\* Run: .*; command: `([^`]+)`"),
        keys="zipf" if text.startswith("## ") and text.splitlines()[0].endswith(": Zipf keys") else "uniform",
        not_ok=not_ok,
        data_check=one(r"x 16 features \((.*?)\)\. Every request"),
        seeds=seeds_text(
            seed, last - seed + 1, retried, "wrk" if {r["tool"] for r in rows} == {"wrk"} else "both"
        ),
        machine_line=one(r"^\* Machine: (.*)\. Server, Redis and load generator share the cores\.$"),
    )


def shown(path: Path) -> str:
    """``path`` relative to the repository when it is inside it."""
    root = RESULTS.parent.parent
    return str(path.resolve().relative_to(root)) if path.resolve().is_relative_to(root) else str(path)


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
    ap.add_argument("--keys", choices=["uniform", "zipf"], default="uniform")
    ap.add_argument("--source", help="the source tree the run loaded (benchmarks.run prints it at its start)")
    ap.add_argument("--stitch", action="store_true", help="only rebuild RESULTS.md from benchmarks/results/")
    ap.add_argument(
        "--rerender", type=Path, metavar="PART",
        help="write a benchmarks.run part (results/feast.md, feast-zipf.md) again from its raw files, keeping "
        "the run's own facts (machine, seeds, data check) from the part: a rendering change, no new run",
    )  # fmt: skip
    a = ap.parse_args()
    if a.rerender:
        rerender(a.rerender)
        return
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
        keys=a.keys,
        source=a.source or "source tree not recorded",
    )


if __name__ == "__main__":
    main()
