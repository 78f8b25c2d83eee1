"""Derived features: kernel throughput, join overhead, and Feast's on-demand views side by side.

1. kernel: 100,000 rows of ``ctr_x_price_bucket = ctr_30d * bucket(item_price, [0, 10, 50,
   100])``: the numba kernel the server runs (built by featurestore.derived.compiler), the
   same with the serving path's list -> array conversion of its inputs, numpy, and a serial
   pure-Python loop. All four must agree.
2. join: the demo server (memory stores, one worker) with and without the four derived
   features, at batch 1 and 100, wrk closed loop, variants interleaved over rounds:
   ranker_v1 (16 stored features) vs ranker_v2 (the same + 4 derived), and the 3 stored
   inputs vs the same + 4 derived. Every request carries the same request_data.
3. feast: Feast 0.67 on-demand feature views (../shared/peers/feast/feature_repo_odfv) in
   python and pandas mode against featurestore, both with 2 workers reading the same
   Redis, the four derived features at batch 1, 10 and 100 (wrk_derived.lua).

    python -m benchmarks.derived [--sections kernel,join,feast] [--duration 10] [--rounds 3]
                                 [--skip-feast-setup] [--feast-workdir /tmp/feast-peer]

Writes benchmarks/results/derived.md (the tables) and derived.json (the figures the targets
are checked against; RESULTS.md's "Derived features" section: benchmarks.report), raw
runs under benchmarks/out/.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from benchmarks.derived_targets import FEAST_TARGET_RATIO, JOIN_TARGET_PCT, KERNEL_TARGET_MS
from benchmarks.footprint import free_port
from benchmarks.report import stitch
from benchmarks.run import PEER as DEFAULT_PEER
from benchmarks.run import REDIS_PORT, ROOT, log, redis_up, wait_http
from featurestore.definitions.parser import parse_definitions
from featurestore.demo.data import FEATURE_REFS, ensure_demo_data

HERE = Path(__file__).resolve().parent
# ../shared/peers/feast from the checkout; FEAST_PEER_DIR when the checkout lives elsewhere
PEER = Path(os.environ.get("FEAST_PEER_DIR") or DEFAULT_PEER)
WRK_DERIVED = PEER / "wrk_derived.lua"
EDGES = [0.0, 10.0, 50.0, 100.0]
DERIVED = ["engagement_score", "spend_per_session", "ctr_x_price_bucket", "value_score"]
INPUTS = ["user_activity:ctr_30d", "user_activity:sessions_30d", "user_activity:spend_30d"]
OURS = [f"user_derived:{f}" for f in DERIVED]
STORED4 = [f"user_activity:{f}" for f in ("sessions_7d", "avg_session_minutes", "clicks_7d", "purchases_30d")]
N_KERNEL = 100_000
# the kernel section's implementations (derived.json names these three)
NUMBA = "numba kernel (float64 matrix in, out)"
PYTHON = "serial pure-Python loop"
NUMPY = "numpy, vectorized"


# -- 1. kernel throughput ---------------------------------------------------------------


def best_ms(fn: Callable[[], object], repeat: int) -> tuple[float, float]:
    """(best, median) wall time of ``fn`` in ms."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return min(times), statistics.median(times)


