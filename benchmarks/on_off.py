"""The cost of a feature switched on vs off on the embedded demo server: the same wrk load
(the Feast peer's request generator) against two configs, interleaved over rounds, medians
of QPS and of server CPU per request. Used by benchmarks.lineage and benchmarks.drift."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
HEADER = [
    "| batch | QPS off | QPS on | QPS cost | server CPU/request off | on | CPU cost "
    "| CPU cost per round (min / median / max) |",
    "|---:|---:|---:|---:|---:|---:|---:|---|",
]


def header(target_pct: float | None = None) -> list[str]:
    """``HEADER``, with a verdict column against ``target_pct`` when given."""
    if target_pct is None:
        return list(HEADER)
    return [HEADER[0] + f" target (<= {target_pct:g}%) |", HEADER[1] + "---|"]


def verdict(qps_cost_pct: float, cpu_cost_pct: float, target_pct: float) -> str:
    """``met`` when both the QPS cost and the CPU cost (of the medians) are within the
    target, ``MISSED`` otherwise, naming which: a cost is judged by both measures."""
    over = [
        f"{name} {cost:+.1f}%"
        for name, cost in (("QPS", qps_cost_pct), ("CPU", cpu_cost_pct))
        if cost > target_pct
    ]
    return "met" if not over else f"MISSED ({', '.join(over)})"


def wrk_lua() -> Path:
    for base in (ROOT.parent, ROOT.parent.parent):  # /work/main or a worktree under /work/wt
        lua = base / "shared" / "peers" / "feast" / "wrk_getfeatures.lua"
        if lua.exists():
            return lua
    raise SystemExit("the Feast peer's wrk_getfeatures.lua is missing (../shared/peers/feast)")


def wrk(url: str, batch: int, conc: int, seconds: float) -> dict[str, Any]:
    out = subprocess.run(
        ["wrk", "-t1", f"-c{conc}", f"-d{int(seconds)}s", "-s", str(wrk_lua()), url],
        env={**os.environ, "BATCH": str(batch)}, capture_output=True, text=True, check=True,
    )  # fmt: skip
    line = next(ln for ln in out.stdout.splitlines() if ln.startswith("RESULT "))
    result: dict[str, Any] = json.loads(line[7:])
    return result


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(
    data: Path,
    configs: Mapping[str, Path],
    batches: Sequence[int],
    rounds: int,
    duration: float,
    target_pct: float | None = None,
) -> list[str]:
    """Table rows (``header(target_pct)`` first) of the "on" config's cost against "off",
    per batch, each judged against ``target_pct`` when given."""
    from tests.support import ServerProcess

    qps: dict[tuple[str, int], list[float]] = {}
    cpu: dict[tuple[str, int], list[float]] = {}
    for r in range(rounds):
        for label in ("on", "off") if r % 2 == 0 else ("off", "on"):
            server = ServerProcess(
                ["--demo", "--data-dir", str(data), "--config", str(configs[label]), "--log-level", "warning"]
            ).start(timeout=90)
            try:
                for batch in batches:
                    url = server.url + "/v1/feature/join"
                    wrk(url, batch, 32, 3)  # warm-up
                    assert server.proc is not None
                    c0 = cpu_seconds(server.proc.pid)
                    res = wrk(url, batch, 32, duration)
                    used = cpu_seconds(server.proc.pid) - c0
                    qps.setdefault((label, batch), []).append(res["qps"])
                    cpu.setdefault((label, batch), []).append(used / res["requests"] * 1e6)
            finally:
                server.stop()
    return table(qps, cpu, batches, target_pct)


def table(
    qps: Mapping[tuple[str, int], Sequence[float]],
    cpu: Mapping[tuple[str, int], Sequence[float]],
    batches: Sequence[int],
    target_pct: float | None = None,
) -> list[str]:
    """``header(target_pct)`` and a row per batch: medians of each config's QPS and CPU
    per request, and the CPU cost of each round (its "on" run against its "off" run, run
    back to back): a median cost of a few percent is within this VM's noise when the
    rounds straddle zero. With ``target_pct``, a last column judges the medians' costs
    against it (``verdict``)."""
    lines = header(target_pct)
    for batch in batches:
        off, on = statistics.median(qps[("off", batch)]), statistics.median(qps[("on", batch)])
        c_off, c_on = statistics.median(cpu[("off", batch)]), statistics.median(cpu[("on", batch)])
        rounds = sorted(
            (b - a) / a * 100 for a, b in zip(cpu[("off", batch)], cpu[("on", batch)], strict=True)
        )
        qps_cost, cpu_cost = (off - on) / off * 100, (c_on - c_off) / c_off * 100
        row = (
            f"| {batch} | {off:,.0f} | {on:,.0f} | {qps_cost:+.1f}% | {c_off:.0f} µs | {c_on:.0f} µs "
            f"| {cpu_cost:+.1f}% "
            f"| {rounds[0]:+.1f}% / {statistics.median(rounds):+.1f}% / {rounds[-1]:+.1f}% |"
        )
        if target_pct is not None:
            row += f" {verdict(qps_cost, cpu_cost, target_pct)} |"
        lines.append(row)
    return lines
