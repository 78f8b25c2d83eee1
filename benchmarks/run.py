"""`make bench`: featurestore and Feast side by side, same Redis, same data, same load.

1. Redis on 127.0.0.1:6379 (started here unless one answers; stopped at the end if so).
2. Feast through ../shared/peers/feast/setup.sh: venv, the 100k-user data, `feast apply`,
   `feast materialize` into that Redis.
3. featurestore: the same data (the canonical sha256 of the Parquet file it materializes
   must equal the peer's, or the run stops), both views materialized into the same Redis
   under its own key layout.
4. Servers with the same worker count: Feast (`feast serve --workers W`), featurestore
   with its LRU cache (the default) and with the cache off (every key read from Redis).
5. The peer's verify.py against every server, then the peer's bench.py once per point
   (batch, concurrency) with every server as a target (the order alternating between
   points; CPU accounting, noise gating), wrk with benchmarks/wrk_keys.lua (the peer's
   bodies) plus the peer's plain-percentile load generator. One SEED per point: every
   server gets the same keys at a point, and each point draws new ones. bench.py runs
   through benchmarks/peer_bench.py, which makes it count the Redis of step 1 (by pid)
   as its Redis, not the oldest redis-server on the machine; the run stops when that
   pid cannot be told.
6. The redis-py floor (benchmarks/redis_floor.py) with the same process count and key
   distribution, before and after the servers' runs.
7. The raw runs and floor measurements are copied to benchmarks/results/feast[-zipf]-
   {raw,floor}.jsonl; benchmarks/report.py writes the section and RESULTS.md from them.

    python -m benchmarks.run [--duration 10] [--tool both] [--workers 2] [--skip-feast-setup]
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pyarrow.parquet as pq

from benchmarks import report
from benchmarks.peer_bench import PEER_NAME as PEER_BENCH
from benchmarks.peer_bench import PID_ENV as REDIS_PID_ENV
from benchmarks.provenance import source_state
from benchmarks.redis_floor import measure as floor_measure
from benchmarks.report import RETRY_SEED_STEP, seeds_text
from featurestore.demo.data import PEER_SHA256, canonical_sha256, ensure_demo_data

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PEER = ROOT.parent / "shared" / "peers" / "feast"
REDIS_PORT = 6379


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def redis_up() -> bool:
    out = subprocess.run(["redis-cli", "-p", str(REDIS_PORT), "ping"], capture_output=True, text=True)
    return out.stdout.strip() == "PONG"


def redis_pid(port: int, started: int | None = None) -> int | None:
    """The pid of the redis-server answering on ``port`` (``started``: the one this run
    started there), checked against /proc: its ``comm`` is redis-server and its title
    names the port (Redis sets it to ``redis-server <addr>:<port>``). None when it cannot
    be told (a Redis in another pid namespace, a proxy): bench.py must then not run, or
    it would count the wrong process as the bench's Redis (``benchmarks/peer_bench.py``)."""
    pid = started
    if pid is None:
        info = subprocess.run(
            ["redis-cli", "-p", str(port), "info", "server"], capture_output=True, text=True
        )
        found = re.search(r"^process_id:(\d+)", info.stdout, re.M)
        if not found:
            return None
        pid = int(found[1])
    return pid if is_redis_on(pid, port) else None


def is_redis_on(pid: int, port: int) -> bool:
    """Whether process ``pid`` is a redis-server whose title names ``port``."""
    try:
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
        title = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return False
    return comm == "redis-server" and re.search(rf":{port}\b", title) is not None


def _floor(path: Path, when: str, *, batches: str, duration: float, workers: int, keys: str) -> None:
    """The bare redis-py floor at each batch, c=32, with the servers' key distribution,
    appended to ``path``."""
    with open(path, "a") as fh:
        for batch in (int(b) for b in batches.split(",")):
            url = f"redis://127.0.0.1:{REDIS_PORT}/0"
            res = floor_measure(url, "demo", 1, batch, 32, duration, workers, keys)
            log(f"floor ({when}, {keys} keys) b={batch} c=32: {res['qps']} QPS, p50 {res['p50_ms']} ms")
            fh.write(json.dumps({**res, "when": when}) + "\n")


def data_check(users: Path) -> str | None:
    """What the materialized file holds against the peer's data: a line for the report, or
    None when its canonical sha256 differs (the comparison would not be of the same data)."""
    digest = canonical_sha256(pq.read_table(users))
    if digest != PEER_SHA256:
        log(f"{users}: canonical sha256 {digest} is not the peer's {PEER_SHA256}: stopping")
        return None
    return f"identical values: the canonical sha256 of the materialized `{users.name}` is the peer's, {digest[:16]}..."


