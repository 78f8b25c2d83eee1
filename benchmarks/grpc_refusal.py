"""What a refused gRPC join costs the server, beside an answered one (issue 16, requirement 5).

Two servers over the same Redis (batch 100, cache off, 2 workers): one that answers, and
one with ``limits.max_inflight: 2`` that sheds most calls at admission (RESOURCE_EXHAUSTED).
Each gets a closed loop of 64 calls (benchmarks.grpc_load, 16 channels a process) for
``--duration`` s, ``--rounds`` times, interleaved; the servers' CPU (workers included) is
read before and after. A refusal's cost is solved from the refusing server's mix:
CPU = answered x (the answering server's CPU a call) + refused x (a refusal's), which
assumes an answered join costs the refusing server (at most 2 joins in flight a worker)
what it costs the answering one (64 in flight): not measured, and less batching at 2 may
cost more (a join at 1.5x the cost would put a refusal at ~23%, not ~33%).

    python -m benchmarks.grpc_refusal [--duration 5] [--rounds 2]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path

from benchmarks.grpc_load import measure
from benchmarks.open_loop import GRPC_CHANNELS
from benchmarks.provenance import run_line, started
from benchmarks.stack import config, materialize, redis, server, tree_cpu


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--duration", type=float, default=5)
    ap.add_argument("--rounds", type=int, default=2)
    a = ap.parse_args()
    begun = started()
    rows: list[tuple[str, int, int, float]] = []  # (server, calls, answered, CPU seconds)
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        work = Path(tmp)
        url = stack.enter_context(redis(work))
        cfgs = {
            "answers": config(work, url, "a", cache=False),
            "refuses": config(work, url, "r", cache=False, extra="limits: {max_inflight: 2}\n"),
        }
        materialize(work, cfgs["answers"])
        servers = {name: stack.enter_context(server(work, cfg, 2)) for name, cfg in cfgs.items()}
        for srv in servers.values():  # warm, discarded
            measure(f"127.0.0.1:{srv['grpc']}", 100, 64, 2, channels=GRPC_CHANNELS)
        for _ in range(a.rounds):
            for name, srv in servers.items():
                before = tree_cpu(srv["pid"])
                r = measure(f"127.0.0.1:{srv['grpc']}", 100, 64, a.duration, channels=GRPC_CHANNELS)
                refused = r["codes"].get("RESOURCE_EXHAUSTED", 0)
                if r["errors"] != refused or (name == "answers" and refused):
                    raise RuntimeError(f"{name}: calls failed other than shed: {r['codes']}")
                rows.append((name, r["requests"] + refused, r["requests"], tree_cpu(srv["pid"]) - before))
    answered = [cpu / calls for name, calls, _, cpu in rows if name == "answers"]
    per_answer = sum(answered) / len(answered)
    refusals = []
    for name, calls, ok, cpu in rows:
        if name == "refuses" and calls > ok:
            refusals.append((cpu - ok * per_answer) / (calls - ok))
    if not refusals:
        raise RuntimeError("the refusing server refused no call")
    per_refusal = sum(refusals) / len(refusals)
    lines = [
        "## What a refused gRPC join costs the server (issue 16, requirement 5)",
        "",
        f"`{' '.join(['python -m benchmarks.grpc_refusal', *sys.argv[1:]])}`: batch 100, 2 workers, Redis, "
        f"cache off, closed loop of 64 calls ({GRPC_CHANNELS} channels a load process), {a.duration:g} s x "
        f"{a.rounds} rounds, interleaved; server CPU (workers included) per call.",
        "",
        run_line(begun),
        "",
        "| server | calls | answered | refused | server CPU µs a call |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, calls, ok, cpu in rows:
        lines.append(f"| {name} | {calls:,} | {ok:,} | {calls - ok:,} | {cpu / calls * 1e6:,.0f} |")
    lines += [
        "",
        f"An answered join: {per_answer * 1e6:,.0f} µs of the server's CPU; a refused one: "
        f"{per_refusal * 1e6:,.0f} µs ({per_refusal / per_answer:.0%} of it), solved from the refusing "
        "server's mix.",
    ]
    from benchmarks.report import publish

    publish("grpc-refusal.md", lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
