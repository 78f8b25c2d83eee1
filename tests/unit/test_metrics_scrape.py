"""The /metrics scrape: rendered off the event loop, and as cheap after many worker
restarts as after none (a dead worker's counters and histograms are folded into one
archive file per type, with the same totals: metrics_files.py, which writes with
prometheus_client's undocumented mmap_dict: these tests fail if it changes)."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from featurestore import metrics, metrics_files
from featurestore.metrics_files import archive_dead_worker
from tests.unit.test_api_edges import client, http_api, make_engine

# One worker's life: requests by outcome, latencies, a live gauge; `n` scales the values
# so that workers differ.
WORKER = """
import sys
from featurestore import metrics
n = int(sys.argv[1])
for outcome in ("ok", "partial", "shed"):
    metrics.requests("/v1/feature/join", "http", outcome).inc(n)
    for i in range(n):
        metrics.request_duration("/v1/feature/join", "http", outcome).observe(0.001 * i)
metrics.view_read_duration("v", "default").observe(0.002 * n)
metrics.inflight("http").inc()
metrics.flush()
"""

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def run_worker(metrics_dir: Path, n: int) -> int:
    """A real process writing its metrics into ``metrics_dir``; its pid once it exited."""
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}
    proc = subprocess.Popen([sys.executable, "-c", WORKER, str(n)], env=env)
    assert proc.wait(timeout=120) == 0
    return proc.pid


def scraped(metrics_dir: Path) -> Samples:
    """The counters' and histograms' samples a scrape of ``metrics_dir`` shows (the
    gauges here are all live ones: they leave with their process)."""
    registry = CollectorRegistry()
    MultiProcessCollector(registry, str(metrics_dir))  # type: ignore[no-untyped-call]
    text = generate_latest(registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        if family.type != "gauge"
        for s in family.samples
    }


def assert_same(got: Samples, want: Samples) -> None:
    assert got.keys() == want.keys()
    for key, value in want.items():
        assert math.isclose(got[key], value, rel_tol=1e-12), (key, got[key], value)


def db_files(metrics_dir: Path) -> list[str]:
    return sorted(f.name for f in metrics_dir.glob("*.db"))


def test_dead_workers_counters_and_histograms_fold_into_one_archive_per_type_with_the_same_totals(
    tmp_path: Path,
) -> None:
    dead = [run_worker(tmp_path, n) for n in (1, 2, 3)]
    before = scraped(tmp_path)
    assert (
        before[
            (
                "featurestore_requests_total",
                (("outcome", "ok"), ("protocol", "http"), ("route", "/v1/feature/join")),
            )
        ]
        == 6
    )

    for pid in dead:
        archive_dead_worker(pid, str(tmp_path))

    # the live gauges went with their workers (mark_process_dead); everything else adds up as before
    assert_same(
        scraped(tmp_path), {k: v for k, v in before.items() if k[0] != "featurestore_inflight_requests"}
    )
    # the live gauges went with their workers (mark_process_dead), the rest into the archive
    assert db_files(tmp_path) == ["counter_archive.db", "histogram_archive.db"]

    # a worker alive next to the archive: its values add to the dead ones'
    live = run_worker(tmp_path, 4)
    after = scraped(tmp_path)
    key = (
        "featurestore_request_duration_seconds_count",
        (("outcome", "shed"), ("protocol", "http"), ("route", "/v1/feature/join")),
    )
    assert after[key] == 1 + 2 + 3 + 4
    archive_dead_worker(live, str(tmp_path))
    assert db_files(tmp_path) == ["counter_archive.db", "histogram_archive.db"]
    assert scraped(tmp_path)[key] == 10


class ThreadRecorder:
    """A collector that notes the thread each scrape collects it on."""

    def __init__(self) -> None:
        self.threads: list[int] = []

    def collect(self) -> Iterator[GaugeMetricFamily]:
        self.threads.append(threading.get_ident())
        yield GaugeMetricFamily("featurestore_test_scrape_probe", "which thread renders the scrape", value=1)


@pytest.fixture
def recorder() -> Iterator[ThreadRecorder]:
    probe = ThreadRecorder()
    REGISTRY.register(probe)
    probe.threads.clear()  # register collects once, to learn the names
    yield probe
    REGISTRY.unregister(probe)


async def test_the_metrics_route_renders_off_the_event_loop(recorder: ThreadRecorder) -> None:
    async with client(http_api(make_engine())) as http:
        r = await http.get("/metrics")
    assert r.status_code == 200 and "featurestore_test_scrape_probe 1.0" in r.text
    assert recorder.threads and threading.get_ident() not in recorder.threads


class _CrashAt:
    """Fails (as a crash there would stop the merge) the first call of ``os.replace`` or
    ``Path.unlink`` matching ``when``; the calls after it run as usual."""

    def __init__(self, when: Callable[[str], bool]) -> None:
        self.when = when
        self.crashed = False

    def __call__(self, path: str) -> None:
        if not self.crashed and self.when(os.path.basename(path)):
            self.crashed = True
            raise OSError("simulated crash")


def test_a_merge_that_crashes_after_swapping_in_the_archive_never_counts_the_dead_worker_twice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The dead worker's file was deleted after the new archive (holding its values)
    replaced the old one: a crash between them left both, read by every scrape (a double
    count), and the next merge of the file absorbed it again."""
    first, crashing = run_worker(tmp_path, 1), run_worker(tmp_path, 2)
    archive_dead_worker(first, str(tmp_path))
    want = scraped(tmp_path)
    crash = _CrashAt(lambda name: name.startswith(f"counter_{crashing}.db"))
    unlink = Path.unlink

    def crashing_unlink(self: Path, missing_ok: bool = False) -> None:
        crash(str(self))
        unlink(self, missing_ok=missing_ok)

    monkeypatch.setattr(Path, "unlink", crashing_unlink)
    with pytest.raises(OSError, match="simulated crash"):
        archive_dead_worker(crashing, str(tmp_path))
    monkeypatch.undo()
    assert crash.crashed
    assert_same(scraped(tmp_path), want)  # the archive holds it, no scrape reads the file too

    later = run_worker(tmp_path, 4)
    want_later = scraped(tmp_path)
    archive_dead_worker(later, str(tmp_path))  # the next merge
    archive_dead_worker(crashing, str(tmp_path))  # even the crashed one's again: nothing left to add
    assert_same(scraped(tmp_path), want_later)
    assert sorted(f.name for f in tmp_path.iterdir() if f.name != "archive.lock") == [
        "counter_archive.db",
        "histogram_archive.db",
    ]


