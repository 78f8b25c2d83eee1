"""benchmarks.cache_side_by_side's report, without running a server."""

from __future__ import annotations

from typing import Any

from benchmarks.cache_side_by_side import render


def result(
    phase: str,
    batch: int,
    off: float,
    off2: float,
    default: float,
    old: float | None = None,
    trial: float | None = None,
) -> dict[str, Any]:
    cpu = {"off": off, "off2": off2, "default": default} | ({} if old is None else {"old": old})
    base = (off + off2) / 2
    rise = {v: (cpu[v] / base - 1) * 100 for v in cpu if not v.startswith("off")}
    return {
        "phase": phase,
        "batch": batch,
        "cpu_us": cpu,
        "rise_pct": rise,
        "noise_pct": abs(off - off2) / base * 100,
        "trial_share": trial,
    }


def test_the_report_judges_the_default_s_cpu_rise_as_the_qps_a_cpu_bound_server_loses() -> None:
    rows = render(
        [
            result("skipped", 1, 120.0, 122.0, 125.84, trial=0.0),
            result("young", 1, 120.0, 120.0, 128.0, trial=0.375),
        ],
        "cmd",
        "* Run: x",
        None,
    )
    skipped, young = rows[-2], rows[-1]
    assert "+4.0% (3.8%) | 0% |" in skipped and skipped.endswith("| 1.7% | met |")
    assert "+6.7% (6.2%) | 38% |" in young and young.endswith("| MISSED |")
    header = next(r for r in rows if r.startswith("| phase"))
    assert "| old |" not in header and "old's" not in header


def test_an_old_tree_s_server_gets_its_own_columns() -> None:
    rows = render([result("skipped", 100, 400.0, 400.0, 410.0, old=440.0)], "cmd", "* Run: x", "/tmp/old")
    header = next(r for r in rows if r.startswith("| phase"))
    assert "| old | old's rise |" in header and "`/tmp/old`" in "".join(rows)
    assert "| - | 440.0 | +10.0% |" in rows[-1]  # (no trial share: a tree without the metric)