def kernel_section(data: Path) -> dict[str, Any]:
    from featurestore.derived import compiler

    ctr = pq.read_table(data / "users.parquet", columns=["ctr_30d"])["ctr_30d"].to_numpy()[:N_KERNEL]
    price = np.round(np.random.default_rng(1).uniform(0, 150, N_KERNEL), 2)
    ctr_list, price_list = ctr.tolist(), price.tolist()
    doc = {
        "project": "bench",
        "entities": [{"name": "user_id", "dtype": "int64"}],
        "feature_views": [{"name": "user_activity", "entities": ["user_id"], "features": [{"name": "ctr_30d", "dtype": "float64"}]}],
        "derived_views": [
            {
                "name": "d",
                "inputs": ["user_activity:ctr_30d"],
                "request_schema": [{"name": "item_price", "dtype": "float64"}],
                "features": [{"name": "ctr_x_price_bucket", "dtype": "float64", "expression": "ctr_30d * bucket(item_price, [0, 10, 50, 100])"}],
            }
        ],
    }  # fmt: skip
    defs = parse_definitions(doc, source="bench.yaml")
    with tempfile.TemporaryDirectory() as cache:
        kernel = asyncio.run(compiler.kernels_for(defs, Path(cache)))["d"]
    order = [k.name for k in kernel.spec.inputs]
    matrix = np.ascontiguousarray(np.stack([ctr if n == "ctr_30d" else price for n in order]))
    lists = [ctr_list if n == "ctr_30d" else price_list for n in order]
    edges = np.array(EDGES)

    def numba_kernel() -> Any:
        return kernel.run(matrix)[0]

    def numba_serving_path() -> Any:  # what a join does (derived/evaluate.py): lists in, an array out
        n = len(lists[0])
        inp, fmt = np.empty((len(lists), n)), f"{n}d"
        for i, row in enumerate(lists):
            struct.pack_into(fmt, inp, i * n * 8, *row)  # type: ignore[arg-type]  # a buffer
        out = np.empty((len(kernel.spec.features), n))
        kernel.into(inp, out)  # the mask of rows holding a null: this one has none
        return out[0]  # from ARRAY_ROWS rows on the encoders take the output row as it is

    def numpy_vectorized() -> Any:
        with np.errstate(all="ignore"):
            b = np.searchsorted(edges, price, side="right").astype(np.float64)
            r = np.where(np.isnan(price), np.nan, ctr * b)
            return np.where(np.isfinite(r), r, np.nan)

    def python_loop() -> list[float | None]:
        out: list[float | None] = []
        for c, p in zip(ctr_list, price_list, strict=True):
            if c is None or p is None:
                out.append(None)
                continue
            b = 0
            for e in EDGES:
                if e <= p:
                    b += 1
            out.append(c * b)
        return out

    reference = numpy_vectorized()
    for name, fn in (
        ("numba", numba_kernel),
        ("numba+conversion", numba_serving_path),
        ("python", python_loop),
    ):
        np.testing.assert_allclose(np.array(fn(), dtype=np.float64), reference, rtol=0, atol=0, err_msg=name)
    rows = {}
    for name, fn, repeat in (
        (NUMBA, numba_kernel, 200),
        ("numba kernel + the join's list -> array conversion", numba_serving_path, 30),
        (NUMPY, numpy_vectorized, 50),
        (PYTHON, python_loop, 5),
    ):
        best, median = best_ms(fn, repeat)
        rows[name] = {"best_ms": round(best, 3), "median_ms": round(median, 3)}
        log(f"kernel: {name}: best {best:.3f} ms, median {median:.3f} ms per {N_KERNEL:,} rows")
    return {"rows": N_KERNEL, "kernel_from_cache": kernel.from_cache, "results": rows}


# -- servers and load ---------------------------------------------------------------------