def test_a_failed_archive_swap_is_rolled_back_so_the_dead_workers_counters_stay_in_scrapes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The second rename (the new archive over the old) raising left the dead file
    renamed out of the scrape's glob: its counters vanished from every scrape (a reset)
    until another worker died and its merge finished the swap (a spike)."""
    first, failing = run_worker(tmp_path, 1), run_worker(tmp_path, 2)
    archive_dead_worker(first, str(tmp_path))
    want = scraped(tmp_path)
    crash = _CrashAt(lambda name: name == f"counter_{metrics_files.ARCHIVE_PID}{metrics_files.STAGED}")
    replace = os.replace

    def failing_replace(src: str, dst: str) -> None:
        crash(str(src))
        replace(src, dst)

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="simulated crash"):
        archive_dead_worker(failing, str(tmp_path))
    monkeypatch.undo()
    assert crash.crashed
    assert_same(scraped(tmp_path), want)  # nothing missing, nothing counted twice
    assert (tmp_path / f"counter_{failing}.db").exists()
    assert not list(tmp_path.glob("*.absorbed"))

    later = run_worker(tmp_path, 4)
    want_later = scraped(tmp_path)
    archive_dead_worker(later, str(tmp_path))  # the next merge: the rolled-back file stays counted once
    assert_same(scraped(tmp_path), want_later)


def test_a_merge_that_crashes_between_its_two_renames_is_finished_by_the_next_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The dead file is out of the scrape's glob and the new archive not yet in place
    (the swap and its rollback both failed, as a crash of the supervisor there leaves
    it): the next merge puts it in place, and the dead worker is counted once."""
    crashing = run_worker(tmp_path, 2)
    want = scraped(tmp_path)
    staged = f"counter_{metrics_files.ARCHIVE_PID}{metrics_files.STAGED}"
    absorbed = f"counter_{crashing}{metrics_files.ABSORBED}"
    crash = _CrashAt(lambda name: name == staged)
    rollback = _CrashAt(lambda name: name == absorbed)
    replace = os.replace

    def crashing_replace(src: str, dst: str) -> None:
        crash(str(src))
        if os.path.basename(dst) != absorbed:  # the rollback, not the first rename
            rollback(str(src))
        replace(src, dst)

    monkeypatch.setattr(os, "replace", crashing_replace)
    with pytest.raises(OSError, match="simulated crash"):
        archive_dead_worker(crashing, str(tmp_path))
    monkeypatch.undo()
    assert crash.crashed and rollback.crashed and not (tmp_path / f"counter_{crashing}.db").exists()

    later = run_worker(tmp_path, 4)
    archive_dead_worker(later, str(tmp_path))  # the next merge finishes the crashed one's counters
    archive_dead_worker(crashing, str(tmp_path))  # its histograms, which the crash stopped before
    key = (
        "featurestore_requests_total",
        (("outcome", "ok"), ("protocol", "http"), ("route", "/v1/feature/join")),
    )
    assert scraped(tmp_path)[key] == want[key] + 4
    assert db_files(tmp_path) == ["counter_archive.db", "histogram_archive.db"]
    assert not list(tmp_path.glob("*.absorbed")) and not list(tmp_path.glob("*.merging"))


