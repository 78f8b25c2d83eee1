"""benchmarks.run makes the peer's bench.py count the bench's own Redis (by pid), not the
oldest redis-server on the machine (another tenant's on a shared box): the overlay's
bench.py is benchmarks/peer_bench.py, which refuses to run without that pid."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks import run

FAKE_PEER_BENCH = """
import json, os
HERE = os.path.dirname(os.path.abspath(__file__))

def find_pid(name):
    return 1  # the peer's: the oldest process of that name

def main():
    print(json.dumps({"redis": find_pid("redis-server"), "other": find_pid("wrk"), "here": HERE}))
"""


@pytest.fixture
def peer(tmp_path: Path) -> Path:
    d = tmp_path / "peer"
    d.mkdir()
    (d / "bench.py").write_text(FAKE_PEER_BENCH)
    (d / "wrk_getfeatures.lua").write_text("-- the peer's\n")
    (d / "loadgen.py").write_text("")
    return d


@pytest.fixture
def fake_redis(tmp_path: Path) -> Iterator[int]:
    """A process whose comm is redis-server and whose title names port 6379 (a shell
    named redis-server: no real Redis needed)."""
    exe = tmp_path / "bin" / "redis-server"
    exe.parent.mkdir()
    exe.symlink_to("/bin/sh")
    p = subprocess.Popen([str(exe), "-c", "sleep 30; :", "127.0.0.1:6379"])
    try:
        proc = Path(f"/proc/{p.pid}")
        end = time.monotonic() + 10
        # The child may not have exec'd yet, and an exec sets the new comm before the new
        # command line: wait for both.
        while (proc / "comm").read_text().strip() != "redis-server" or b"6379" not in (
            proc / "cmdline"
        ).read_bytes():
            assert time.monotonic() < end, "the fake redis-server did not start"
            time.sleep(0.01)
        yield p.pid
    finally:
        p.kill()
        p.wait()


def bench(overlay: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(overlay / "bench.py")],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_the_overlay_s_bench_py_counts_the_redis_it_is_given_and_keeps_the_overlay_s_files(
    tmp_path: Path, peer: Path, fake_redis: int
) -> None:
    overlay = run.peer_overlay(tmp_path / "out", "uniform", peer)
    assert (overlay / "wrk_getfeatures.lua").resolve() == run.HERE / "wrk_keys.lua"
    assert (overlay / "bench_peer.py").resolve() == peer / "bench.py"
    done = bench(overlay, {"BENCH_REDIS_PID": str(fake_redis)})
    assert done.returncode == 0, done.stderr
    said = json.loads(done.stdout)
    assert said["redis"] == fake_redis  # not the peer's pgrep -o answer
    assert said["other"] == 1  # other names still go to the peer's find_pid
    assert Path(said["here"]) == overlay  # so it runs the overlay's wrk script, not the peer's


@pytest.mark.parametrize("pid", ["", "self", "gone"])
def test_the_overlay_s_bench_py_refuses_to_run_without_a_live_redis_server_pid(
    tmp_path: Path, peer: Path, pid: str
) -> None:
    overlay = run.peer_overlay(tmp_path / "out", "uniform", peer)
    env = {"BENCH_REDIS_PID": {"": "", "self": str(os.getpid()), "gone": "999999999"}[pid]}
    done = bench(overlay, env)
    assert done.returncode != 0
    assert "BENCH_REDIS_PID" in done.stderr
    assert done.stdout == ""  # the peer's main never ran


def test_run_names_the_redis_it_started_only_when_it_is_a_redis_server_on_the_port(fake_redis: int) -> None:
    assert run.redis_pid(6379, started=fake_redis) == fake_redis
    assert run.redis_pid(6380, started=fake_redis) is None  # its title names another port
    assert run.redis_pid(6379, started=os.getpid()) is None  # not a redis-server


def test_every_bench_py_call_is_given_the_bench_s_redis(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    envs: list[dict[str, str]] = []
    monkeypatch.setattr("benchmarks.run.subprocess.run", lambda cmd, check, env: envs.append(env))
    a = argparse.Namespace(batches="1,100", concurrency="8", keys="uniform", tool="both")
    run.run_points(["bench.py"], ["f=u1@1"], a, 500, tmp_path / "raw.jsonl", redis_pid=4242)
    assert [e["BENCH_REDIS_PID"] for e in envs] == ["4242", "4242"]
