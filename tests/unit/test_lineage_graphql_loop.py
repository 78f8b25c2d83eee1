"""GraphQL over the in-process graph runs on the serving event loop: a request within the
cost budget must not hold it (review s56 #1). `changes` scanned every run kept (10,000)
per feature, `lineageEvents` every window of the feature (up to 200,000), and the lookups
of a list's items ran back to back: 1,000 `changes` held the loop 36 s."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx

from lineage.events import LineageEvent, parse_timestamp
from lineage.graph.base import DefinitionFacts, FeatureInfo
from lineage.graph.drift import DriftRecord
from lineage.graph.memory import InMemoryGraph
from lineage.graphql import LineageGraphQL
from lineage.runs import JobRunEvent

T0 = 1733000000


def iso(seconds: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


async def wide_view_with_a_week_of_runs(features: int) -> InMemoryGraph:
    """One view of ``features`` features on `warehouse.wide`, and the 10,000 runs the
    graph keeps of it (a week of a stream view's 1-minute windows)."""
    graph = InMemoryGraph()
    ids = [f"wide:f{i}" for i in range(features)]
    await graph.apply_definitions(
        DefinitionFacts(
            project="p", valid_from_ms=0, registry_version=1, views=("wide",), services=(),
            features=tuple(FeatureInfo(f, "wide", "float64", 1, (1,)) for f in ids),
            contains=tuple(("wide", f) for f in ids), uses=(), derived_from=(),
            produced_by=tuple((f, "warehouse.wide", "batch") for f in ids),
        )
    )  # fmt: skip
    t0 = 1733000000
    await graph.write_runs([
        JobRunEvent(
            job="stream:wide", run_id=f"r{i:05d}", state="COMPLETE", started_at=iso(t0 + 60 * i),
            ended_at=iso(t0 + 60 * i + 60), inputs=["kafka://clicks"], outputs=["redis://fs/p/wide"],
            view="wide", rows_read=5, rows_written=5,
        )
        for i in range(10_000)
    ])  # fmt: skip
    return graph


async def timed(graph: InMemoryGraph, query: str) -> tuple[dict[str, Any], float, float]:
    """The answer, how long it took, and the longest the event loop was held meanwhile
    (a 1 ms ticker on the same loop)."""
    gaps: list[float] = []

    async def ticker() -> None:
        last = time.perf_counter()
        while True:
            await asyncio.sleep(0.001)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    tick = asyncio.create_task(ticker())
    await asyncio.sleep(0.01)
    transport = httpx.ASGITransport(app=LineageGraphQL(graph))
    async with httpx.AsyncClient(transport=transport, base_url="http://lineage") as client:
        t0 = time.perf_counter()
        response = await client.post("/graphql", json={"query": query})
        took = time.perf_counter() - t0
    tick.cancel()
    doc: dict[str, Any] = response.json()
    return doc, took, max(gaps, default=took)


async def test_changes_of_every_feature_of_a_table_never_hold_the_event_loop() -> None:
    """200 features x 10,000 runs: 7 s of one event loop before (36 ms a feature), now an
    indexed read per feature, one feature a pass of the loop."""
    graph = await wide_view_with_a_week_of_runs(200)
    query = '{ table(name: "warehouse.wide") { features { id changes(limit: 2) { runId at } } } }'
    doc, took, stall = await timed(graph, query)
    assert doc.get("errors") is None
    features = doc["data"]["table"]["features"]
    assert len(features) == 200
    assert [c["runId"] for c in features[0]["changes"]] == ["r09999", "r09998"]
    assert stall < 0.25 and took < 2, (took, stall)


async def test_changes_since_a_time_read_only_the_runs_after_it() -> None:
    graph = await wide_view_with_a_week_of_runs(1)
    since = (1733000000 + 60 * 9_998) * 1000
    assert [c.run_id for c in await graph.changes("wide:f0", None, since, 100)] == [
        "r09999",
        "r09998",
        "r09997",
    ]
    assert [c.run_id for c in await graph.changes(None, "redis://fs/p/wide", None, 1)] == ["r09999"]
    assert [c.run_id for c in await graph.changes(None, "kafka://clicks", since + 60_000, 9)] == [
        "r09999",
        "r09998",
    ]


def window(feature: str, second: int, server: str = "fs@a") -> LineageEvent:
    return LineageEvent(
        feature_id=feature, feature_version=1, source_table="redis://fs/p/v", timestamp=iso(1733000000 + second),
        upstream_deps=[], registry_version=1, served_count=1, trace_ids=[], service=server,
    )  # fmt: skip


async def test_lineage_events_of_a_hot_feature_read_only_the_windows_they_answer() -> None:
    """30 aliases of `lineageEvents(limit: 1)` (cost 60) on a feature with 50,000 windows
    scanned them all 30 times (4.9 s at 200,000)."""
    graph = InMemoryGraph()
    for start in range(0, 50_000, 5_000):
        await graph.write_events([window("v:hot", s) for s in range(start, start + 5_000)])
    query = (
        "{ "
        + " ".join(f'a{i}: lineageEvents(featureId: "v:hot", limit: 1) {{ timestamp }}' for i in range(30))
        + " }"
    )
    doc, took, stall = await timed(graph, query)
    assert doc.get("errors") is None and doc["data"]["a29"] == [{"timestamp": iso(1733000000 + 49_999)}]
    assert took < 0.3 and stall < 0.1, (took, stall)


async def test_windows_are_kept_in_time_order_and_the_oldest_received_go_first() -> None:
    """The bound drops the windows received first; reads are by time (and server),
    whatever order the windows arrived in."""
    graph = InMemoryGraph(max_events=4)
    await graph.write_events([window("v:f", 5), window("v:f", 1, "fs@b"), window("v:f", 1), window("v:f", 3)])

    async def kept(
        since: int | None = None, until: int | None = None, limit: int = 10
    ) -> list[tuple[int, str]]:
        events = await graph.events("v:f", since, until, limit)
        return [(int(parse_timestamp(e.timestamp).timestamp()) - T0, e.service) for e in events]

    assert await kept() == [(1, "fs@a"), (1, "fs@b"), (3, "fs@a"), (5, "fs@a")]
    await graph.write_events([window("v:f", 2), window("v:f", 1)])  # one new, one redelivered
    assert await kept() == [(1, "fs@a"), (1, "fs@b"), (2, "fs@a"), (3, "fs@a")]  # 5 s: received first
    assert await kept((T0 + 1) * 1000, (T0 + 3) * 1000, 2) == [(1, "fs@b"), (2, "fs@a")]


async def test_drift_records_are_bounded_received_first_out_and_read_by_time() -> None:
    """As the windows: the bound (in all, every feature's) drops the records received
    first; reads are by time."""
    graph = InMemoryGraph(max_events=3)
    at = [5_000, 1_000, 3_000, 4_000]
    await graph.add_drift([DriftRecord("v:f", t, "ks", 0.1, 1e-5, 100, 1, "w") for t in at])
    await graph.add_drift([DriftRecord("v:f", 4_000, "ks", 0.2, 1e-6, 100, 1, "w")])  # rewritten in place
    records = await graph.drift("v:f", None, None, 10)
    assert [(r.at_ms, r.statistic) for r in records] == [(1_000, 0.1), (3_000, 0.1), (4_000, 0.2)]
    assert [r.at_ms for r in await graph.drift("v:f", 3_500, None, 10)] == [4_000]