SERVICE_WORKER = """
from featurestore import metrics
for version in ("1", "2", "3"):
    metrics.service_requests("ranker", version).inc()
    metrics.service_duration("ranker", version).observe(0.001)
metrics.flush()
"""


def test_a_scrape_of_several_workers_leaves_out_the_service_series_of_registry_versions_no_longer_served(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker's files keep every series it ever wrote; once a swap retired versions 1
    and 2, a scrape shows version 3's only, as one process's /metrics does."""
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    subprocess.run([sys.executable, "-c", SERVICE_WORKER], env=env, check=True, timeout=120)
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    monkeypatch.setattr(metrics, "_served_versions", None)

    def versions() -> set[str]:
        text = metrics.render()[0].decode()
        return {
            s.labels["registry_version"]
            for family in text_string_to_metric_families(text)
            if family.name.startswith("featurestore_service_")
            for s in family.samples
        }

    assert versions() == {"1", "2", "3"}  # before any swap: everything written
    metrics.retire_registry_versions({"3"})
    assert versions() == {"3"}
    assert scraped(tmp_path).keys() >= {
        ("featurestore_service_requests_total", (("registry_version", "1"), ("service", "ranker")))
    }


def test_a_worker_started_after_the_swaps_leaves_the_retired_versions_out_of_its_scrapes_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A restarted worker never swaps from an older version: its engine, built on version
    3, sets what is served, or its scrapes would show the dead workers' versions 1 and 2."""
    from featurestore.definitions.snapshot import new_snapshot
    from featurestore.join import JoinEngine, Limits
    from featurestore.model import make_definitions
    from featurestore.plan import ServingState
    from featurestore.sources.memory import MemorySource
    from tests.unit.test_api_edges import FAST, U

    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    subprocess.run([sys.executable, "-c", SERVICE_WORKER], env=env, check=True, timeout=120)
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    monkeypatch.setattr(metrics, "_served_versions", None)
    defs = make_definitions("p", [U], [FAST], [])
    JoinEngine({"default": MemorySource("default")}, ServingState(new_snapshot(defs, 3)), Limits())
    text = metrics.render()[0].decode()
    shown = {
        s.labels["registry_version"]
        for family in text_string_to_metric_families(text)
        if family.name.startswith("featurestore_service_")
        for s in family.samples
    }
    assert shown == {"3"}
