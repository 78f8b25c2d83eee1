"""Review s55 (bench): the derived targets table names the run that measured each figure,
and the on/off cost tables (drift, lineage) judge their target."""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import pytest

from benchmarks import derived_report
from benchmarks.derived_targets import derived_section
from benchmarks.on_off import header, table
from tests.unit.test_benchmark_report import ARGS, results


def row_of(section: list[str], target: str) -> list[str]:
    line = next(x for x in section if x.startswith(f"| {target}"))
    return [c.strip() for c in line.strip("|").split("|")]


def test_each_derived_figure_names_the_run_that_measured_it_not_the_last_invocation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    parts = tmp_path / "results"
    parts.mkdir()
    monkeypatch.setattr(sys, "argv", ["derived.py", "--skip-feast-setup"])
    derived_report.write_results(results(), ARGS, parts)
    monkeypatch.setattr(sys, "argv", ["derived.py", "--sections", "feast"])
    derived_report.write_results({"feast": results()["feast"]}, ARGS, parts)
    figures = json.loads((parts / "derived.json").read_text())
    assert "run_at" not in figures and "command" not in figures  # no stamp of the last invocation
    assert figures["runs"]["kernel_ms"]["command"] == "python -m benchmarks.derived --skip-feast-setup"
    assert figures["runs"]["feast_b100"]["command"] == "python -m benchmarks.derived --sections feast"
    section = derived_section(parts)
    assert section[-3].startswith("| target | goal | measured | | measured by |") or any(
        x.startswith("| target | goal | measured | | measured by |") for x in section
    )
    kernel = row_of(section, "kernel: 100,000 rows")
    assert kernel[-1].endswith("`python -m benchmarks.derived --skip-feast-setup`"), kernel
    join = row_of(section, "join QPS cost of the four derived features, batch 100 |")
    assert join[-1].endswith("`python -m benchmarks.derived --skip-feast-setup`"), join
    feast = row_of(section, "QPS vs Feast on-demand views")
    assert feast[-1].endswith("`python -m benchmarks.derived --sections feast`"), feast
    # the in-process cost's own run, from derived-cpu.json
    (parts / "derived-cpu.json").write_text(
        json.dumps(
            {
                "command": "python -m benchmarks.derived_cpu --requests 4000 --blocks 10",
                "run_at": "2026-12-07 08:44 UTC",
                "results": {
                    f"{p}/b{b}": {"cost_pct": 9.0} for p in ("ranker", "inputs", "stored") for b in (1, 100)
                },
            }
        )
    )
    cpu = row_of(
        derived_section(parts), "join QPS cost of the four derived features, batch 1, from server CPU"
    )
    assert cpu[-1] == "2026-12-07 08:44 UTC, `python -m benchmarks.derived_cpu --requests 4000 --blocks 10`"


def test_a_derived_json_without_runs_does_not_pass_the_last_invocation_off_as_every_figure_s(
    tmp_path: Path,
) -> None:
    old = {"run_at": "2026-12-07 09:15 UTC", "command": "python -m benchmarks.derived --sections feast"}
    old["kernel_ms"] = {"numba": 0.18, "python": 15.3, "numpy": 2.4}  # type: ignore[assignment]
    (tmp_path / "derived.json").write_text(json.dumps(old))
    kernel = row_of(derived_section(tmp_path), "kernel: 100,000 rows")
    assert kernel[-1].startswith("not recorded (derived.json last written by 2026-12-07 09:15 UTC"), kernel


def test_an_on_off_cost_is_judged_by_both_its_qps_and_its_cpu_cost_against_the_target() -> None:
    qps = {("off", 1): [7165.0], ("on", 1): [7155.0], ("off", 100): [2462.0], ("on", 100): [2357.0]}
    cpu = {("off", 1): [140.0], ("on", 1): [140.4], ("off", 100): [407.0], ("on", 100): [425.7]}
    lines = table(qps, cpu, [1, 100], 3.0)
    assert lines[:2] == header(3.0)
    assert lines[0].endswith("| target (<= 3%) |")
    assert lines[2].endswith("| met |")
    assert lines[3].endswith("| MISSED (QPS +4.3%, CPU +4.6%) |")
    cpu_only = table(
        {("off", 1): [1000.0], ("on", 1): [990.0]}, {("off", 1): [100.0], ("on", 1): [104.0]}, [1], 3.0
    )
    assert cpu_only[2].endswith("| MISSED (CPU +4.0%) |")  # QPS within the target, CPU not
    assert "target" not in table(qps, cpu, [1])[0]  # without a target: no verdict column


