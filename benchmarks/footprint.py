"""Start-up time and memory of the embedded demo server.

Starts ``featurestore serve --demo`` (data already generated and derived kernels
built, as after a first ``make run``), measures the time from process start to
``/readyz`` answering 200, RSS when ready, then peak RSS (VmHWM) after a wrk load at
batch 100 (ranker_v2 with its derived features, or ranker_v1 with ``--no-derived``). ``--no-derived`` serves the demo without its derived view (numba is then
never imported): the difference is what derived features cost.

    python -m benchmarks.footprint [--runs 3] [--load-seconds 10] [--no-clickhouse] [--no-derived]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from benchmarks.provenance import run_line, started
from benchmarks.report import stitch
from featurestore.demo.data import ensure_demo_data

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
# ../shared/peers/feast from the checkout; FEAST_PEER_DIR when the checkout lives elsewhere
WRK_LUA = (
    Path(os.environ.get("FEAST_PEER_DIR") or ROOT.parent / "shared" / "peers" / "feast")
    / "wrk_getfeatures.lua"
)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_kb(pid: int, field: str = "VmRSS") -> int:
    """A /proc/PID/status memory field in kB (VmRSS, VmHWM, RssAnon, RssFile)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} for {pid}")


# With the derived view the load asks for ranker_v2 (16 stored + 4 derived features).
RANKER_V2 = ",".join(
    [f"user_profile:{f}" for f in ("age", "tenure_days", "num_devices", "country", "plan_tier",
                                    "preferred_language", "lifetime_value", "credit_score")]
    + [f"user_activity:{f}" for f in ("sessions_7d", "sessions_30d", "avg_session_minutes", "clicks_7d",
                                       "purchases_30d", "spend_30d", "days_since_last_login", "ctr_30d")]
    + [f"user_derived:{f}" for f in ("engagement_score", "spend_per_session", "ctr_x_price_bucket", "value_score")]
)  # fmt: skip
WRK_DERIVED_LUA = WRK_LUA.parent / "wrk_derived.lua"


def measure_once(
    data_dir: Path, load_seconds: int, extra: list[str], derived: bool = False
) -> dict[str, float]:
    http, grpc = free_port(), free_port()
    cmd = [sys.executable, "-m", "featurestore.cli", "serve", "--demo", "--data-dir", str(data_dir),
           "--http-port", str(http), "--grpc-port", str(grpc), "--log-level", "warning", *extra]  # fmt: skip
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
    try:
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{http}/readyz", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None:
                raise RuntimeError("server exited during start-up")
            time.sleep(0.02)
        ready_s = time.monotonic() - t0
        ready_rss = rss_kb(proc.pid)
        ready_anon = rss_kb(proc.pid, "RssAnon")
        ready_file = rss_kb(proc.pid, "RssFile")
        lua = WRK_DERIVED_LUA if derived else WRK_LUA
        if load_seconds and shutil.which("wrk") and lua.exists():
            env = {**os.environ, "BATCH": "100", "FEATURES": RANKER_V2, "REQ_KEY": "request_data"}
            subprocess.run(
                ["wrk", "-t1", "-c16", f"-d{load_seconds}s", "-s", str(lua), f"http://127.0.0.1:{http}/v1/feature/join"],
                env=env, check=True, capture_output=True,
            )  # fmt: skip
        peak_rss = rss_kb(proc.pid, "VmHWM")
        after_rss = rss_kb(proc.pid)
    finally:
        proc.terminate()
        proc.wait(20)
    return {
        "ready_s": ready_s,
        "ready_rss_mb": ready_rss / 1024,
        "ready_anon_mb": ready_anon / 1024,
        "ready_file_mb": ready_file / 1024,
        "peak_rss_mb": peak_rss / 1024,
        "after_load_rss_mb": after_rss / 1024,
    }


