"""Derived features: what ``python -m benchmarks.derived`` writes. The tables
(benchmarks/results/derived.md), the figures the targets are checked against
(derived.json; RESULTS.md's "Derived features" section: benchmarks.report), and the
sections a run did not measure kept from the runs that did (derived-sections.json).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.derived_kernel import NUMBA, NUMPY, PYTHON
from benchmarks.derived_targets import FEAST_TARGET_RATIO, JOIN_TARGET_PCT, KERNEL_TARGET_MS
from benchmarks.report import stitch

HERE = Path(__file__).resolve().parent


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def render(results: dict[str, Any], a: argparse.Namespace) -> str:
    """benchmarks/results/derived.md: the measurements, each table with its target
    (RESULTS.md puts the targets of issue 17 together above it: benchmarks.report)."""
    lines = ["### Derived features: measurements", ""]
    if "kernel" in results:
        k = results["kernel"]
        lines += [_ran(k), f"Kernel throughput, {k['rows']:,} rows of `ctr_x_price_bucket` (target: at most "
                  f"{KERNEL_TARGET_MS:g} ms for the numba kernel):", "",
                  "| implementation | best (ms) | median (ms) | target |", "|---|---:|---:|---|"]  # fmt: skip
        for name, v in k["results"].items():
            target = (
                f"<= {KERNEL_TARGET_MS:g} ms: {verdict(v['best_ms'] <= KERNEL_TARGET_MS)}"
                if name == NUMBA
                else ""
            )
            lines.append(f"| {name} | {v['best_ms']:.3f} | {v['median_ms']:.3f} | {target} |")
        lines.append("")
    if "join" in results:
        m = results["join"].get("meta", {})
        conns, duration, rounds = (
            m.get("conns", a.conns),
            m.get("duration", a.duration),
            m.get("rounds", a.rounds),
        )
        lines += [_ran(results["join"]), f"Join overhead, demo server (memory stores, 1 worker), wrk -c{conns}, {duration:g} s x {rounds} "
                  f"rounds interleaved (each round runs the pair back to back, alternating which goes first), median QPS per side; the cost is the median of the rounds' paired ratios (target: the four derived features cost at most {JOIN_TARGET_PCT:g}%):", "",
                  "| request | batch | QPS without | QPS with 4 derived | QPS cost "
                  "| server CPU µs/request without, with | CPU cost | target |",
                  "|---|---:|---:|---:|---:|---:|---:|---|"]  # fmt: skip
        for key, v in results["join"]["summary"].items():
            pair, batch = key.split("/b")
            what = {
                "ranker": "ranker_v1 (16 stored) vs ranker_v2",
                "inputs": "3 stored inputs vs + 4 derived",
                "stored": "control: 3 inputs + 4 stored vs 3 inputs + 4 derived",
            }[pair]
            target = (
                "(the cost of derived over stored columns)"
                if pair == "stored"
                else f"<= {JOIN_TARGET_PCT:g}%: {verdict(v['cost_pct'] <= JOIN_TARGET_PCT)}"
            )
            lines.append(
                f"| {what} | {batch} | {v['without']:,.0f} | {v['with']:,.0f} | {v['cost_pct']:.2f}% "
                f"| {v['cpu_us']['without']:,.0f}, {v['cpu_us']['with']:,.0f} | {v['cpu_cost_pct']:.1f}% "
                f"| {target} |"
            )
        lines.append("")
    if "feast" in results:
        f = results["feast"]
        conns = f.get("meta", {}).get("conns", a.conns)
        lines += [_ran(f), f"Side by side with Feast 0.67 on-demand feature views, the four derived features, {f['workers']} "
                  f"workers each, same Redis (featurestore's cache on, its default), wrk -c{conns}, the order of the three alternating by round, median QPS (goal: {FEAST_TARGET_RATIO:g}x Feast python mode "
                  "at batch 100; judged, as the join costs are, by the median of the rounds' paired ratios):", "",
                  "| batch | Feast python | Feast pandas | featurestore | vs python | rounds' paired ratios: median (range) | target |",
                  "|---:|---:|---:|---:|---:|---:|---|"]  # fmt: skip
        for key, v in f["summary"].items():
            ratio = v["featurestore"] / v["feast_python"]
            paired = round_ratios(f.get("runs", []), int(key[1:]))
            judged = statistics.median(paired) if paired else ratio
            target = (
                f">= {FEAST_TARGET_RATIO:g}x: {verdict(judged >= FEAST_TARGET_RATIO)}"
                if key == "b100"
                else ""
            )
            rounds = f"{judged:.1f}x ({min(paired):.1f}-{max(paired):.1f}x)" if paired else "-"
            lines.append(
                f"| {key[1:]} | {v['feast_python']:,.0f} | {v['feast_pandas']:,.0f} | {v['featurestore']:,.0f} "
                f"| {ratio:.1f}x | {rounds} | {target} |"
            )
    return "\n".join(lines) + "\n"


def _ran(section: dict[str, Any]) -> str:
    m = section.get("meta")
    return f"Run {m['run_at']}: `{m['command']}`\n" if m else ""


FIGURE_OF = {"kernel": "kernel_ms", "join": "join_cost_pct", "feast": "feast_b100"}  # section -> figure


def figures(results: dict[str, Any]) -> dict[str, Any]:
    """What the targets are checked against (benchmarks/results/derived.json; the
    report adds the footprint's figures and renders them: benchmarks.report). Each
    figure keeps the run that measured it (``runs``: its section's ``meta``, run time and
    command): a run of some sections carries the others' figures over from earlier runs."""
    out: dict[str, Any] = {"runs": {}}
    for section, figure in FIGURE_OF.items():
        meta = results.get(section, {}).get("meta")
        if meta:
            out["runs"][figure] = {"run_at": meta["run_at"], "command": meta["command"]}
    if "kernel" in results:
        k = results["kernel"]["results"]
        out["kernel_ms"] = {
            "numba": k[NUMBA]["best_ms"],
            "python": k[PYTHON]["best_ms"],
            "numpy": k[NUMPY]["best_ms"],
        }
    if "join" in results:
        summary = results["join"]["summary"]
        out["join_cost_pct"] = {
            str(batch): {pair: summary[f"{pair}/b{batch}"]["cost_pct"] for pair in ("ranker", "inputs")}
            for batch in (1, 100)
        }
    if "feast" in results:
        b100 = results["feast"]["summary"]["b100"]
        out["feast_b100"] = {
            "python_qps": b100["feast_python"],
            "ours_qps": b100["featurestore"],
            "round_ratios": round_ratios(results["feast"].get("runs", []), 100),
        }
    return out


def round_ratios(runs: list[dict[str, Any]], batch: int) -> list[float]:
    """Per round at ``batch``: featurestore's QPS over Feast python mode's, the pair run
    in the same round (the join costs' way: a paired ratio per round, their median)."""
    by_round: dict[int, dict[str, float]] = {}
    for r in runs:
        if r.get("batch") == batch:
            by_round.setdefault(r["round"], {})[r["label"]] = r["qps"]
    return [
        got["featurestore"] / got["feast_python"]
        for _, got in sorted(by_round.items())
        if got.get("feast_python") and "featurestore" in got
    ]


def write_results(results: dict[str, Any], a: argparse.Namespace, parts: Path = HERE / "results") -> Path:
    """derived.md and derived.json under ``parts``, then RESULTS.md stitched. Sections
    not measured by this run keep their last measurement (derived-sections.json), each
    with the run and command that produced it."""
    parts.mkdir(parents=True, exist_ok=True)
    meta = {
        "run_at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": f"python -m benchmarks.derived {' '.join(sys.argv[1:])}".rstrip(),
        "duration": a.duration, "rounds": a.rounds, "conns": a.conns,
    }  # fmt: skip
    kept = parts / "derived-sections.json"
    merged = json.loads(kept.read_text()) if kept.exists() else {}
    merged.update({name: {**section, "meta": meta} for name, section in results.items()})
    kept.write_text(json.dumps(merged, indent=1) + "\n")
    results = {name: merged[name] for name in ("kernel", "join", "feast") if name in merged}
    (parts / "derived.md").write_text(render(results, a))
    (parts / "derived.json").write_text(json.dumps(figures(results), indent=1) + "\n")
    stitch(parts.parent / "RESULTS.md")
    return parts / "derived.md"
