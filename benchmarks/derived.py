"""Derived features: kernel throughput, join overhead, and Feast's on-demand views side by side.

1. kernel: 100,000 rows of ``ctr_x_price_bucket``, the numba kernel against numpy and a
   serial pure-Python loop (benchmarks/derived_kernel.py).
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
runs under benchmarks/out/ (the report: benchmarks/derived_report.py).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.derived_kernel import kernel_section
from benchmarks.derived_report import write_results
from benchmarks.footprint import free_port
from benchmarks.run import PEER as DEFAULT_PEER
from benchmarks.run import REDIS_PORT, ROOT, log, redis_up, wait_http
from featurestore.demo.data import FEATURE_REFS, ensure_demo_data

HERE = Path(__file__).resolve().parent
# ../shared/peers/feast from the checkout; FEAST_PEER_DIR when the checkout lives elsewhere
PEER = Path(os.environ.get("FEAST_PEER_DIR") or DEFAULT_PEER)
WRK_DERIVED = PEER / "wrk_derived.lua"
DERIVED = ["engagement_score", "spend_per_session", "ctr_x_price_bucket", "value_score"]
INPUTS = ["user_activity:ctr_30d", "user_activity:sessions_30d", "user_activity:spend_30d"]
OURS = [f"user_derived:{f}" for f in DERIVED]
STORED4 = [f"user_activity:{f}" for f in ("sessions_7d", "avg_session_minutes", "clicks_7d", "purchases_30d")]


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
