"""Issue 16's targets checked against a run of ``benchmarks.run`` (its "Targets" table),
and the runs whose answers were not all 200."""

from __future__ import annotations

from typing import Any

Row = dict[str, Any]
# Issue 16's targets: QPS ratio to Feast per (batch, concurrency), both cache settings;
# server CPU per request at batch 1 (Feast's / ours); p99 at batch 1, concurrency 8;
# the share of the bare redis-py floor at batch 1 (cache off, concurrency 32).
TARGETS = {(1, 8): 10.0, (1, 32): 10.0, (100, 8): 30.0, (100, 32): 30.0}
CPU_RATIO_TARGET, P99_TARGET_MS, FLOOR_SHARE_TARGET = 10.0, 2.0, 0.60


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

    for (batch, conc), target in TARGETS.items():
        f = b.get((feast, qps_tool, batch, conc))
        cells = []
        for o in ours:
            r = b.get((o, qps_tool, batch, conc))
            ratio = r["qps"] / f["qps"] if r and f and f["qps"] else None
            cells.append("-" if ratio is None else f"{ratio:.1f}x {verdict(ratio >= target)}")
        lines.append(
            f"| batch {batch}, c={conc}, QPS vs Feast | >= {target:g}x | " + " | ".join(cells) + " |"
        )
    fcpu = cpu_ms(b.get((feast, qps_tool, 1, 8)))
    cells = []
    for o in ours:
        ocpu = cpu_ms(b.get((o, qps_tool, 1, 8)))
        ratio = fcpu / ocpu if fcpu and ocpu else None
        cells.append("-" if ratio is None else f"{ratio:.1f}x lower {verdict(ratio >= CPU_RATIO_TARGET)}")
    lines.append(
        f"| batch 1, c=8, server CPU per request vs Feast | >= {CPU_RATIO_TARGET:g}x lower | "
        + " | ".join(cells)
        + " |"
    )
    for tool in dict.fromkeys((lat_tool, qps_tool)):
        cells = []
        for o in ours:
            r = b.get((o, tool, 1, 8))
            cells.append("-" if not r else f"{r['p99_ms']:.2f} ms {verdict(r['p99_ms'] <= P99_TARGET_MS)}")
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
    return lines


def cpu_ms(r: dict[str, Any] | None) -> float | None:
    if not r or not r.get("server_cores") or not r["qps"]:
        return None
    return float(r["server_cores"]) * 1000 / float(r["qps"])
