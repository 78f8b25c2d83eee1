"""RESULTS.md's "Derived features" section: issue 17's targets next to the latest
figures, from ``benchmarks/results/derived.json`` (``python -m benchmarks.derived``) and
``footprint-demo[-no-derived].json`` (``python -m benchmarks.footprint``). A figure not
measured yet names the command that measures it."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

KERNEL_TARGET_MS = 8.2  # 100k rows of ctr_x_price_bucket: the reference design's batch (127 ms serial)
JOIN_TARGET_PCT = 10.0  # QPS the four derived features may cost, at batch 1 and 100
FEAST_TARGET_RATIO = 20.0  # x Feast's python-mode on-demand views at batch 100
READY_TARGET_S = 5.0  # `make run` start to ready
NUMBA_RSS_TARGET_MB = 80.0  # what numba (the derived view) adds to `make run`'s RSS

DERIVED = "python -m benchmarks.derived"
DERIVED_CPU = "python -m benchmarks.derived_cpu"
FOOTPRINT = "python -m benchmarks.footprint --runs 3"

Row = tuple[str, str, str, bool | None, str, str]  # target, goal, measured ("": not yet), met, command, run


def _figures(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.exists() else None


def _ran(run: dict[str, Any] | None) -> str:
    """Which run measured a figure: its time and command."""
    return f"{run['run_at']}, `{run['command']}`" if run else ""


def _derived_run(d: dict[str, Any], figure: str) -> str:
    """The run that measured ``figure`` of derived.json; a file from before each figure
    kept its run names only the invocation that wrote it, which need not have measured it."""
    if "runs" in d:
        return _ran(d["runs"].get(figure))
    if d.get("run_at"):
        return f"not recorded (derived.json last written by {_ran(d)})"
    return ""


def _derived_rows(d: dict[str, Any]) -> list[Row]:
    k = d.get("kernel_ms")
    rows: list[Row] = [
        (
            "kernel: 100,000 rows of `ctr_x_price_bucket`",
            f"<= {KERNEL_TARGET_MS:g} ms",
            f"{k['numba']:.3f} ms (serial Python {k['python']:,.1f} ms, numpy {k['numpy']:.3f} ms)"
            if k
            else "",
            k["numba"] <= KERNEL_TARGET_MS if k else None,
            DERIVED,
            _derived_run(d, "kernel_ms") if k else "",
        )
    ]
    measures = (
        ("join_cost_pct", "", DERIVED),
        ("join_cpu_cost_pct", ", from server CPU (in process, request-interleaved)", DERIVED_CPU),
    )
    for key, how, command in measures:
        run = _derived_run(d, key) if key == "join_cost_pct" else _ran(d.get("join_cpu_run"))
        for batch in ("1", "100"):
            cost = (d.get(key) or {}).get(batch)
            rows.append(
                (
                    f"join QPS cost of the four derived features, batch {batch}{how}",
                    f"<= {JOIN_TARGET_PCT:g}%",
                    f"{cost['ranker']:.2f}% (ranker_v1 -> ranker_v2), {cost['inputs']:.2f}% (3 inputs -> + 4 derived)"
                    if cost
                    else "",
                    max(cost.values()) <= JOIN_TARGET_PCT if cost else None,
                    command,
                    run if cost else "",
                )
            )
    f = d.get("feast_b100")
    ratio = f["ours_qps"] / f["python_qps"] if f else None
    cell = (
        f"{ratio:.1f}x ({f['ours_qps']:,.0f} vs {f['python_qps']:,.0f} QPS)"
        if f and ratio is not None
        else ""
    )
    paired = (f or {}).get("round_ratios") or []
    if paired:  # judged as the join costs are: the median of the rounds' paired ratios
        under = sum(r < FEAST_TARGET_RATIO for r in paired)
        ratio = statistics.median(paired)
        cell += (
            f"; the rounds' paired ratios: median {ratio:.1f}x, {min(paired):.1f}-{max(paired):.1f}x, "
            f"{under} of {len(paired)} under {FEAST_TARGET_RATIO:g}x"
        )
    rows.append(
        (
            "QPS vs Feast on-demand views (python mode), batch 100",
            f">= {FEAST_TARGET_RATIO:g}x",
            cell,
            ratio >= FEAST_TARGET_RATIO if ratio is not None else None,
            DERIVED,
            _derived_run(d, "feast_b100") if f else "",
        )
    )
    return rows


def _footprint_rows(on: dict[str, Any] | None, off: dict[str, Any] | None) -> list[Row]:
    ready = on["summary"]["ready_s"]["median"] if on else None
    added = (
        on["summary"]["ready_rss_mb"]["median"] - off["summary"]["ready_rss_mb"]["median"]
        if on and off
        else None
    )
    peak = (
        on["summary"]["peak_rss_mb"]["median"] - off["summary"]["peak_rss_mb"]["median"]
        if on and off and "peak_rss_mb" in on["summary"] and "peak_rss_mb" in off["summary"]
        else None
    )

    def ran(run: dict[str, Any] | None) -> str:
        return _ran(run) if run and run.get("run_at") else "footprint run not dated" if run else ""

    both = "; ".join(r for r in (ran(on), ran(off)) if r)
    return [
        (
            "`make run` start to ready",
            f"<= {READY_TARGET_S:g} s",
            f"{ready:.2f} s" if ready is not None else "",
            ready <= READY_TARGET_S if ready is not None else None,
            FOOTPRINT,
            ran(on) if ready is not None else "",
        ),
        (
            "RSS numba adds to `make run` (the demo minus `--no-derived`, when ready)",
            f"<= {NUMBA_RSS_TARGET_MB:g} MB",
            f"{added:.0f} MB" if added is not None else "",
            added <= NUMBA_RSS_TARGET_MB if added is not None else None,
            f"{FOOTPRINT} and {FOOTPRINT} --no-derived",
            both if added is not None else "",
        ),
        (
            "the same at its peak (VmHWM, start-up and load included)",
            f"<= {NUMBA_RSS_TARGET_MB:g} MB",
            f"{peak:.0f} MB" if peak is not None else "",
            peak <= NUMBA_RSS_TARGET_MB if peak is not None else None,
            f"{FOOTPRINT} and {FOOTPRINT} --no-derived",
            both if peak is not None else "",
        ),
    ]


def derived_section(parts_dir: Path) -> list[str]:
    """The section's heading and targets table (its measurements, derived.md, follow)."""
    d = _figures(parts_dir / "derived.json") or {}
    cpu = _figures(parts_dir / "derived-cpu.json")
    if cpu:  # benchmarks.derived_cpu's figures: the cost per pair and batch
        d["join_cpu_cost_pct"] = {
            b: {p: cpu["results"][f"{p}/b{b}"]["cost_pct"] for p in ("ranker", "inputs")}
            for b in ("1", "100")
        }
        d["join_cpu_run"] = {"run_at": cpu.get("run_at", "not dated"), "command": cpu.get("command", "?")}
    on, off = (_figures(parts_dir / f"footprint-demo{v}.json") for v in ("", "-no-derived"))
    lines = [
        "## Derived features (issue 17)",
        "",
        "Each figure comes from the run named beside it (`benchmarks.derived` keeps the figures of the "
        "sections a run did not measure from the runs that did).",
        "",
    ]
    lines += ["| target | goal | measured | | measured by |", "|---|---|---|---|---|"]
    for target, goal, measured, met, command, run in [*_derived_rows(d), *_footprint_rows(on, off)]:
        shown = measured or f"not measured yet: `{command}`"
        lines.append(
            f"| {target} | {goal} | {shown} | {'-' if met is None else 'met' if met else 'MISSED'} | {run or '-'} |"
        )
    return [*lines, ""]
