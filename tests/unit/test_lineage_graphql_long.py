"""Counts and versions in the lineage GraphQL API are ``Long`` (signed 64-bit), not
GraphQL's 32-bit ``Int``: past 2^31-1 the whole ``feature`` used to come back null."""

from __future__ import annotations

from typing import Any

from lineage.events import LineageEvent
from lineage.graph.memory import InMemoryGraph
from lineage.graphql import Budget, schema
from lineage.runs import JobRunEvent

BIG = 3_000_000_000  # over 2^31-1
HUGE = 2**63 - 1  # the largest the event decoder accepts


def event(ts: str, count: int, version: int = 1) -> LineageEvent:
    return LineageEvent(
        feature_id="user_profile:age", feature_version=version, source_table="redis://fs/demo/user_profile",
        timestamp=ts, upstream_deps=[], registry_version=version, served_count=count, trace_ids=[],
        service="fs@host:8080",
    )  # fmt: skip


async def run(graph: InMemoryGraph, query: str) -> tuple[Any, list[str]]:
    result = await schema.execute(query, context_value={"graph": graph, "budget": Budget()})
    return result.data, [e.message for e in result.errors or []]


async def test_a_served_count_past_32_bits_is_answered_not_an_error_that_nulls_the_feature() -> None:
    graph = InMemoryGraph()
    await graph.write_events([event(f"2026-12-01T00:00:0{i}Z", 1_000_000_000) for i in range(3)])
    data, errors = await run(graph, '{ feature(id: "user_profile:age") { id servedBy { count } } }')
    assert errors == []
    assert data == {"feature": {"id": "user_profile:age", "servedBy": [{"count": BIG}]}}


async def test_event_counts_and_versions_up_to_the_decoders_limit_are_answered() -> None:
    graph = InMemoryGraph()
    await graph.write_events([event("2026-12-01T00:00:00Z", HUGE, version=HUGE)])
    data, errors = await run(
        graph,
        '{ lineageEvents(featureId: "user_profile:age", limit: 5) { servedCount featureVersion registryVersion }'
        ' feature(id: "user_profile:age") { version versions } }',
    )
    assert errors == []
    assert data["lineageEvents"] == [{"servedCount": HUGE, "featureVersion": HUGE, "registryVersion": HUGE}]
    assert data["feature"] == {"version": HUGE, "versions": [HUGE]}


async def test_the_rows_of_a_change_past_32_bits_are_answered() -> None:
    graph = InMemoryGraph()
    await graph.write_runs(
        [
            JobRunEvent(
                job="materialize:events",
                run_id="r1",
                state="COMPLETE",
                started_at="2026-12-01T00:00:00Z",
                ended_at="2026-12-01T01:00:00Z",
                inputs=["warehouse.events"],
                outputs=["redis://fs/demo/events"],
                view="events",
                rows_read=BIG,
                rows_written=BIG,
            )
        ]
    )
    data, errors = await run(graph, '{ table(name: "warehouse.events") { changes { rows } } }')
    assert errors == []
    assert data == {"table": {"changes": [{"rows": BIG}]}}


def test_the_schema_names_the_64_bit_scalar_for_counts_and_versions() -> None:
    sdl = schema.as_str()
    assert "scalar Long" in sdl
    for field in (
        "count: Long!",
        "servedCount: Long!",
        "featureVersion: Long!",
        "rows: Long!",
        "version: Long!",
    ):
        assert field in sdl
