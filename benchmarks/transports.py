"""gRPC measured beside HTTP: the same server (Redis store, demo data, cache off so every
key is read), HTTP Join driven by wrk (benchmarks/wrk_keys.lua) and gRPC Join by the
multi-process benchmarks/grpc_load.py, at batch 1, 10 and 100, points interleaved.
Per run: QPS, p50/p99, server CPU per request and the load generator's own CPU (cores).

    python -m benchmarks.transports [--duration 8] [--rounds 2] [--workers 2] [--concurrency 32]

``--env KEY=VALUE`` (repeatable) starts a second server with that environment, and
``--store-option KEY=VALUE`` one with that Redis store option, measured as their own
rows (A/B of a server-side switch under the same load, same minute).

The peer row: Feast's Python gRPC server (``feast listen``, benchmarks/feast_grpc.py) on
the data ../shared/peers/feast/setup.sh materialized, driven by the same load generator
with Feast's own request bytes (same keys). Skipped, and said so, when setup.sh has not
run (``--feast-workdir``, default $WORKDIR or /tmp/feast-peer); ``--no-feast`` skips it.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import statistics
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from benchmarks import feast_grpc
from benchmarks.grpc_load import measure as grpc_measure
from benchmarks.provenance import run_line, started
from benchmarks.stack import HERE, config, materialize, redis, server, tree_cpu, wrk

TITLE = "gRPC and HTTP Join, same server (issue 16, requirement 4)"


def children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


FEAST = "feast listen"


def one_run(
    srv: dict[str, int],
    transport: str,
    batch: int,
    a: argparse.Namespace,
    feast: dict[int, str] | None = None,
) -> dict[str, Any]:
    """``feast``: the peer's request files by batch (``srv`` is then ``feast listen``)."""
    cpu0 = tree_cpu(srv["pid"])
    if transport == "http":
        c0 = children_cpu()
        res = wrk(f"http://127.0.0.1:{srv['http']}/v1/feature/join", batch, a.concurrency, a.duration)
        res["client_cores"] = round((children_cpu() - c0) / res["duration_s"], 2)
        wall = res["duration_s"]
    else:
        target = f"127.0.0.1:{srv['grpc']}"
        if feast:
            res = grpc_measure(
                target,
                batch,
                a.concurrency,
                a.duration,
                a.procs,
                method=feast_grpc.METHOD,
                bodies_from=feast[batch],
            )
        else:
            res = grpc_measure(target, batch, a.concurrency, a.duration, a.procs)
        if res["errors"]:
            raise RuntimeError(f"gRPC calls failed in the load run: {res}")
        wall = res["requests"] / res["qps"] if res["qps"] else a.duration
    res["server_cores"] = round((tree_cpu(srv["pid"]) - cpu0) / wall, 2)
    answered = res["requests"] - res.get("err_status", 0)  # per 200 (a fast 503's CPU is charged to them)
    res["cpu_us"] = round((tree_cpu(srv["pid"]) - cpu0) / max(answered, 1) * 1e6, 1)
    return res


FEATURES = [
    f"{view}:{f}"
    for view, fs in (
        ("user_profile", "age tenure_days num_devices country plan_tier preferred_language lifetime_value credit_score"),
        ("user_activity", "sessions_7d sessions_30d avg_session_minutes clicks_7d purchases_30d spend_30d "
         "days_since_last_login ctr_30d"),
    )
    for f in fs.split()
]  # fmt: skip


