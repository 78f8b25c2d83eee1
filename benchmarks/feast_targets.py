"""Issue 16's targets checked against a run of ``benchmarks.run`` (its "Targets" table),
and the runs whose answers were not all 200."""

from __future__ import annotations

import statistics
from typing import Any

Row = dict[str, Any]
# Issue 16's targets: QPS ratio to Feast per (batch, concurrency), both cache settings;
# server CPU per request at batch 1 (Feast's / ours); p99 at batch 1, concurrency 8;
# the share of the bare redis-py floor at batch 1 (cache off, concurrency 32).
TARGETS = {(1, 8): 10.0, (1, 32): 10.0, (100, 8): 30.0, (100, 32): 30.0}
CPU_RATIO_TARGET, P99_TARGET_MS, FLOOR_SHARE_TARGET = 10.0, 2.0, 0.60
# A run whose server used under this share of the median cores of its own runs at the
# same batch (other concurrencies) did not load the server as its other runs did: gunicorn's
# one accepting socket can hand all of few connections to one of Feast's two workers.
LOW_CORES = 0.75
# What a starved run's figure is not, by the table it marks
STARVED_QPS = "its QPS is not the server's capacity at this point, and a ratio against it is not a like-for-like comparison"
STARVED_LATENCY = (
    "its latency is that of the fewer cores it ran on (one worker's queue when one worker took every "
    "connection, as gunicorn's one accepting socket can do with few connections) under this load "
    "generator's connection pattern, not the whole server's"
)


def low_cores(
    b: dict[Any, Any], label: str, tool: str, batch: int, conc: int, meaning: str = STARVED_QPS
) -> str | None:
    """Why the run at this point is not like its neighbours (its server used under
    LOW_CORES x the median server cores of the same label's runs at the batch's other
    concurrencies), ending with ``meaning``, or None."""
    r = b.get((label, tool, batch, conc))
    if not r or not r.get("server_cores"):
        return None
    others = {
        c: x["server_cores"]
        for (lbl, t, bb, c), x in b.items()
        if (lbl, t, bb) == (label, tool, batch) and c != conc and x.get("server_cores")
    }
    if not others:
        return None
    median = statistics.median(others.values())
    if r["server_cores"] >= LOW_CORES * median:
        return None
    at = ", ".join(f"c={c}" for c in sorted(others))
    machine = f" (the whole machine {r['machine_cores']:.2f})" if r.get("machine_cores") is not None else ""
    return (
        f"`{label}` at batch {batch}, c={conc} ({tool}) used {r['server_cores']:.2f} server cores{machine}, under "
        f"{LOW_CORES:g}x the median {median:.2f} of its runs at batch {batch}, {at}: {meaning}"
    )


def footnotes(notes: list[str]) -> list[str]:
    return ["", *(f"[{i}] {n}" for i, n in enumerate(notes, 1))] if notes else []


def mark(notes: list[str], note: str | None) -> str:
    """`` [n]`` for ``note`` (added to ``notes`` once), or "" when there is none."""
    if note is None:
        return ""
    if note not in notes:
        notes.append(note)
    return f" [{notes.index(note) + 1}]"


def refusals(b: dict[Any, Any]) -> list[str]:
    """Runs that got answers other than 200 (a shed join is a fast 503, and wrk counts it
    in its QPS): listed so that no ratio hides them."""
    out = []
    for (label, tool, batch, conc), r in sorted(b.items()):
        bad = r.get("err_status", 0) or r.get("bad_status", 0)
        if bad:
            out.append(
                f"* `{label}`, {tool}, batch {batch}, c={conc}: {bad:,} of {r['requests']:,} answers not 200"
            )
    if not out:
        return ["", "Every answer counted above was a 200."]
    return [
        "",
        "Answers other than 200 (a shed join is a fast 503; the QPS above counts 200s only, "
        "the latency tables every answer):",
        "",
        *out,
    ]


