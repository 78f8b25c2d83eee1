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
    assert text.count(note) == 2  # under the throughput table and under the targets
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


def test_the_source_state_names_the_commit_and_any_uncommitted_file(tmp_path: Path) -> None:
    def git(*args: str) -> None:
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path, check=True)

    git("init", "-q")
    (tmp_path / "a.py").write_text("x = 1\n")
    git("add", "a.py")
    git("commit", "-qm", "a")
    head = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=tmp_path, capture_output=True, text=True
    )
    assert (
        provenance.source_state(tmp_path)
        == f"commit {head.stdout.strip()} (clean tree at the start of the run)"
    )
    (tmp_path / "a.py").write_text("x = 2\n")
    assert provenance.source_state(tmp_path).endswith(
        "plus uncommitted changes at the start of the run (a.py)"
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
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[tuple[list[str], dict[str, str]]] = []
    monkeypatch.setattr("benchmarks.run.subprocess.run", lambda cmd, check, env: calls.append((cmd, env)))
    a = argparse.Namespace(batches="1,100", concurrency="8,32", keys="zipf")
    said = run.run_points(["bench.py"], ["f=u1@1", "o=u2@2"], a, 500)
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
