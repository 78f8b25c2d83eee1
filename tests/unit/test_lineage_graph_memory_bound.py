"""The in-process graph keeps at most ``max_events`` lineage windows (docs/lineage.md: "The
in-process graph is bounded"), whatever the number of features and however long it serves.
Review s56 r2 #1: an evicted window stayed in its feature's timeline until 1,024 had gone
from it (and half of it was gone); 5,000 features served every second held 2.9 GB where
the bound is 200,000 windows (142 MB), and a feature no longer served kept its last ones
for good."""

from __future__ import annotations

import gc
import time

from lineage.events import LineageEvent
from lineage.graph.drift import DriftRecord
from lineage.graph.memory import InMemoryGraph
from lineage.graph.memory_index import Timeline


def window(feature: int, second: int) -> LineageEvent:
    return LineageEvent(
        feature_id=f"v:f{feature}", feature_version=1, source_table="redis://fs/p/v",
        timestamp=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(1_700_000_000 + second)),
        upstream_deps=["warehouse.t"], registry_version=1, served_count=3, trace_ids=[], service="fs@a",
    )  # fmt: skip


def held(graph: InMemoryGraph) -> tuple[int, int, int]:
    """(windows live, list slots held, window objects the timelines still reference)."""
    timelines: list[Timeline[LineageEvent]] = list(graph._events.values())
    referenced = sum(
        1 for t in timelines for row in t._rows if row is not None and isinstance(row[2], LineageEvent)
    )
    return sum(len(t) for t in timelines), sum(len(t._rows) for t in timelines), referenced


async def test_many_features_served_every_window_keep_max_events_windows_and_no_more() -> None:
    max_events, features = 2_000, 400
    graph = InMemoryGraph(max_events=max_events)
    for second in range(300):  # 120,000 windows: 118,000 evicted, 295 from each feature
        await graph.write_events([window(f, second) for f in range(features)])
    live, slots, referenced = held(graph)
    assert live == max_events
    assert referenced == max_events  # an evicted window is freed at once
    assert slots <= 2 * max_events  # plus at most one cleared slot per live one (8 bytes each)
    gc.collect()
    alive = sum(
        1 for o in gc.get_objects() if type(o) is LineageEvent
    )  # (isinstance on a dead weakproxy raises)
    assert alive <= max_events + 10


async def test_a_feature_no_longer_served_keeps_nothing_once_its_windows_are_evicted() -> None:
    graph = InMemoryGraph(max_events=1_000)
    for second in range(1_000):
        await graph.write_events([window(0, second)])  # f0, then its view is removed
    for second in range(20_000):
        await graph.write_events([window(1, second)])  # f1 served on
    assert "v:f0" not in graph._events
    assert await graph.events("v:f0", None, None, 10) == []
    live, slots, referenced = held(graph)
    assert (live, referenced) == (1_000, 1_000)
    assert slots <= 2_000
    assert [e.timestamp for e in await graph.events("v:f1", None, None, 2)] == [
        window(1, 19_998).timestamp,
        window(1, 19_999).timestamp,
    ]


def test_a_timeline_emptied_from_its_old_end_holds_no_slot_and_reads_the_same() -> None:
    line: Timeline[int] = Timeline()
    for i in range(5_000):
        line.add(i, "", i)
    for i in range(4_990):
        assert line.remove(i, "")
        assert line.slots <= 2 * len(line) + 1
    assert line.last(None, None, 3) == [4_997, 4_998, 4_999]
    assert line.last(4_991, 4_993, 10) == [4_991, 4_992]
    assert [row[2] for row in line.scan(None, None)] == list(range(4_990, 5_000))
    line.add(1, "", 1)  # older than every row left: goes first
    assert line.oldest() == (1, "", 1)
    for i in [1, *range(4_990, 5_000)]:
        assert line.remove(i, "")
    assert (len(line), line.slots, line.oldest()) == (0, 0, None)


def drift(feature: int, second: int, p_value: float = 0.001) -> DriftRecord:
    return DriftRecord(f"v:f{feature}", (1_700_000_000 + second) * 1000, "ks", 0.5, p_value, 500, 1, "fs@a")


async def test_drift_records_of_many_features_keep_max_events_in_all_and_a_replaced_one_counts_once() -> None:
    """Review s56 r3: drift records were bounded per feature, so 200 features drifting every
    window held 200 x max_events of them."""
    max_events, features = 2_000, 200
    graph = InMemoryGraph(max_events=max_events)
    for second in range(30):  # 6,000 records: 4,000 evicted, oldest received first
        await graph.add_drift([drift(f, second) for f in range(features)])
    await graph.add_drift([drift(0, 29, p_value=0.5)])  # the same window tested again: replaced
    assert sum(len(kept) for kept in graph._drift.values()) == max_events
    assert sum(len(t) for t in graph._drift_times.values()) == max_events
    assert len(graph._drift_order) <= 2 * max_events + 64
    assert [r.p_value for r in await graph.drift("v:f0", None, None, 20)] == [0.001] * 9 + [0.5]
    for second in range(30, 60):  # f0 no longer tested: its records go, and its entries with them
        await graph.add_drift([drift(f, second) for f in range(1, features)])
    assert "v:f0" not in graph._drift and await graph.drift("v:f0", None, None, 5) == []


def test_a_timeline_with_a_row_removed_from_its_middle_still_drops_its_cleared_slots() -> None:
    """Review s56 r3: only a removal at the old end compacted the list."""
    line: Timeline[int] = Timeline()
    for i in range(2_000):
        line.add(i, "", i)
    for i in range(999):
        line.remove(i, "")
    line.remove(1_500, "")  # a late window taken from the middle
    for i in range(1_000, 1_999):
        if i != 1_500:
            line.remove(i, "")
    assert len(line) == 2 and line.slots <= 2 * len(line) + 1
