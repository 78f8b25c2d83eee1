"""Experiment (issue 16, requirement 3): the same HTTP app under uvicorn (``featurestore
serve``: httptools, the connection guard) and under granian (benchmarks/granian_app.py),
2 workers each, one Redis (cache off), wrk at batch 1, 10 and 100, interleaved.

    python -m benchmarks.http_servers [--duration 8] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from benchmarks.derived import process
from benchmarks.footprint import free_port
from benchmarks.stack import HERE, ROOT, config, materialize, redis, server, tree_cpu, wrk


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--duration", type=float, default=8)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--batches", type=lambda s: [int(x) for x in s.split(",")], default=[1, 10, 100])
    a = ap.parse_args()
    granian = shutil.which("granian") or str(Path(sys.executable).parent / "granian")
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        work = Path(tmp)
        url = stack.enter_context(redis(work))
        cfg = config(work, url, "nocache", cache=False)
        materialize(work, cfg)
        uv = stack.enter_context(server(work, cfg, a.workers))
        port = free_port()
        cmd = [granian, "--interface", "asgi", "--host", "127.0.0.1", "--port", str(port), "--workers",
               str(a.workers), "--loop", "uvloop", "--no-ws", "--log-level", "warning", "benchmarks.granian_app:app"]  # fmt: skip
        env = {"FEATURESTORE_CONFIG": str(cfg), "PYTHONPATH": os.environ.get("PYTHONPATH", str(ROOT))}
        gpid = stack.enter_context(
            process(cmd, work / "granian.log", f"http://127.0.0.1:{port}/readyz", env=env)
        )
        servers = {"uvicorn": (uv["http"], uv["pid"]), "granian": (port, gpid)}
        point = 0
        for batch in a.batches:
            for p, _ in servers.values():
                wrk(f"http://127.0.0.1:{p}/v1/feature/join", batch, 8, 2)
            for rnd in range(a.rounds):
                for name in list(servers) if point % 2 == 0 else list(servers)[::-1]:
                    p, pid = servers[name]
                    c0 = tree_cpu(pid)
                    res = wrk(f"http://127.0.0.1:{p}/v1/feature/join", batch, a.concurrency, a.duration)
                    res.update(
                        server=name,
                        batch=batch,
                        round=rnd,
                        cpu_us=(tree_cpu(pid) - c0) / res["requests"] * 1e6,
                    )
                    print(json.dumps(res), flush=True)
                    runs.append(res)
                point += 1
    cmdline = " ".join(["python -m benchmarks.http_servers", *sys.argv[1:]])
    lines = [
        f"`{cmdline}`: {a.workers} workers each, Redis store, cache off, wrk -t1 -c{a.concurrency}, "
        f"{a.duration:g} s per run, {a.rounds} interleaved rounds (median).",
        "",
        "| batch | uvicorn QPS | granian QPS | granian vs uvicorn | uvicorn CPU us/request | granian CPU us/request |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for b in a.batches:

        def med(name: str, key: str, b: int = b) -> float:
            return float(statistics.median(r[key] for r in runs if r["server"] == name and r["batch"] == b))

        qu, qg = med("uvicorn", "qps"), med("granian", "qps")
        lines.append(
            f"| {b} | {qu:,.0f} | {qg:,.0f} | {qg / qu - 1:+.1%} | {med('uvicorn', 'cpu_us'):.0f} | "
            f"{med('granian', 'cpu_us'):.0f} |"
        )
    print("\n".join(lines))
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "http-servers.txt").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
