"""benchmarks.run and its report (the Feast side by side), without running a benchmark:
the report rendered from small raw files, the floor's keys, the data check, the source
tree named, the seeds each point's servers get."""

from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from benchmarks import provenance, report, run
from benchmarks.cache_admission import zipf_ids
from benchmarks.feast_targets import low_cores, targets
from benchmarks.redis_floor import draw_ids
from featurestore.demo.data import canonical_sha256, ensure_demo_data, generate

FEAST, OURS = "feast_w2", "featurestore_w2"


def row(label: str, batch: int, conc: int, qps: float, cores: float, **kw: Any) -> dict[str, Any]:
    return {
        "tool": "wrk", "label": label, "batch": batch, "concurrency": conc, "qps": qps, "requests": int(qps * 10),
        "duration_s": 10.0, "server_cores": cores, "p50_ms": 1.0, "p99_ms": 1.5, "p999_ms": 3.0,
        "accepted": True, "calib_ms": 6.59, "cpu_probe_ms": 7.98, "other_cores": 0.04, **kw,
    }  # fmt: skip


def runs() -> list[dict[str, Any]]:
    """Feast at batch 100, c=8 on one of its two workers (0.97 cores against 1.76 at c=32)."""
    out = []
    for batch, conc, feast_qps, feast_cores in ((1, 8, 1844, 1.68), (1, 32, 1869, 1.71), (100, 8, 72, 0.97)):
        out.append(row(FEAST, batch, conc, feast_qps, feast_cores))
        out.append(row(OURS, batch, conc, feast_qps * 40, 1.45))
    out += [row(FEAST, 100, 32, 125, 1.76), row(OURS, 100, 32, 2609, 1.45)]
    return out


def render(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **kw: Any) -> str:
    monkeypatch.setattr(report, "stitch", lambda *a, **k: None)
    raw = tmp_path / "feast-zipf-raw.jsonl"
    raw.write_text("".join(json.dumps(r) + "\n" for r in runs()))
    out = tmp_path / "feast-zipf.md"
    report.write(
        raw, None, out, workers=2, duration=10, command="python -m benchmarks.run", keys="zipf", **kw
    )
    return out.read_text()


def test_a_target_met_against_a_feast_run_on_under_three_quarters_of_its_usual_cores_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = render(tmp_path, monkeypatch)
    note = "[1] `feast_w2` at batch 100, c=8 (wrk) used 0.97 server cores, under 0.75x the median 1.76"
    assert "| 100 | 8 | 72 [1] | 2,880 | 40.0x |" in text
    assert "| batch 100, c=8, QPS vs Feast | >= 30x | 40.0x met only against a starved run [1] |" in text
    assert "| batch 100, c=32, QPS vs Feast | >= 30x | 20.9x MISSED |" in text
    # under the throughput table, under the targets, and under wrk's latency table (there as
    # the latency of the fewer cores it ran on, not the whole server's)
    assert text.count(note) == 3
    assert text.count("its latency is that of the fewer cores it ran on") == 1
    assert "alternating between points), 10 s per run after a warm-up" in text
    b = report.best(report.load(tmp_path / "feast-zipf-raw.jsonl"))
    assert low_cores(b, FEAST, "wrk", 100, 32) is None and low_cores(b, FEAST, "wrk", 1, 8) is None


def test_the_p99_rows_carry_the_calibration_figures_of_the_runs_behind_them() -> None:
    b = report.best([row(OURS, 1, 8, 9000, 1.4, p99_ms=2.25, calib_ms=6.1, cpu_probe_ms=7.25)])
    lines = targets(b, FEAST, [OURS], "wrk", "wrk", [])
    assert (
        "| batch 1, c=8, p99* (wrk) | <= 2 ms | 2.25 ms MISSED (calib 6.1 ms, probe 7.25 ms, other 0.04 cores) |"
        in lines
    )