def _noisy(raw: Path, seen: int) -> bool:
    """Whether an attempt bench.py wrote after the first ``seen`` lines of ``raw`` was not
    accepted (another tenant took the cores)."""
    if not raw.exists():
        return False
    return any(
        not json.loads(ln).get("accepted", True) for ln in raw.read_text().splitlines()[seen:] if ln.strip()
    )


def _lines(raw: Path) -> int:
    return len(raw.read_text().splitlines()) if raw.exists() else 0


def run_points(
    bench: list[str],
    targets: list[str],
    a: argparse.Namespace,
    seed: int,
    raw: Path,
    redis_pid: int | None = None,
) -> str:
    """bench.py once per point (batch, concurrency), every server a target, the order
    alternating between points as bench.py alternates it within a call. wrk_keys.lua seeds
    its draws from SEED: one per point, so every server gets the same keys at a point and
    no point replays another's (a server's cache would still hold them: see wrk_keys.lua).
    bench.py runs with no retries of its own (a retry would replay the keys its server
    was just sent): a point with a noisy attempt is run once more for every server, with
    SEED + RETRY_SEED_STEP. bench.py's warm-up (3 s, c=8, before each call) draws its own
    keys. ``redis_pid``: the bench's Redis, which the overlay's bench.py counts as its
    Redis (``BENCH_REDIS_PID``; without it, it refuses to run). Returns how the keys were
    seeded, for the report (``seeds_text``)."""
    env = {**os.environ, "KEYS": a.keys}
    if redis_pid is not None:
        env[REDIS_PID_ENV] = str(redis_pid)
    point, retried = 0, 0
    for batch in a.batches.split(","):
        for conc in a.concurrency.split(","):
            order = targets if point % 2 == 0 else targets[::-1]
            cmd = [*bench, "--batches", batch, "--concurrency", conc]
            for t in order:
                cmd += ["--target", t]
            for attempt in range(2):
                point_seed = seed + point + attempt * RETRY_SEED_STEP
                seen = _lines(raw)
                log(f"bench.py: batch {batch}, c={conc}, SEED {point_seed}")
                subprocess.run(cmd, check=True, env={**env, "SEED": str(point_seed)})
                if not _noisy(raw, seen):
                    break
                retried += attempt == 0
            point += 1
    return seeds_text(seed, point, retried, a.tool)


