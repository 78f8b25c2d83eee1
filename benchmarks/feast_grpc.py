"""The Feast peer's Python gRPC server (``feast listen``: GrpcFeatureServer, a sync thread
pool) as a row of benchmarks.transports, driven by the same load generator as ours
(benchmarks/grpc_load.py) with Feast's own request bytes.

It runs from an overlay venv beside the peer's (``venv-grpc``: the grpcio extra on top of
the measured venv, exactly the commands in ../shared/peers/feast/README.md, "gRPC and Go
feature servers"), over the Redis the peer's setup.sh materialized (127.0.0.1:6379).
"""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from benchmarks.footprint import free_port

HERE = Path(__file__).resolve().parent
PEER_DIR = HERE.parent.parent / "shared" / "peers" / "feast"
METHOD = "/GrpcFeatureServer/GetOnlineFeatures"
THREADS = 10  # feast listen -w: the peer README's setting


def available(workdir: Path) -> bool:
    """setup.sh ran (the peer's venv and feature repo exist)."""
    return (workdir / "venv" / "bin" / "feast").exists() and (workdir / "feature_repo").is_dir()


def ensure_venv(workdir: Path) -> Path:
    """The overlay venv's python, created once (pip reaches PyPI or the local mirror); a
    marker written after pip succeeded says it is complete (a failed install is redone)."""
    python = workdir / "venv-grpc" / "bin" / "python"
    marker = workdir / "venv-grpc" / ".complete"
    if not marker.exists():
        subprocess.run(["python3", "-m", "venv", "--clear", str(workdir / "venv-grpc")], check=True)
        site = next((workdir / "venv-grpc" / "lib").glob("python3*/site-packages"))
        main_site = next((workdir / "venv" / "lib").glob("python3*/site-packages"))
        (site / "main-venv.pth").write_text(f"{main_site}\n")
        subprocess.run(
            [
                str(python),
                "-m",
                "pip",
                "install",
                "-q",
                "grpcio",
                "grpcio-health-checking",
                "grpcio-reflection",
            ],
            check=True,
        )
        marker.write_text(versions(python))
    return python


def versions(python: Path) -> str:
    """What the row ran: feast's and grpcio's versions in the overlay venv."""
    code = "import feast, grpc; print(f'feast {feast.__version__}, grpcio {grpc.__version__}')"
    return subprocess.run(
        [str(python), "-c", code], check=True, capture_output=True, text=True
    ).stdout.strip()


def write_requests(python: Path, out_dir: Path, batch: int, procs: int, count: int = 2048) -> str:
    """One file of Feast requests per load-generator process (seeds 1000..), the same keys
    grpc_load draws for ours; returns the ``bodies_from`` pattern grpc_load takes."""
    pattern = str(out_dir / f"feast-b{batch}-s{{seed}}.bin")
    for i in range(procs):
        seed = 1000 + i
        subprocess.run(
            [str(python), str(HERE / "feast_grpc_requests.py"), "--peer-dir", str(PEER_DIR),
             "--batch", str(batch), "--count", str(count), "--seed", str(seed),
             "--out", pattern.format(seed=seed)],
            check=True,
        )  # fmt: skip
    return pattern


@contextmanager
def listen(workdir: Path, python: Path, log: Path) -> Iterator[dict[str, int]]:
    """``feast listen`` on a free port; yields {"pid", "grpc"} like benchmarks.stack.server."""
    port = free_port()
    cmd = [str(python), "-c", "from feast.cli.cli import cli; cli()", "listen",
           "-a", f"127.0.0.1:{port}", "-w", str(THREADS)]  # fmt: skip
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=workdir / "feature_repo", stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"feast listen exited with {proc.returncode}: see {log}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"feast listen did not open port {port} in 120 s: see {log}") from None
                time.sleep(0.5)
        # Serving, and serving the peer's data: the peer's probe compares a few users'
        # values with the generated data (a Redis without them answers NOT_FOUND, which
        # grpc_load would count as OK calls measuring nothing).
        probe = subprocess.run(
            [str(python), str(PEER_DIR / "grpc_probe.py"), "--addr", f"127.0.0.1:{port}", "--seconds", "0.5"],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        if probe.returncode != 0:
            raise RuntimeError(
                f"feast listen does not serve the peer's data:\n{probe.stdout}\n{probe.stderr}"
            )
        yield {"pid": proc.pid, "grpc": port}
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