def check_grpc(srv: dict[str, int], data: Path) -> None:
    """One gRPC Join of 100 users against the demo data before any run: OK calls that
    answered NOT_FOUND, or wrong values, would measure nothing."""
    import math

    import pyarrow.parquet as pq

    from featurestore.client import FeatureClient

    table = pq.read_table(data).slice(0, 100).to_pydict()
    with FeatureClient(f"grpc://127.0.0.1:{srv['grpc']}") as client:
        res = client.join({"user_id": table["user_id"]}, FEATURES)
    for ref in FEATURES:
        name = ref.split(":")[1]
        col = res[name]
        bad = [
            (uid, got, want, st)
            for uid, got, want, st in zip(
                table["user_id"], col.values, table[name], col.statuses, strict=True
            )
            if st.name != "PRESENT"
            or (got != want and not (isinstance(want, float) and math.isclose(got, want, rel_tol=1e-12)))
        ]
        if bad:
            raise SystemExit(f"gRPC Join answers {name} wrongly, e.g. (user, got, want, status) {bad[0]}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--duration", type=float, default=8)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--procs", type=int, default=2, help="gRPC load generator processes")
    ap.add_argument("--batches", type=lambda s: [int(x) for x in s.split(",")], default=[1, 10, 100])
    ap.add_argument("--env", action="append", default=[], help="KEY=VALUE: a second server with this env")
    ap.add_argument(
        "--store-option", default="", help="KEY=VALUE: a second server with this Redis store option"
    )
    ap.add_argument("--transports", default="http,grpc")
    ap.add_argument("--feast-workdir", type=Path, default=Path(os.environ.get("WORKDIR", "/tmp/feast-peer")))
    ap.add_argument("--no-feast", action="store_true", help="no Feast gRPC peer row")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "grpc.md")
    ap.add_argument("--title", default=TITLE, help="the section's heading (an A/B's own)")
    a = ap.parse_args()
    a.started = started()  # before any server loads the code
    transports = a.transports.split(",")
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        work = Path(tmp)
        url = stack.enter_context(redis(work))
        cfg = config(work, url, "nocache", cache=False)
        materialize(work, cfg)
        servers = {"featurestore": stack.enter_context(server(work, cfg, a.workers))}
        if a.env:
            env = dict(e.split("=", 1) for e in a.env)
            servers[" ".join(a.env)] = stack.enter_context(server(work, cfg, a.workers, env))
        if a.store_option:
            key, value = a.store_option.split("=", 1)
            alt = config(work, url, "alt", cache=False, store=f", {key}: {value}")
            servers[a.store_option] = stack.enter_context(server(work, alt, a.workers))
        feast: dict[int, str] = {}
        if "grpc" in transports and not a.no_feast:
            if feast_grpc.available(a.feast_workdir):
                python = feast_grpc.ensure_venv(a.feast_workdir)
                feast = {b: feast_grpc.write_requests(python, work, b, a.procs) for b in a.batches}
                a.feast_versions = feast_grpc.versions(python)
                servers[FEAST] = stack.enter_context(
                    feast_grpc.listen(a.feast_workdir, python, work / "feast.log")
                )
            else:
                print(
                    f"no Feast gRPC row: {a.feast_workdir} has no peer setup (run setup.sh)", file=sys.stderr
                )
        if "grpc" in transports:
            for name, srv in servers.items():
                if name != FEAST:
                    check_grpc(srv, work / "data" / "users.parquet")
        combos = [(name, t) for name in servers for t in transports if name != FEAST or t == "grpc"]
        point = 0
        for batch in a.batches:
            for name, t in combos:
                warm = argparse.Namespace(**{**vars(a), "duration": 2})
                one_run(servers[name], t, batch, warm, feast if name == FEAST else None)
            for rnd in range(a.rounds):
                for name, t in combos if point % 2 == 0 else combos[::-1]:
                    res = one_run(servers[name], t, batch, a, feast if name == FEAST else None)
                    res.update(server=name, transport=t, batch=batch, round=rnd)
                    print(json.dumps(res), flush=True)
                    runs.append(res)
                point += 1
    lines = render(runs, a, list(servers), transports)
    a.out.parent.mkdir(exist_ok=True)
    a.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    from benchmarks.report import stitch

    stitch()
    return 0


def render(
    runs: list[dict[str, Any]], a: argparse.Namespace, servers: list[str], transports: list[str]
) -> list[str]:
    cmd = " ".join(["python -m benchmarks.transports", shlex.join(sys.argv[1:])]).rstrip()  # --title quoted
    out = [
        f"## {a.title}",
        "",
        f"`{cmd}`: Redis store, cache off, {a.workers} workers, concurrency {a.concurrency}, "
        f"{a.duration:g} s per run, {a.rounds} interleaved rounds (median). HTTP: wrk -t1 with "
        f"benchmarks/wrk_keys.lua; gRPC: benchmarks/grpc_load.py, {a.procs} processes, raw bytes in and out."
        + (
            f" `{FEAST}`: Feast's Python gRPC server ({a.feast_versions}; {feast_grpc.THREADS} threads, one process: "
            "its only form) on the peer's Redis, its values checked by the peer's grpc_probe.py, same load "
            "generator, Feast's request bytes, same keys."
            if FEAST in servers
            else ""
        )
        + (
            " `featurestore`: the server as configured by default; each other row: the same server with the "
            "named store option or environment (an A/B under the same load)."
            if len([s for s in servers if s != FEAST]) > 1
            else ""
        ),
        "",
        run_line(a.started) if getattr(a, "started", None) else "* Run: time and source tree not recorded.",
        "",
        "| server | transport | batch | QPS | p50 ms | p99 ms | server CPU us/request | load generator cores |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name in servers:
        for t in transports:
            for batch in a.batches:
                rs = [r for r in runs if r["server"] == name and r["transport"] == t and r["batch"] == batch]
                if not rs:
                    continue

                def med(k: str, rs: list[dict[str, Any]] = rs) -> float:
                    return float(statistics.median(r[k] for r in rs))

                out.append(
                    f"| {name} | {t} | {batch} | {med('qps'):,.0f} | {med('p50_ms'):.2f} | {med('p99_ms'):.2f} | "
                    f"{med('cpu_us'):.0f} | {med('client_cores'):.2f} |"
                )
    return out


if __name__ == "__main__":
    sys.exit(main())