def answers_not_ok(port: int) -> dict[str, float]:
    """The server's joins by outcome other than ok (a partial answer is a 200 the load
    generators count as a success), from its /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    out: dict[str, float] = {}
    for labels, value in re.findall(r"^featurestore_requests_total\{([^}]*)\} (\S+)$", text, re.M):
        outcome = re.search(r'outcome="([^"]*)"', labels)
        if outcome and outcome[1] != "ok" and float(value):
            out[outcome[1]] = out.get(outcome[1], 0) + float(value)
    return out


def port_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def wait_http(url: str, timeout: float = 60) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer within {timeout}s")


def peer_overlay(out: Path, keys: str, peer: Path | None = None) -> Path:
    """A copy of the peer's folder made of links whose wrk script is benchmarks/wrk_keys.lua:
    the peer's bodies, uniform or Zipf keys from KEYS, and a pool of three draws per user
    (bench.py finds the script next to itself, so every server, Feast too, is sent bodies
    from it; ``run_points`` gives every server the same keys at a point). The peer's own
    pool of 4,096 bodies was, at batch 1, a hot set of ~4,000 users that a server's cache
    holds whole. The peer's loadgen.py (the latency points) keeps its 4,096 bodies: each of
    its connections holds a copy of the pool (300,000 bodies: 650 MB at 2 connections).

    Its bench.py is benchmarks/peer_bench.py, which runs the peer's (linked as
    ``bench_peer.py``) with the Redis it counts as the bench's own taken from
    ``BENCH_REDIS_PID`` (``redis_pid``), not the oldest redis-server on the machine."""
    peer = peer or PEER
    overlay = out / f"peer-overlay-{keys}"
    overlay.mkdir(parents=True, exist_ok=True)
    links = {f.name: f for f in peer.iterdir()}
    links["wrk_getfeatures.lua"] = HERE / "wrk_keys.lua"
    links[PEER_BENCH] = peer / "bench.py"
    links["bench.py"] = HERE / "peer_bench.py"
    for name, target in links.items():
        link = overlay / name
        link.unlink(missing_ok=True)
        link.symlink_to(target)
    return overlay


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--duration", type=float, default=10)
    ap.add_argument("--tool", choices=["wrk", "py", "both"], default="both")
    ap.add_argument("--batches", default="1,10,100")
    ap.add_argument("--concurrency", default="8,32,64")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--feast-workdir", default=os.environ.get("WORKDIR", "/tmp/feast-peer"))
    ap.add_argument("--skip-feast-setup", action="store_true", help="reuse an earlier setup.sh run")
    ap.add_argument("--out", type=Path, default=HERE / "out")
    ap.add_argument("--max-other", type=float, default=0.3)
    ap.add_argument(
        "--seed", type=int, default=int(time.time()) % 1_000_000,
        help="wrk's keys at point i are drawn with SEED+i (default: from the clock, one per run)",
    )  # fmt: skip
    ap.add_argument(
        "--keys", choices=["uniform", "zipf"], default="uniform",
        help="zipf: keys from a Zipf law (s=1.1) for every server, Feast too (benchmarks/wrk_keys.lua; wrk only)",
    )  # fmt: skip
    a = ap.parse_args()
    source = source_state()  # before any server loads the code
    log(f"featurestore {source}")
    if a.keys == "zipf":
        a.tool = "wrk"  # the peer's loadgen.py draws uniform keys only

    if not PEER.is_dir():
        log(f"the Feast peer is not at {PEER}: nothing to compare with")
        return 2
    for tool in ("wrk", "redis-server", "redis-cli"):
        if shutil.which(tool) is None:
            log(f"{tool} is missing (make bench installs Debian's wrk and redis-server)")
            return 2
    a.out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    raw = a.out / f"raw-{stamp}.jsonl"
    procs: list[subprocess.Popen[bytes]] = []
    own_redis: subprocess.Popen[bytes] | None = None
    feast_pid = 0
    try:
        if not redis_up():
            log(f"starting redis-server on {REDIS_PORT}")
            rdir = a.out / "redis"
            rdir.mkdir(exist_ok=True)
            own_redis = subprocess.Popen(
                ["redis-server", "--port", str(REDIS_PORT), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                 "--dir", str(rdir)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            end = time.monotonic() + 10
            while not redis_up() and time.monotonic() < end:
                time.sleep(0.1)
        # bench.py charges "the" Redis's CPU apart from other tenants'; it must be this one,
        # not the oldest redis-server on a shared machine (benchmarks/peer_bench.py).
        bench_redis = redis_pid(REDIS_PORT, own_redis.pid if own_redis is not None else None)
        if bench_redis is None:
            log(
                f"cannot tell which process is the Redis on port {REDIS_PORT} (INFO's process_id is not a "
                "redis-server naming that port here): bench.py would count another as the bench's Redis; stopping"
            )
            return 1
        log(f"the bench's Redis: pid {bench_redis} on port {REDIS_PORT}")
        env = {**os.environ, "WORKDIR": a.feast_workdir}
        # A Redis started here is empty: Feast's rows must be materialized into it again
        # (make bench runs this module twice; the first run's Redis ends with it).
        if not a.skip_feast_setup or own_redis is not None:
            log("Feast: setup.sh (venv, data, feast apply, feast materialize) ...")
            with open(a.out / "feast-setup.log", "wb") as fh:
                subprocess.run(
                    [str(PEER / "setup.sh")], env=env, stdout=fh, stderr=subprocess.STDOUT, check=True
                )

        data = a.out / "data"
        checked = data_check(ensure_demo_data(data))
        if checked is None:
            return 1
        log(f"demo data: {checked}")
        registry = a.out / f"registry-{stamp}"
        configs = {}
        for label, cache in (("on", "true"), ("off", "false")):
            cfg = a.out / f"config-cache-{label}.yaml"
            cfg.write_text(
                f"project: demo\nregistry:\n  path: {registry}\n"
                f"  definitions: {ROOT / 'featurestore' / 'demo' / 'features.yaml'}\n  definitions_base_dir: {data}\n"
                f"stores:\n  default: {{kind: redis, url: 'redis://127.0.0.1:{REDIS_PORT}/0', cache: {cache}}}\n"
                f"  analytics: {{kind: redis, url: 'redis://127.0.0.1:{REDIS_PORT}/0'}}\n"
            )
            configs[label] = cfg
        for view in ("user_profile", "user_activity"):
            log(f"featurestore: materialize {view}")
            subprocess.run(
                [sys.executable, "-m", "featurestore.cli", "materialize", "--config", str(configs["on"]),
                 "--view", view, "--source", str(data / "users.parquet"), "--quiet"],
                check=True, cwd=ROOT,
            )  # fmt: skip

        log(f"starting Feast with {a.workers} workers")
        out = subprocess.run(
            [str(PEER / "start_server.sh")], env={**env, "WORKERS": str(a.workers), "MAX_REQUESTS": "0"},
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        feast_pid = int(out.stdout.split()[-1])
        targets = [f"feast_w{a.workers}=http://127.0.0.1:6566/get-online-features@{feast_pid}"]
        for label, port in (("on", 8091), ("off", 8092)):
            if not port_free(port):  # a stale server there would answer /readyz for ours
                log(f"port {port} is taken (a server left from an earlier run?): stop it first")
                return 1
            p = subprocess.Popen(
                [sys.executable, "-m", "featurestore.cli", "serve", "--config", str(configs[label]), "--no-apply",
                 "--workers", str(a.workers), "--http-port", str(port), "--grpc-port", str(port + 42000),
                 "--log-level", "warning"],
                cwd=ROOT, stdout=open(a.out / f"serve-cache-{label}.log", "wb"), stderr=subprocess.STDOUT,  # noqa: SIM115
            )  # fmt: skip
            procs.append(p)
            wait_http(f"http://127.0.0.1:{port}/readyz")
            name = f"featurestore_w{a.workers}" + ("" if label == "on" else "_nocache")
            targets.append(f"{name}=http://127.0.0.1:{port}/v1/feature/join@{p.pid}")

        feast_python = Path(a.feast_workdir) / "venv" / "bin" / "python"
        for t in targets:
            url = t.split("=", 1)[1].split("@")[0]
            log(f"verify {url}")
            v = subprocess.run(
                [str(feast_python), str(PEER / "verify.py"), "--url", url], capture_output=True, text=True
            )
            if v.returncode != 0:
                log(v.stdout + v.stderr)
                return 1

        # The floor before and after the servers' runs: the VM's speed drifts over a run.
        floor_path = a.out / f"floor-{stamp}.jsonl"
        measure_floor = functools.partial(
            _floor, batches=a.batches, duration=a.duration, workers=a.workers, keys=a.keys
        )
        measure_floor(floor_path, "before")
        log(
            f"bench.py: {len(targets)} targets, batches {a.batches}, concurrency {a.concurrency}, {a.duration}s per run"
        )
        bench = [str(feast_python), str(peer_overlay(a.out, a.keys) / "bench.py"), "--tool", a.tool,
                 "--duration", str(a.duration), "--out", str(raw),
                 "--max-other", str(a.max_other), "--quiet-wait", "20", "--retries", "0"]  # fmt: skip
        seeds = run_points(bench, targets, a, a.seed, raw, bench_redis)

        measure_floor(floor_path, "after")
        not_ok = {}
        for label, port in (("on", 8091), ("off", 8092)):
            not_ok[label] = answers_not_ok(port)
            log(f"featurestore cache {label}: answers other than ok: {not_ok[label] or 'none'}")

        name = "feast" if a.keys == "uniform" else "feast-zipf"
        part = HERE / "results" / f"{name}.md"
        part.parent.mkdir(exist_ok=True)
        kept_raw, kept_floor = part.with_name(f"{name}-raw.jsonl"), part.with_name(f"{name}-floor.jsonl")
        shutil.copy2(raw, kept_raw)  # its time stamps the run in the report
        shutil.copy2(floor_path, kept_floor)
        report.write(
            kept_raw,
            kept_floor,
            part,
            workers=a.workers,
            duration=a.duration,
            command=" ".join(["python -m benchmarks.run", *sys.argv[1:]]),
            keys=a.keys,
            not_ok=not_ok,
            source=source,
            data_check=checked,
            seeds=seeds,
        )
        log(f"wrote {part}, {kept_raw.name}, {kept_floor.name} and {HERE / 'RESULTS.md'}")
        return 0
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
        if feast_pid:
            with contextlib.suppress(ProcessLookupError):  # it died: the error above says why
                os.kill(feast_pid, signal.SIGTERM)
        if own_redis is not None:
            own_redis.terminate()
            own_redis.wait(10)


if __name__ == "__main__":
    sys.exit(main())