def test_the_report_names_the_source_tree_taken_at_the_start_of_the_run_and_what_the_data_check_found(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = render(
        tmp_path,
        monkeypatch,
        source="commit 1234abc (clean tree at the start of the run)",
        data_check="DATA CHECKED",
    )
    assert "featurestore commit 1234abc (clean tree at the start of the run)." in text
    assert "(DATA CHECKED)" in text and "canonical sha256 checked" not in text
    assert "Raw runs (every attempt): `" in text and "feast-zipf-raw.jsonl`." in text


def test_the_source_state_names_the_commit_and_any_uncommitted_source_file_not_results(
    tmp_path: Path,
) -> None:
    def git(*args: str) -> None:
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path, check=True)

    assert provenance.source_state(tmp_path) == "source tree unknown (not a git checkout)"
    git("init", "-q")
    (tmp_path / "featurestore").mkdir()
    (tmp_path / "benchmarks" / "results").mkdir(parents=True)
    (tmp_path / "featurestore" / "a.py").write_text("x = 1\n")
    (tmp_path / "benchmarks" / "results" / "feast.md").write_text("run 1\n")
    git("add", ".")
    git("commit", "-qm", "a")
    head = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=tmp_path, capture_output=True, text=True
    )
    clean = f"commit {head.stdout.strip()} (clean tree at the start of the run)"
    assert provenance.source_state(tmp_path) == clean
    (tmp_path / "benchmarks" / "results" / "feast.md").write_text("run 2\n")  # an earlier make bench step
    assert provenance.source_state(tmp_path) == clean
    (tmp_path / "featurestore" / "a.py").write_text("x = 2\n")
    assert provenance.source_state(tmp_path).endswith(
        "plus uncommitted changes at the start of the run (featurestore/a.py)"
    )


def test_the_floor_draws_zipf_ids_as_the_wrk_bodies_map_them() -> None:
    ids = draw_ids("zipf", 20_000, 3)
    assert ids == zipf_ids(100_000, 1.1, 20_000, 3)
    top = max(set(ids), key=ids.count)
    assert top == 1 and ids.count(7920) > ids.count(15839) > 0  # ranks 1, 2, 3 -> ids 1, 7920, 15839
    uniform = draw_ids("uniform", 20_000, 3)
    assert min(uniform) >= 1 and max(uniform) <= 100_000 and max(uniform.count(i) for i in set(uniform)) < 10
    with pytest.raises(ValueError):
        draw_ids("hot", 10, 1)


def test_the_data_check_hashes_the_materialized_file_and_refuses_other_values(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    users = ensure_demo_data(tmp_path, n=500)
    monkeypatch.setattr(run, "PEER_SHA256", canonical_sha256(generate(500)))
    found = run.data_check(users)
    assert (
        found is not None
        and "the canonical sha256 of the materialized `users.parquet` is the peer's" in found
    )
    ensure_demo_data(tmp_path / "other", n=500, seed=7)
    assert run.data_check(tmp_path / "other" / users.name) is None


def test_every_server_gets_the_same_seed_at_a_point_and_each_point_a_new_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[list[str], dict[str, str]]] = []
    monkeypatch.setattr("benchmarks.run.subprocess.run", lambda cmd, check, env: calls.append((cmd, env)))
    a = argparse.Namespace(batches="1,100", concurrency="8,32", keys="zipf", tool="wrk")
    said = run.run_points(["bench.py"], ["f=u1@1", "o=u2@2"], a, 500, tmp_path / "raw.jsonl")
    assert [env["SEED"] for _, env in calls] == ["500", "501", "502", "503"]
    assert all(env["KEYS"] == "zipf" for _, env in calls)
    assert calls[0][0] == [
        "bench.py",
        "--batches",
        "1",
        "--concurrency",
        "8",
        "--target",
        "f=u1@1",
        "--target",
        "o=u2@2",
    ]
    assert calls[1][0][-4:] == ["--target", "o=u2@2", "--target", "f=u1@1"]  # order alternates
    assert "SEED 500 + the point's index (500..503" in said


