"""Start-up time and memory of the embedded demo server.

Starts ``featurestore serve --demo`` (data already generated, as after a first
``make run``), measures the time from process start to ``/readyz`` answering 200,
RSS when ready, then peak RSS (VmHWM) after a wrk load at batch 100.

    python -m benchmarks.footprint [--runs 3] [--load-seconds 10]
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

from benchmarks.report import stitch
from featurestore.demo.data import ensure_demo_data

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
WRK_LUA = ROOT.parent / "shared" / "peers" / "feast" / "wrk_getfeatures.lua"


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


def measure_once(data_dir: Path, load_seconds: int, extra: list[str]) -> dict[str, float]:
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
        if load_seconds and shutil.which("wrk") and WRK_LUA.exists():
            env = {**os.environ, "BATCH": "100"}
            subprocess.run(
                ["wrk", "-t1", "-c16", f"-d{load_seconds}s", "-s", str(WRK_LUA), f"http://127.0.0.1:{http}/v1/feature/join"],
                env=env, check=True, capture_output=True,
            )  # fmt: skip
        peak_rss = rss_kb(proc.pid, "VmHWM")
    finally:
        proc.terminate()
        proc.wait(20)
    return {
        "ready_s": ready_s,
        "ready_rss_mb": ready_rss / 1024,
        "ready_anon_mb": ready_anon / 1024,
        "peak_rss_mb": peak_rss / 1024,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--load-seconds", type=int, default=10)
    ap.add_argument("--data-dir", type=Path)
    ap.add_argument(
        "--no-clickhouse", action="store_true", help="the demo without its embedded ClickHouse view"
    )
    a = ap.parse_args()
    data_dir = a.data_dir or Path(tempfile.mkdtemp(prefix="fs-footprint-"))
    ensure_demo_data(data_dir)
    extra = ["--no-clickhouse"] if a.no_clickhouse else []
    measure_once(data_dir, 0, extra)  # first start: generates data, fills the ClickHouse view
    runs = [measure_once(data_dir, a.load_seconds, extra) for _ in range(a.runs)]
    summary = {
        k: {"median": statistics.median(r[k] for r in runs), "max": max(r[k] for r in runs)} for k in runs[0]
    }
    print(json.dumps({"runs": runs, "summary": summary}, indent=2))
    table = (
        f"| metric | median | max |\n|---|---:|---:|\n"
        f"| start to ready (s) | {summary['ready_s']['median']:.2f} | {summary['ready_s']['max']:.2f} |\n"
        f"| RSS when ready (MB) | {summary['ready_rss_mb']['median']:.0f} | {summary['ready_rss_mb']['max']:.0f} |\n"
        f"| of which anonymous (heap; the rest is mapped library code) (MB) | {summary['ready_anon_mb']['median']:.0f} | {summary['ready_anon_mb']['max']:.0f} |\n"
        f"| peak RSS after {a.load_seconds}s of batch-100 load (MB) | {summary['peak_rss_mb']['median']:.0f} | {summary['peak_rss_mb']['max']:.0f} |"
    )
    print(table)
    variant = "no-clickhouse" if a.no_clickhouse else "demo"
    what = (
        "without the embedded ClickHouse (`--no-clickhouse`)"
        if a.no_clickhouse
        else "as `make run` serves it"
    )
    part = HERE / "results" / f"footprint-{variant}.md"
    part.parent.mkdir(exist_ok=True)
    flag = " --no-clickhouse" if a.no_clickhouse else ""
    part.write_text(
        f"### Footprint of the embedded demo, {what}\n\n"
        f"`python -m benchmarks.footprint --runs {a.runs}{flag}` (100k users loaded; data generated beforehand)\n\n"
        f"{table}\n"
    )
    stitch()


if __name__ == "__main__":
    main()