def test_a_p99_9_of_fewer_than_1000_requests_is_printed_as_their_maximum_with_their_count() -> None:
    from benchmarks.report import tail

    few = {"requests": 591, "p99_ms": 231.07, "p999_ms": 259.103, "max_ms": 259.103}
    assert tail(few, "p999_ms", 1000, "") == "259.10 max (n=591)"
    assert tail(few, "p99_ms", 100, "") == "231.07"
    enough = {"requests": 1015, "p999_ms": 584.231, "max_ms": 599.813}
    assert tail(enough, "p999_ms", 1000, "*") == "584.23*"


def test_the_keys_line_names_loadgen_only_for_a_run_that_used_it() -> None:
    from benchmarks.report import seeds_text

    assert "loadgen.py" not in seeds_text(562824, 4, 0, "wrk")  # a Zipf run: wrk only
    assert "loadgen.py (latency tables) sends its own fixed 4,096 bodies" in seeds_text(633588, 9, 0, "both")
    assert "SEED 562824 + the point's index (562824..562827," in seeds_text(562824, 4, 0, "wrk")


def test_rerendering_a_committed_part_changes_nothing_but_the_rendering(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """report.rerender keeps the run's own facts (machine, seeds, data check, answers):
    rendering the committed Zipf part again gives it back unchanged."""
    from benchmarks import report

    part = tmp_path / "feast-zipf.md"
    committed = (report.RESULTS.parent / "results" / "feast-zipf.md").read_text()
    part.write_text(committed)
    monkeypatch.setattr(report, "stitch", lambda *a, **k: None)
    report.rerender(part)
    assert part.read_text() == committed


def test_a_transports_section_records_its_run_and_an_a_b_s_own_title(monkeypatch: pytest.MonkeyPatch) -> None:
    """transports.render names the run's time and source tree (grpc.md's were written by
    hand), and the command it prints keeps a --title quoted, so it can be run again."""
    import argparse

    from benchmarks import transports

    title = "Auto-pipelining A/B: HTTP Join at concurrency 8"
    monkeypatch.setattr(sys, "argv", ["transports.py", "--concurrency", "8", "--title", title])
    a = argparse.Namespace(
        title=title, workers=2, concurrency=8, duration=6.0, rounds=3, procs=2, batches=[1],
        started="2026-12-07 01:54 UTC on commit d8f3750 (clean tree at the start of the run)",
    )  # fmt: skip
    runs = [
        {"server": "featurestore", "transport": "http", "batch": 1, "qps": 1000.0, "p50_ms": 1.0,
         "p99_ms": 2.0, "cpu_us": 100.0, "client_cores": 0.3},
    ]  # fmt: skip
    lines = transports.render(runs, a, ["featurestore"], ["http"])
    assert lines[0] == f"## {title}"
    assert f"--title '{title}'" in lines[2]
    run = next(x for x in lines if x.startswith("* Run: "))
    assert run.startswith(
        "* Run: 2026-12-07 01:54 UTC on commit d8f3750 (clean tree at the start of the run); ended "
    )


def test_hand_kept_notes_follow_their_section_under_a_line_saying_no_command_wrote_them(
    tmp_path: Path,
) -> None:
    from benchmarks.report import stitch

    parts = tmp_path / "results"
    parts.mkdir()
    (parts / "grpc.md").write_text("## gRPC and HTTP Join\n\n| table |\n")
    (parts / "grpc.notes.md").write_text("Reading it: by hand.\n")
    (parts / "scaling.md").write_text("## Scaling\n")
    stitch(tmp_path / "RESULTS.md")
    text = (tmp_path / "RESULTS.md").read_text()
    label = "*Notes kept by hand on the section above (`benchmarks/results/grpc.notes.md`), not written by its command:*"
    assert (
        text.index("| table |")
        < text.index(label)
        < text.index("Reading it: by hand.")
        < text.index("## Scaling")
    )
    assert text.count("Notes kept by hand on the section above") == 1  # none for a part without notes
    assert (
        "`benchmarks/results/experiments.md`" in text.split("##")[0]
    )  # the header names the hand-kept parts


def test_every_committed_section_is_stitched_into_results_md_unchanged() -> None:
    """RESULTS.md is what `python -m benchmarks.report --stitch` makes of benchmarks/results/."""
    from benchmarks import report

    committed = report.RESULTS.read_text()
    with tempfile.TemporaryDirectory() as tmp:  # stitched into a scratch copy, not over the committed file
        (Path(tmp) / "results").symlink_to(report.RESULTS.parent / "results")
        report.stitch(Path(tmp) / "RESULTS.md")
        assert (Path(tmp) / "RESULTS.md").read_text() == committed