def test_the_floor_measures_the_run_s_key_distribution(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """run.py's floor asks redis_floor for the run's keys, and redis_floor hands them to
    every worker process (round 1 measured a Zipf run's floor on uniform keys)."""
    from benchmarks import redis_floor, run

    asked: list[Any] = []

    def fake_measure(*args: Any) -> dict[str, Any]:
        asked.append(args)
        return {"qps": 1.0, "p50_ms": 1.0}

    monkeypatch.setattr(run, "floor_measure", fake_measure)
    run._floor(tmp_path / "floor.jsonl", "before", batches="1,100", duration=1, workers=2, keys="zipf")
    assert [a[-1] for a in asked] == ["zipf", "zipf"]

    class FakePool:
        def __init__(self, procs: int) -> None:
            pass

        def __enter__(self) -> FakePool:
            return self

        def __exit__(self, *exc: object) -> None:
            pass

        def map(self, fn: Any, args: list[tuple[Any, ...]]) -> list[dict[str, Any]]:
            asked.extend(args)
            return [{"latencies": [0.001], "requests": 1, "wall": 1.0} for _ in args]

    class Context:
        Pool = FakePool

    monkeypatch.setattr("benchmarks.redis_floor.mp.get_context", lambda method: Context())
    asked.clear()
    redis_floor.measure("redis://x", "demo", 1, 10, 32, 1.0, 2, "zipf")
    assert [a[6] for a in asked] == ["zipf", "zipf"]  # _worker's keys argument, in every process


def test_a_point_with_a_noisy_attempt_is_run_again_for_every_server_with_keys_none_was_sent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """bench.py's own retry would send a server the keys it was just sent (its cache holds
    them): run.py reruns the whole point with a fresh seed instead."""
    raw = tmp_path / "raw.jsonl"
    seeds: list[str] = []

    def bench(cmd: list[str], check: bool, env: dict[str, str]) -> None:
        seeds.append(env["SEED"])
        accepted = len(seeds) != 2  # the second call (point 1's first attempt) is noisy
        with raw.open("a") as fh:
            for target in ("f", "o"):
                fh.write(json.dumps({"label": target, "accepted": accepted or target == "f"}) + "\n")

    monkeypatch.setattr("benchmarks.run.subprocess.run", bench)
    a = argparse.Namespace(batches="1", concurrency="8,32,64", keys="uniform", tool="both")
    said = run.run_points(["bench.py"], ["f=u1@1", "o=u2@2"], a, 500, raw)
    assert seeds == ["500", "501", "1501", "502"]
    assert "(1 such points)" in said


def test_the_run_time_is_that_of_the_runs_not_of_the_raw_file(tmp_path: Path) -> None:
    raw = tmp_path / "raw.jsonl"
    raw.write_text("")  # copied or checked out today
    rows = [
        row(FEAST, 1, 8, 1.0, 1.0, started="2026-12-03T18:05:30"),
        row(OURS, 1, 8, 1.0, 1.0, started="2026-12-03T18:17:02"),
    ]
    assert report.run_span(rows, raw) == "2026-12-03 18:05-18:17 UTC"
    rows.append(row(OURS, 1, 32, 1.0, 1.0, started="2026-12-04T00:01:00"))
    assert report.run_span(rows, raw) == "2026-12-03 18:05-2026-12-04 00:01 UTC"


def test_the_cpu_target_against_a_starved_feast_run_says_so_as_the_qps_targets_do() -> None:
    """A starved run's CPU per request reads high (the same work over fewer cores' time
    slices): a ratio against it is not like for like either."""
    rows = [row(FEAST, 1, 8, 541, 0.9), row(FEAST, 1, 32, 1256, 1.61), row(FEAST, 1, 64, 1267, 1.62)]
    rows += [row(OURS, 1, c, 8000, 1.38) for c in (8, 32, 64)]
    lines = targets(report.best(rows), FEAST, [OURS], "wrk", "wrk", [])
    cpu = next(line for line in lines if "server CPU per request" in line)
    assert cpu.endswith("lower MISSED only against a starved run [1] |"), cpu
    assert any(
        line.startswith("[1] `feast_w2` at batch 1, c=8 (wrk) used 0.90 server cores") for line in lines
    )
