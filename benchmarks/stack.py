"""The benchmark stack: a Redis on a free port with the demo's two views materialized
into it, featurestore servers over it, their CPU, and wrk with benchmarks/wrk_keys.lua.
Shared by benchmarks.cache_admission, benchmarks.transports and benchmarks.overload."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from benchmarks.derived import process
from benchmarks.footprint import free_port
from featurestore.demo.data import ensure_demo_data

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
WRK_KEYS = HERE / "wrk_keys.lua"


def tree_cpu(pid: int) -> float:
    """CPU seconds of a process and its live descendants (the serving workers)."""
    total, stack = 0.0, [pid]
    while stack:
        p = stack.pop()
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += sum(int(f) for f in fields[11:15])
            for task in Path(f"/proc/{p}/task").iterdir():
                stack += [int(c) for c in (task / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total / os.sysconf("SC_CLK_TCK")


def scrape(port: int) -> str:
    """The server's /metrics text."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text: str = r.read().decode()
    return text


def series_sum(text: str, name: str, label: str = "") -> float:
    """The sum of the series of ``name`` in a scrape, those whose labels hold ``label``
    (``'decision="trial"'``) when given."""
    labels = rf"\{{[^}}]*{re.escape(label)}[^}}]*\}}" if label else r"(?:\{[^}]*\})?"
    pat = re.compile(rf"^{name}{labels} (\S+)$", re.M)
    return sum(float(v) for v in pat.findall(text))


def metric_sum(port: int, name: str) -> float:
    """The sum of every series of ``name`` on the server's /metrics."""
    return series_sum(scrape(port), name)


@contextmanager
def redis(workdir: Path) -> Iterator[str]:
    """A redis-server of our own on a free port; its URL."""
    port = free_port()
    p = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(workdir)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        end = time.monotonic() + 10
        while (
            subprocess.run(["redis-cli", "-p", str(port), "ping"], capture_output=True).stdout.strip()
            != b"PONG"
        ):
            if time.monotonic() > end:
                raise RuntimeError("redis-server did not answer")
            time.sleep(0.1)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        p.terminate()
        p.wait(10)


def config(workdir: Path, url: str, name: str, cache: bool, extra: str = "", store: str = "") -> Path:
    """A server config over the demo definitions and ``url``; ``extra``: more YAML,
    ``store``: more options of both stores (``, auto_pipeline: false``; ``, cluster: true``)."""
    data = workdir / "data"
    path = workdir / f"config-{name}.yaml"
    path.write_text(
        f"project: demo\nregistry:\n  path: {workdir / 'registry'}\n"
        f"  definitions: {ROOT / 'featurestore' / 'demo' / 'features.yaml'}\n  definitions_base_dir: {data}\n"
        f"stores:\n  default: {{kind: redis, url: '{url}', cache: {str(cache).lower()}{store}}}\n"
        f"  analytics: {{kind: redis, url: '{url}'{store}}}\n{extra}"
    )
    return path


def materialize(workdir: Path, cfg: Path) -> None:
    """The demo data, and its two user views written into the config's Redis."""
    ensure_demo_data(workdir / "data")
    for view in ("user_profile", "user_activity"):
        subprocess.run(
            [sys.executable, "-m", "featurestore.cli", "materialize", "--config", str(cfg),
             "--view", view, "--source", str(workdir / "data" / "users.parquet"), "--quiet"],
            check=True, cwd=ROOT,
        )  # fmt: skip


@contextmanager
def server(
    workdir: Path, cfg: Path, workers: int = 1, env: dict[str, str] | None = None, cwd: Path = ROOT
) -> Iterator[dict[str, int]]:
    """``featurestore serve`` on free ports: {"http", "grpc", "pid"}; run from ``cwd``
    (``-m`` imports the source tree there first: benchmarks.ab's old tree)."""
    http, grpc = free_port(), free_port()
    cmd = [sys.executable, "-m", "featurestore.cli", "serve", "--config", str(cfg), "--no-apply",
           "--workers", str(workers), "--http-port", str(http), "--grpc-port", str(grpc),
           "--log-level", "warning"]  # fmt: skip
    log = workdir / f"serve-{cfg.stem}-{http}.log"
    with process(cmd, log, f"http://127.0.0.1:{http}/readyz", env=env, cwd=cwd) as pid:
        yield {"http": http, "grpc": grpc, "pid": pid}


def wrk(
    url: str, batch: int, conns: int, seconds: float, keys: str = "uniform", threads: int = 1
) -> dict[str, Any]:
    """One wrk run of benchmarks/wrk_keys.lua; its RESULT line, with ``qps`` counting 200s
    only (wrk counts every answer, and a shed join is a fast 503; ``qps_all`` keeps wrk's)."""
    env = {**os.environ, "BATCH": str(batch), "KEYS": keys}
    out = subprocess.run(
        ["wrk", f"-t{threads}", f"-c{conns}", f"-d{seconds:g}s", "--timeout", "30s", "-s", str(WRK_KEYS), url],
        env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    res: dict[str, Any] = json.loads(next(x for x in out.stdout.splitlines() if x.startswith("RESULT "))[7:])
    if res["err_connect"] or res["err_read"]:
        raise RuntimeError(f"errors in the load run: {res}")
    if res["err_status"]:
        res["qps_all"] = res["qps"]
        res["qps"] = (res["requests"] - res["err_status"]) / res["duration_s"]
    return res