def targets(
    b: dict[Any, Any], feast: str, ours: list[str], qps_tool: str, lat_tool: str, floors: list[Row]
) -> list[str]:
    """The targets table: each check against each featurestore variant."""
    lines = ["", "### Targets (issue 16)", ""]
    lines += ["| check | target | " + " | ".join(ours) + " |", "|---|---|" + "---|" * len(ours)]

    def verdict(ok: bool) -> str:
        return "met" if ok else "MISSED"

    notes: list[str] = []
    for (batch, conc), target in TARGETS.items():
        f = b.get((feast, qps_tool, batch, conc))
        feast_low = low_cores(b, feast, qps_tool, batch, conc)
        cells = []
        for o in ours:
            r = b.get((o, qps_tool, batch, conc))
            ratio = r["qps"] / f["qps"] if r and f and f["qps"] else None
            low = [n for n in (feast_low, low_cores(b, o, qps_tool, batch, conc)) if n]
            if ratio is None:
                cells.append("-")
            elif low:
                marks = "".join(mark(notes, n) for n in low)
                cells.append(f"{ratio:.1f}x {verdict(ratio >= target)} only against a starved run{marks}")
            else:
                cells.append(f"{ratio:.1f}x {verdict(ratio >= target)}")
        lines.append(
            f"| batch {batch}, c={conc}, QPS vs Feast | >= {target:g}x | " + " | ".join(cells) + " |"
        )
    fcpu = cpu_ms(b.get((feast, qps_tool, 1, 8)))
    feast_low = low_cores(b, feast, qps_tool, 1, 8)  # a starved run's CPU per request reads high too
    cells = []
    for o in ours:
        ocpu = cpu_ms(b.get((o, qps_tool, 1, 8)))
        ratio = fcpu / ocpu if fcpu and ocpu else None
        low = [n for n in (feast_low, low_cores(b, o, qps_tool, 1, 8)) if n]
        marks = "".join(mark(notes, n) for n in low)
        starved = f" only against a starved run{marks}" if low else ""
        cells.append(
            "-" if ratio is None else f"{ratio:.1f}x lower {verdict(ratio >= CPU_RATIO_TARGET)}{starved}"
        )
    lines.append(
        f"| batch 1, c=8, server CPU per request vs Feast | >= {CPU_RATIO_TARGET:g}x lower | "
        + " | ".join(cells)
        + " |"
    )
    for tool in dict.fromkeys((lat_tool, qps_tool)):
        cells = []
        for o in ours:
            r = b.get((o, tool, 1, 8))
            cells.append(
                "-" if not r else f"{r['p99_ms']:.2f} ms {verdict(r['p99_ms'] <= P99_TARGET_MS)} ({quiet(r)})"
            )
        star = "*" if tool == "wrk" else ""
        lines.append(
            f"| batch 1, c=8, p99{star} ({tool}) | <= {P99_TARGET_MS:g} ms | " + " | ".join(cells) + " |"
        )
    floor = next((fl for fl in floors if fl["batch"] == 1), None)
    if floor:
        cells = []
        for o in ours:
            r = b.get((o, qps_tool, 1, 32))
            share = r["qps"] / floor["qps"] if r else None
            cells.append("-" if share is None else f"{share:.0%} {verdict(share >= FLOOR_SHARE_TARGET)}")
        lines.append(
            f"| batch 1, c=32, share of the redis-py floor ({floor['qps']:,.0f} QPS) | >= {FLOOR_SHARE_TARGET:.0%} | "
            + " | ".join(cells) + " |"
        )  # fmt: skip
    lines += [
        "",
        "How quiet the machine was for the p99 rows: `calib` is bench.py's serving-like CPU calibration "
        "before the run (JSON round trip of a ~300 KB document, best of 3; higher = slower or contended "
        "CPU), `probe` its pure-Python loop, `other` the cores other tenants used during the run.",
    ]
    return lines + footnotes(notes)


def quiet(r: Row) -> str:
    """The calibration figures bench.py recorded for run ``r``."""
    got = [f"{k} {r[f]:g}{u}" for k, f, u in QUIET if r.get(f) is not None]
    return ", ".join(got) or "no calibration recorded"


QUIET = (("calib", "calib_ms", " ms"), ("probe", "cpu_probe_ms", " ms"), ("other", "other_cores", " cores"))


def cpu_ms(r: dict[str, Any] | None) -> float | None:
    if not r or not r.get("server_cores") or not r["qps"]:
        return None
    return float(r["server_cores"]) * 1000 / float(r["qps"])
