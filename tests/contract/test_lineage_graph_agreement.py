"""The LineageGraph contract, continued: writes where the in-process graph and the Bolt
adapter (against a real ArcadeDB Bolt server) once answered differently (review s56
#3, #5, #6). The fixtures and builders are test_lineage_graph.py's."""

from __future__ import annotations

from lineage.graph.base import DefinitionFacts, FeatureInfo, LineageGraph, definition_facts
from lineage.runs import DataVersion, JobRunEvent
from tests.contract import test_lineage_graph as contract
from tests.contract.test_lineage_graph import DERIVED, RAW, SCORE, around, event, run, snap

graph = contract.graph  # the fixture: the in-process graph and Bolt (ArcadeDB)


async def test_a_start_after_its_complete_in_one_batch_changes_nothing(graph: LineageGraph) -> None:
    """A sink's resend after a lost topic can put a run's COMPLETE and then its START side by
    side in one consumer batch: Bolt evaluated both rows against the run as it was before
    the batch, and the START overwrote the end (state, times, rows, data version)."""
    await graph.apply_definitions(definition_facts(snap(1, "2024-01-01T00:00:00Z", RAW, DERIVED, SCORE)))
    complete = run("r1", "COMPLETE", "2024-01-01T00:01:00Z", "2024-01-01T00:02:00Z", 1, 40)
    start = run("r1", "START", "2024-01-01T00:01:00Z")
    await graph.write_runs([complete, start])
    await graph.write_runs([start, run("r2", "START", "2024-01-02T00:01:00Z"), start])
    changes = await graph.changes("score:rank", None, None, 10)
    assert [(c.run_id, c.kind, c.data_version, c.rows, c.at_ms) for c in changes] == [
        ("r2", "run_started", "", 0, 1704153660000),
        ("r1", "data_version", "raw@1", 40, 1704067320000),
    ]
    [node] = await graph.nodes(["run:r1"])
    assert node.attributes["state"] == "COMPLETE"
    assert node.attributes["endedAt"] == "2024-01-01T00:02:00Z"
    assert node.attributes["dataVersion"] == "raw@1"
    # in order, in one batch: the end is kept as before
    await graph.write_runs([run("r3", "START", "2024-01-03T00:01:00Z"), run("r3", "FAIL", "2024-01-03T00:01:00Z", "2024-01-03T00:03:00Z")])  # fmt: skip
    [r3] = await graph.nodes(["run:r3"])
    assert r3.attributes["state"] == "FAIL"


async def test_search_ranks_exact_and_prefix_matches_before_cutting_to_the_limit(
    graph: LineageGraph,
) -> None:
    """More names contain the text than the limit: Bolt cut each label's matches to the
    limit before ranking them and lost the prefix match `age:years`."""
    features = [f"v:user_age_{i:02d}" for i in range(40)] + ["age:years"]
    await graph.apply_definitions(
        DefinitionFacts(
            project="s", valid_from_ms=1, registry_version=1, views=("v", "age"), services=(),
            features=tuple(FeatureInfo(f, f.partition(":")[0], "int64", 1, (1,)) for f in features),
            contains=tuple((f.partition(":")[0], f) for f in features), uses=(), derived_from=(),
        )
    )  # fmt: skip
    assert [n.id for n in await graph.search("age", 4)] == [
        "view:age", "feature:age:years", "feature:v:user_age_00", "feature:v:user_age_01",
    ]  # fmt: skip
    assert [n.id for n in await graph.search("AGE:YEARS", 1)] == ["feature:age:years"]


async def test_a_servers_first_window_is_its_earliest_whatever_order_its_windows_arrive_in(
    graph: LineageGraph,
) -> None:
    """A resend after a lost topic delivers an older window after a newer one: Bolt kept
    the first window written as the edge's start, so `graph(asOf)` between the two windows
    drew no server there and drew it in memory."""
    await graph.apply_definitions(definition_facts(snap(1, "2024-01-01T00:00:00Z", RAW, DERIVED, SCORE)))
    await graph.write_events([event("raw:clicks", "2024-01-01T00:00:10Z", 1)])
    await graph.write_events([event("raw:clicks", "2024-01-01T00:00:05Z", 1)])
    at_7s = 1704067207000
    assert "server:fs@a" in await around(graph, "raw:clicks", "DOWNSTREAM", 1, at_7s)
    assert "server:fs@a" not in await around(graph, "raw:clicks", "DOWNSTREAM", 1, at_7s - 3000)


