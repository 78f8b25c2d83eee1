"""The floor under gRPC Join: a grpc.aio server on uvloop that answers Join with fixed
bytes (no decode, no join, no encode), driven by the same load generator as
``benchmarks.transports`` (benchmarks/grpc_load.py). Whatever this costs per call, our
Join cannot cost less: it is grpc.aio's own share (Cython call objects, the asyncio
hand-off from grpc's poller threads, HTTP/2 framing).

    python -m benchmarks.grpc_floor [--duration 6] [--rounds 2] [--concurrency 32]

Writes benchmarks/results/grpc-floor.md (stitched into RESULTS.md after the gRPC section).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.grpc_load import measure as grpc_measure
from benchmarks.report import stitch
from benchmarks.stack import HERE, tree_cpu

METHODS = ("unary", "stream_unary")  # our Join is registered stream-unary (docs/api.md)


def serve(port: int, method: str) -> None:
    """The echo server (run in a child process: ``python -m benchmarks.grpc_floor --serve``)."""
    import grpc
    import uvloop

    answer = b"\x0a\x00" + b"x" * 900  # about a batch-1 JoinResponse

    async def unary(request: bytes, context: Any) -> bytes:
        return answer

    async def stream_unary(requests: Any, context: Any) -> bytes:
        await context.read()
        return answer

    async def main() -> None:
        handler = (
            grpc.unary_unary_rpc_method_handler(unary)
            if method == "unary"
            else grpc.stream_unary_rpc_method_handler(stream_unary)
        )
        server = grpc.aio.server()
        server.add_generic_rpc_handlers(
            [grpc.method_handlers_generic_handler("featurestore.v1.FeatureService", {"Join": handler})]
        )
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        await server.wait_for_termination()

    uvloop.run(main())


def measure(method: str, a: argparse.Namespace, port: int) -> dict[str, Any]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.grpc_floor", "--serve", method, "--port", str(port)]
    )
    try:
        time.sleep(1.5)
        cpu0 = tree_cpu(proc.pid)
        res = grpc_measure(f"127.0.0.1:{port}", 1, a.concurrency, a.duration, a.procs)
        res["cpu_us"] = round((tree_cpu(proc.pid) - cpu0) / max(res["requests"], 1) * 1e6, 1)
        return res
    finally:
        proc.terminate()
        proc.wait(10)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--duration", type=float, default=6)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--procs", type=int, default=2)
    ap.add_argument("--port", type=int, default=50_151)
    ap.add_argument("--serve", choices=METHODS, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "grpc-floor.md")
    a = ap.parse_args()
    if a.serve:
        serve(a.port, a.serve)
        return 0
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in METHODS}
    for _ in range(a.rounds):
        for method in METHODS:
            runs[method].append(measure(method, a, a.port))
            print(method, runs[method][-1], file=sys.stderr)
    lines = [
        "## The floor under gRPC Join: grpc.aio answering fixed bytes (issue 16, requirement 4)",
        "",
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: "
        f"`{' '.join(['python -m benchmarks.grpc_floor', *sys.argv[1:]])}`",
        "",
        f"One grpc.aio server process on uvloop, Join answered with 900 fixed bytes (no decode, join or encode); "
        f"benchmarks/grpc_load.py with {a.procs} processes, concurrency {a.concurrency}, {a.duration:g} s x "
        f"{a.rounds} rounds (median).",
        "",
        "| method registration | QPS | p50 ms | p99 ms | server CPU µs/call | load generator cores |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for method, rs in runs.items():

        def med(key: str, rs: list[dict[str, Any]] = rs) -> float:
            return float(statistics.median(r[key] for r in rs))

        lines.append(
            f"| {method} | {med('qps'):,.0f} | {med('p50_ms'):.2f} | {med('p99_ms'):.2f} | {med('cpu_us'):,.0f} "
            f"| {med('client_cores'):.2f} |"
        )
    a.out.write_text("\n".join(lines) + "\n")
    stitch()
    print(a.out.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