@contextmanager
def process(
    cmd: list[str], log_path: Path, ready_url: str, env: dict[str, str] | None = None, cwd: Path = ROOT
) -> Iterator[int]:
    with open(log_path, "wb") as out:
        p = subprocess.Popen(
            cmd, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
        )
    try:
        wait_http(ready_url, timeout=120)
        yield p.pid
    finally:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def cpu_seconds(pid: int) -> float:
    """utime + stime of one process: what it spent, whatever else runs on the machine."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wrk(
    url: str,
    batch: int,
    features: list[str],
    req_key: str,
    duration: float,
    conns: int,
    label: str,
    pid: int = 0,
) -> dict[str, Any]:
    cpu0 = cpu_seconds(pid) if pid else 0.0
    env = {
        **os.environ,
        "BATCH": str(batch),
        "FEATURES": ",".join(features),
        "REQ_KEY": req_key,
        "LABEL": label,
    }
    out = subprocess.run(
        ["wrk", "-t1", f"-c{conns}", f"-d{duration:g}s", "--timeout", "30s", "-s", str(WRK_DERIVED), url],
        env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    line = next(x for x in out.stdout.splitlines() if x.startswith("RESULT "))
    result: dict[str, Any] = json.loads(line.removeprefix("RESULT "))
    if result["err_status"] or result["err_other"]:
        raise RuntimeError(f"{label} b={batch}: errors in the load run: {result}")
    if pid:
        result["server_cpu_us"] = round((cpu_seconds(pid) - cpu0) / result["requests"] * 1e6, 1)
    return result


def check_join(url: str, features: list[str], req_key: str) -> dict[str, Any]:
    """One request of the shape the load sends: 200, and the derived columns present."""
    import urllib.request

    body: dict[str, Any] = {"features": features, "entities": {"user_id": [17, 4242]}}
    prices = {"item_price": [5.0, 75.0]}
    if req_key == "entities":
        body["entities"] |= prices
    else:
        body[req_key] = prices
    req = urllib.request.Request(url, json.dumps(body).encode(), {"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        doc: dict[str, Any] = json.loads(r.read())
    return dict(zip(doc["metadata"]["feature_names"], (c["values"] for c in doc["results"]), strict=True))


# -- 2. join overhead -----------------------------------------------------------------------


def join_section(data: Path, out: Path, duration: float, rounds: int, conns: int) -> dict[str, Any]:
    http = free_port()
    url = f"http://127.0.0.1:{http}/v1/feature/join"
    cmd = [sys.executable, "-m", "featurestore.cli", "serve", "--demo", "--no-clickhouse", "--data-dir", str(data),
           "--http-port", str(http), "--grpc-port", str(free_port()), "--log-level", "warning"]  # fmt: skip
    pairs = {
        "ranker": (list(FEATURE_REFS), [*FEATURE_REFS, *OURS]),
        "inputs": (INPUTS, [*INPUTS, *OURS]),
        # control: what 4 more stored columns of the same view cost, against the 4 derived
        "stored": ([*INPUTS, *STORED4], [*INPUTS, *OURS]),
    }
    runs: list[dict[str, Any]] = []
    with process(cmd, out / "join-server.log", f"http://127.0.0.1:{http}/readyz") as pid:
        for without, with_ in pairs.values():
            assert check_join(url, with_, "request_data")["value_score"][0] is not None
            check_join(url, without, "request_data")
        for r in range(rounds):
            for batch in (1, 100):
                for pair, (without, with_) in pairs.items():
                    order = (("without", without), ("with", with_))
                    for variant, features in order if r % 2 == 0 else order[::-1]:  # neither always first
                        res = wrk(
                            url, batch, features, "request_data", duration, conns, f"{pair}/{variant}", pid
                        )
                        runs.append({"round": r, "batch": batch, "pair": pair, "variant": variant, **res})
                        log(
                            f"join r{r} b={batch} {pair}/{variant}: {res['qps']:.0f} QPS, p50 {res['p50_ms']:.2f} ms, "
                            f"server CPU {res['server_cpu_us']:.0f} us/request"
                        )
    summary = {}
    for batch in (1, 100):
        for pair in pairs:
            picked = {
                v: [x for x in runs if (x["batch"], x["pair"], x["variant"]) == (batch, pair, v)]
                for v in ("without", "with")
            }
            qps = {v: statistics.median(x["qps"] for x in xs) for v, xs in picked.items()}
            cpu = {v: statistics.median(x["server_cpu_us"] for x in xs) for v, xs in picked.items()}
            # The cost is the median of each round's own with/without pair: this VM's
            # speed drifts by +-15% between runs seconds apart, and a pair measured back
            # to back shares the drift (medians of each side mixed rounds: 20% "costs"
            # that were noise).
            pairs_qps = [w["qps"] / o["qps"] for o, w in zip(picked["without"], picked["with"], strict=True)]
            pairs_cpu = [
                w["server_cpu_us"] / o["server_cpu_us"]
                for o, w in zip(picked["without"], picked["with"], strict=True)
            ]
            summary[f"{pair}/b{batch}"] = {
                **qps,
                "cost_pct": round(100 * (1 - statistics.median(pairs_qps)), 2),  # (a verdict, not a rounding)
                "cpu_us": cpu,
                "cpu_cost_pct": round(100 * (statistics.median(pairs_cpu) - 1), 1),
            }
    return {"runs": runs, "summary": summary}


# -- 3. Feast on-demand feature views ----------------------------------------------------------


def feast_section(data: Path, out: Path, a: argparse.Namespace, fresh_redis: bool = False) -> dict[str, Any]:
    workdir = Path(a.feast_workdir)
    env = {**os.environ, "WORKDIR": str(workdir)}
    if not a.skip_feast_setup or fresh_redis:
        log("Feast: setup.sh (venv, data, feast apply, feast materialize into Redis) ...")
        with open(out / "feast-setup.log", "wb") as fh:
            subprocess.run([str(PEER / "setup.sh")], env=env, stdout=fh, stderr=subprocess.STDOUT, check=True)
    repo = workdir / "feature_repo_odfv"
    shutil.rmtree(repo, ignore_errors=True)
    shutil.copytree(PEER / "feature_repo_odfv", repo)
    yaml_path = repo / "feature_store.yaml"
    yaml_path.write_text(yaml_path.read_text().replace("data/registry.db", "data/registry_odfv.db"))
    (repo / "data").mkdir(exist_ok=True)
    feast_env = {
        **env,
        "FEAST_PEER_BASE_REPO": str(workdir / "feature_repo"),
        "FEAST_PEER_DATA": str(workdir / "feature_repo" / "data" / "users.parquet"),
    }
    feast = str(workdir / "venv" / "bin" / "feast")
    subprocess.run([feast, "apply"], cwd=repo, env=feast_env, check=True, capture_output=True)

    config = out / "derived-redis.yaml"
    config.write_text(
        f"project: demo\nregistry:\n  path: {out / 'registry-derived'}\n"
        f"  definitions: {ROOT / 'featurestore' / 'demo' / 'features.yaml'}\n  definitions_base_dir: {data}\n"
        f"stores:\n  default: {{kind: redis, url: 'redis://127.0.0.1:{REDIS_PORT}/0'}}\n"
        f"  analytics: {{kind: redis, url: 'redis://127.0.0.1:{REDIS_PORT}/0'}}\n"
        f"derived: {{cache_dir: {data / 'derived-cache'}}}\n"
    )
    for view in ("user_profile", "user_activity"):
        log(f"featurestore: materialize {view} into Redis")
        subprocess.run(
            [sys.executable, "-m", "featurestore.cli", "materialize", "--config", str(config), "--view", view,
             "--source", str(data / "users.parquet"), "--quiet"],
            check=True, cwd=ROOT,
        )  # fmt: skip
    ours_port, feast_port = free_port(), free_port()
    ours_cmd = [sys.executable, "-m", "featurestore.cli", "serve", "--config", str(config), "--no-apply",
                "--workers", str(a.workers), "--http-port", str(ours_port), "--grpc-port", str(free_port()),
                "--log-level", "warning"]  # fmt: skip
    feast_cmd = [feast, "serve", "--host", "127.0.0.1", "--port", str(feast_port), "--workers", str(a.workers),
                 "--max-requests", "0", "--no-access-log"]  # fmt: skip
    targets = {
        "feast_python": (f"http://127.0.0.1:{feast_port}/get-online-features", "user_derived_py", "entities"),
        "feast_pandas": (f"http://127.0.0.1:{feast_port}/get-online-features", "user_derived_pd", "entities"),
        "featurestore": (f"http://127.0.0.1:{ours_port}/v1/feature/join", "user_derived", "request_data"),
    }
    runs: list[dict[str, Any]] = []
    subprocess.run([sys.executable, "-m", "featurestore.cli", "apply", str(ROOT / "featurestore/demo/features.yaml"),
                    "--config", str(config)], check=True, cwd=ROOT, capture_output=True)  # fmt: skip
    with (
        process(ours_cmd, out / "ours-redis.log", f"http://127.0.0.1:{ours_port}/readyz"),
        process(
            feast_cmd,
            out / "feast-odfv.log",
            f"http://127.0.0.1:{feast_port}/health",
            env=feast_env,
            cwd=repo,
        ),
    ):
        answers = {
            name: check_join(url, [f"{v}:{f}" for f in DERIVED], key)
            for name, (url, v, key) in targets.items()
        }
        for f in DERIVED:  # same data, same formulas: the same values
            np.testing.assert_allclose(
                answers["featurestore"][f], answers["feast_python"][f], rtol=1e-9, err_msg=f
            )
            np.testing.assert_allclose(
                answers["featurestore"][f], answers["feast_pandas"][f], rtol=1e-9, err_msg=f
            )
        for r in range(a.rounds):
            for batch in (1, 10, 100):
                # the order alternates by round (the VM drifts by several per cent over minutes)
                order = list(targets.items()) if r % 2 == 0 else list(targets.items())[::-1]
                for name, (url, view, key) in order:
                    res = wrk(url, batch, [f"{view}:{f}" for f in DERIVED], key, a.duration, a.conns, name)
                    runs.append({"round": r, "batch": batch, "target": name, **res})
                    log(f"feast r{r} b={batch} {name}: {res['qps']:.0f} QPS, p50 {res['p50_ms']:.2f} ms")
    summary = {
        f"b{batch}": {
            name: statistics.median(x["qps"] for x in runs if x["batch"] == batch and x["target"] == name)
            for name in targets
        }
        for batch in (1, 10, 100)
    }
    return {"runs": runs, "summary": summary, "workers": a.workers}


# -- report ------------------------------------------------------------------------------------


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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--sections", default="kernel,join,feast")
    ap.add_argument("--duration", type=float, default=5)
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--conns", type=int, default=8)
    ap.add_argument("--workers", type=int, default=2, help="feast section: worker processes of each server")
    ap.add_argument("--feast-workdir", default=os.environ.get("WORKDIR", "/tmp/feast-peer"))
    ap.add_argument(
        "--skip-feast-setup",
        action="store_true",
        help="reuse an earlier setup.sh run (ignored when this run starts its own, empty Redis)",
    )
    ap.add_argument("--out", type=Path, default=HERE / "out")
    a = ap.parse_args()
    sections = set(a.sections.split(","))
    a.out.mkdir(parents=True, exist_ok=True)
    data = a.out / "data"
    ensure_demo_data(data)
    results: dict[str, Any] = {}
    own_redis = None
    try:  # the sections measured so far are written even when a later one fails
        if "kernel" in sections:
            results["kernel"] = kernel_section(data)
        if ("join" in sections or "feast" in sections) and shutil.which("wrk") is None:
            log("wrk is missing (make bench installs it)")
            return 2
        if "join" in sections:
            results["join"] = join_section(data, a.out, a.duration, a.rounds, a.conns)
        if "feast" in sections:
            if not redis_up():
                log(f"starting redis-server on {REDIS_PORT}")
                own_redis = subprocess.Popen(
                    ["redis-server", "--port", str(REDIS_PORT), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=a.out,
                )  # fmt: skip
                end = time.monotonic() + 10
                while not redis_up() and time.monotonic() < end:
                    time.sleep(0.1)
            # a Redis started here is empty: Feast's rows must be materialized into it again
            # (as benchmarks.run does; --skip-feast-setup alone left Feast answering 500s)
            results["feast"] = feast_section(data, a.out, a, fresh_redis=own_redis is not None)
    finally:
        if own_redis is not None:
            own_redis.terminate()
            own_redis.wait(10)
        if results:
            stamp = time.strftime("%Y%m%dT%H%M%S")
            (a.out / f"derived-{stamp}.json").write_text(json.dumps(results, indent=1))
            print(write_results(results, a).read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