async def test_a_view_known_only_from_a_runs_data_version_is_a_node_on_both_graphs(
    graph: LineageGraph,
) -> None:
    """A run may publish a data version of a view no applied definitions name (yet): Bolt
    MERGEs the view node (an OF edge needs it), and the in-process graph did not count it."""
    dv = DataVersion(view="raw", version=1, rows=3, published_at="2024-01-01T00:02:00Z", fingerprint="f")
    await graph.write_runs([
        JobRunEvent(
            job="materialize:raw", run_id="r1", state="COMPLETE", started_at="2024-01-01T00:01:00Z",
            ended_at="2024-01-01T00:02:00Z", inputs=["warehouse.events"], outputs=[], view="raw",
            rows_read=3, rows_written=3, data_version=dv,
        )
    ])  # fmt: skip
    assert [n.id for n in await graph.nodes(["view:raw"])] == ["view:raw"]
    assert [n.id for n in await graph.search("raw", 10)] == ["view:raw"]
    assert await around(graph, "raw", "UPSTREAM", 3) == {
        "view:raw", "data_version:raw@1", "run:r1", "table:warehouse.events",
    }  # fmt: skip


async def test_one_window_is_one_event_however_its_timestamp_is_spelled(graph: LineageGraph) -> None:
    """Event identity keyed the timestamp's text: the same window sent as `Z`, `+00:00`,
    `.000Z` and the basic form (all accepted) was four events, its values counted four
    times (review s58 #7)."""
    spellings = ["2024-01-01T00:00:07Z", "2024-01-01T00:00:07+00:00", "2024-01-01T00:00:07.000Z"]
    await graph.write_events([event("raw:clicks", ts, 10) for ts in spellings])  # one batch
    await graph.write_events([event("raw:clicks", "20240101T000007Z", 10)])  # a later one
    await graph.write_events([event("raw:clicks", "2024-01-01T00:00:07.001Z", 1)])  # another window
    assert [(s.server, s.count) for s in await graph.served_by("raw:clicks")] == [("fs@a", 11)]
    events = await graph.events("raw:clicks", None, None, 100)
    assert [(e.timestamp, e.served_count) for e in events] == [
        ("2024-01-01T00:00:07Z", 10), ("2024-01-01T00:00:07.001Z", 1),
    ]  # fmt: skip


async def test_a_features_own_name_is_an_exact_match_ranked_first(graph: LineageGraph) -> None:
    """Search ranked a feature by its id `view:feature` only, so typing a feature's name was
    never exact: `age` listed `user_derived:engagement_score` first (review s58 #9). More
    ids contain the text than the limit, so Bolt must rank by the name before its LIMIT."""
    features = [f"user_derived:engagement_{i:02d}" for i in range(30)] + ["user_profile:age"]
    features += ["user_profile:age_bucket", "ages:count"]
    await graph.apply_definitions(
        DefinitionFacts(
            project="s", valid_from_ms=1, registry_version=1, views=(), services=(),
            features=tuple(FeatureInfo(f, f.partition(":")[0], "int64", 1, (1,)) for f in features),
            contains=(), uses=(), derived_from=(),
        )
    )  # fmt: skip
    assert [n.id for n in await graph.search("age", 4)] == [
        "feature:user_profile:age", "feature:ages:count", "feature:user_profile:age_bucket",
        "feature:user_derived:engagement_00",
    ]  # fmt: skip
    assert [n.id for n in await graph.search("AGE", 1)] == ["feature:user_profile:age"]
    assert [n.id for n in await graph.search("user_profile:age", 1)] == ["feature:user_profile:age"]