def without_derived(data_dir: Path) -> Path:
    """The demo definitions minus derived views and the services that use them."""
    import yaml

    doc = yaml.safe_load((ROOT / "featurestore" / "demo" / "features.yaml").read_text())
    derived = {v["name"] for v in doc.pop("derived_views", [])}
    doc["feature_services"] = [
        s for s in doc["feature_services"] if not any(f.split(":")[0] in derived for f in s["features"])
    ]
    path = data_dir / "features-no-derived.yaml"  # relative Parquet paths resolve against data_dir
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--load-seconds", type=int, default=10)
    ap.add_argument("--data-dir", type=Path)
    ap.add_argument(
        "--no-clickhouse", action="store_true", help="the demo without its embedded ClickHouse view"
    )
    ap.add_argument("--no-derived", action="store_true", help="the demo without its derived view (no numba)")
    a = ap.parse_args()
    start = started()
    data_dir = a.data_dir or Path(tempfile.mkdtemp(prefix="fs-footprint-"))
    ensure_demo_data(data_dir)
    extra = ["--no-clickhouse"] if a.no_clickhouse else []
    if a.no_derived:
        extra += ["--definitions", str(without_derived(data_dir))]
    # The first start compiles the derived kernels into a fresh cache and fills the
    # ClickHouse view (the data is generated above): reported, not in the medians.
    first = measure_once(data_dir, 0, extra)
    runs = [measure_once(data_dir, a.load_seconds, extra, derived=not a.no_derived) for _ in range(a.runs)]
    summary = {
        k: {"median": statistics.median(r[k] for r in runs), "max": max(r[k] for r in runs)} for k in runs[0]
    }
    summary["first_ready_s"] = {"median": first["ready_s"], "max": first["ready_s"]}
    print(json.dumps({"runs": runs, "summary": summary}, indent=2))
    table = (
        f"| metric | median | max |\n|---|---:|---:|\n"
        f"| start to ready (s) | {summary['ready_s']['median']:.2f} | {summary['ready_s']['max']:.2f} |\n"
        f"| first start to ready, kernels compiled and the ClickHouse view filled (s) | {summary['first_ready_s']['median']:.2f} | - |\n"
        f"| RSS when ready (MB) | {summary['ready_rss_mb']['median']:.0f} | {summary['ready_rss_mb']['max']:.0f} |\n"
        f"| of which anonymous (heap) (MB) | {summary['ready_anon_mb']['median']:.0f} | {summary['ready_anon_mb']['max']:.0f} |\n"
        f"| of which file-backed (mapped library code, shared) (MB) | {summary['ready_file_mb']['median']:.0f} | {summary['ready_file_mb']['max']:.0f} |\n"
        f"| RSS after {a.load_seconds}s of batch-100 load (MB) | {summary['after_load_rss_mb']['median']:.0f} | {summary['after_load_rss_mb']['max']:.0f} |\n"
        f"| peak RSS (VmHWM: start-up included) (MB) | {summary['peak_rss_mb']['median']:.0f} | {summary['peak_rss_mb']['max']:.0f} |"
    )
    print(table)
    variant = ("no-clickhouse" if a.no_clickhouse else "demo") + ("-no-derived" if a.no_derived else "")
    what = (
        "without the embedded ClickHouse (`--no-clickhouse`)"
        if a.no_clickhouse
        else "as `make run` serves it"
    ) + (", without its derived view (`--no-derived`: numba not loaded)" if a.no_derived else "")
    part = HERE / "results" / f"footprint-{variant}.md"
    part.parent.mkdir(exist_ok=True)
    flag = (" --no-clickhouse" if a.no_clickhouse else "") + (" --no-derived" if a.no_derived else "")
    part.write_text(
        f"### Footprint of the embedded demo, {what}\n\n"
        f"`python -m benchmarks.footprint --runs {a.runs}{flag}` (100k users loaded; data generated beforehand)\n\n"
        f"{run_line(start)}\n\n"
        f"{table}\n"
    )
    # the figures, for RESULTS.md's derived-features targets (benchmarks.report)
    figures = {
        "command": f"python -m benchmarks.footprint --runs {a.runs}{flag}",
        "run_at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),  # (RESULTS.md's targets name it)
        "summary": summary,
    }
    part.with_suffix(".json").write_text(json.dumps(figures, indent=1) + "\n")
    stitch()


if __name__ == "__main__":
    main()
