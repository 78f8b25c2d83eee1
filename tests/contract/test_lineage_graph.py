"""The LineageGraph contract: the in-process graph and the Bolt adapter (against a real
ArcadeDB Bolt server) give the same answers."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from featurestore.definitions.snapshot import RegistrySnapshot, new_snapshot
from featurestore.model import (
    BatchSource,
    DType,
    Entity,
    Feature,
    FeatureRef,
    FeatureService,
    FeatureView,
    make_definitions,
)
from lineage.events import LineageEvent
from lineage.graph.base import (
    MAX_WALK,
    MAX_WALK_STEPS,
    DefinitionFacts,
    FeatureInfo,
    GraphUnavailable,
    LineageGraph,
    definition_facts,
)
from lineage.graph.bolt import BoltGraph
from lineage.graph.memory import InMemoryGraph
from lineage.graph.topology import MAX_SERVED, RECENT, TooLarge, resolve, topology
from lineage.runs import DataVersion, JobRunEvent
from tests.servers import ArcadeServer

U = Entity("user_id", DType.INT64)
RAW = FeatureView(
    "raw",
    (U,),
    (Feature("clicks", DType.INT64), Feature("views", DType.INT64)),
    batch_source=BatchSource(table="warehouse.events"),
    upstream=("warehouse.events",),
)
DERIVED = FeatureView("derived", (U,), (Feature("ctr", DType.FLOAT64),), upstream=("raw:clicks", "raw:views"))
SCORE = FeatureView("score", (U,), (Feature("rank", DType.FLOAT64),), upstream=("derived:ctr", "ml.models"))
SVC = FeatureService("ranker", (FeatureRef("score", "rank"), FeatureRef("raw", "clicks")))


def snap(
    version: int,
    created: str,
    *views: FeatureView,
    services: tuple[FeatureService, ...] = (SVC,),
    project: str = "p",
) -> RegistrySnapshot:
    s = new_snapshot(make_definitions(project, [U], list(views), list(services)), version)
    return RegistrySnapshot(s.version, s.fingerprint, s.definitions, created, "", s.feature_versions)


def event(fid: str, ts: str, count: int, service: str = "fs@a", version: int = 1) -> LineageEvent:
    return LineageEvent(
        feature_id=fid, feature_version=version, source_table=f"redis://fs/p/{fid.split(':')[0]}",
        timestamp=ts, upstream_deps=["warehouse.events"], registry_version=1, served_count=count,
        trace_ids=["4bf92f3577b34da6a3ce929d0e0e4736"], service=service,
    )  # fmt: skip


@pytest.fixture(params=["memory", "bolt"])
async def graph(request: pytest.FixtureRequest) -> AsyncIterator[LineageGraph]:
    g: LineageGraph
    if request.param == "memory":
        g = InMemoryGraph()
    else:
        server: ArcadeServer = request.getfixturevalue("arcade")
        server.wipe()
        g = BoltGraph(server.uri, server.USER, server.PASSWORD, server.DATABASE)
    await g.start()
    yield g
    await g.close()


async def test_definitions_give_lineage_before_any_read(graph: LineageGraph) -> None:
    await graph.apply_definitions(
        definition_facts(snap(1, "2024-01-01T00:00:00.000000Z", RAW, DERIVED, SCORE))
    )
    f = await graph.feature("score:rank")
    assert f is not None and f.view == "score" and f.dtype == "float64" and f.version == 1
    assert await graph.upstream("score:rank", 1) == ["derived:ctr"]
    assert await graph.upstream("score:rank", 2) == ["derived:ctr", "raw:clicks", "raw:views"]
    assert await graph.downstream("raw:clicks", 5) == ["derived:ctr", "score:rank"]
    assert [(t.name, t.role) for t in await graph.produced_by("raw:clicks")] == [
        ("clickhouse://warehouse.events", "batch"),
        ("warehouse.events", "upstream"),
    ]
    assert await graph.services_using("raw:clicks") == ["ranker"]
    assert await graph.table_exists("warehouse.events") and not await graph.table_exists("nope.nope")
    assert await graph.table_features("warehouse.events") == ["raw:clicks", "raw:views"]
    impact = await graph.impact("warehouse.events", 5)
    assert impact.features == ("derived:ctr", "raw:clicks", "raw:views", "score:rank")
    assert impact.feature_services == ("ranker",)
    shallow = await graph.impact("warehouse.events", 1)
    assert "score:rank" not in shallow.features
    assert await graph.feature("nope:nope") is None


async def test_events_are_idempotent_and_counted(graph: LineageGraph) -> None:
    await graph.apply_definitions(
        definition_facts(snap(1, "2024-01-01T00:00:00.000000Z", RAW, DERIVED, SCORE))
    )
    batch = [event("raw:clicks", "2024-01-01T00:00:07Z", 5), event("raw:clicks", "2024-01-01T00:00:08Z", 7)]
    for _ in range(3):  # redelivery
        await graph.write_events(batch)
    await graph.write_events([event("raw:clicks", "2024-01-01T00:00:09Z", 1, service="fs@b")])
    served = await graph.served_by("raw:clicks")  # the most recently seen first
    assert [(s.server, s.count) for s in served] == [("fs@b", 1), ("fs@a", 12)]
    assert served[1].last_seen_ms == 1704067208000
    online = [t for t in await graph.produced_by("raw:clicks") if t.role == "online"]
    assert [t.name for t in online] == ["redis://fs/p/raw"]
    events = await graph.events("raw:clicks", None, None, 100)
    assert [e.timestamp for e in events] == [
        "2024-01-01T00:00:07Z",
        "2024-01-01T00:00:08Z",
        "2024-01-01T00:00:09Z",
    ]
    window = await graph.events("raw:clicks", 1704067208000, 1704067209000, 100)
    assert [e.served_count for e in window] == [7]
    assert window[0].trace_ids == ["4bf92f3577b34da6a3ce929d0e0e4736"]
    assert [e.timestamp for e in await graph.events("raw:clicks", None, None, 2)] == [
        "2024-01-01T00:00:08Z",
        "2024-01-01T00:00:09Z",
    ]


async def test_an_event_twice_in_one_batch_is_counted_once(graph: LineageGraph) -> None:
    """A sink's resend after a lost topic puts both copies side by side, in one consumer
    batch: on Bolt both rows of the UNWIND found the event's node fresh and counted it twice."""
    e0, e1, e2 = (event("raw:clicks", f"2024-01-01T00:00:0{i}Z", 10) for i in range(3))
    await graph.write_events([e0, e0])
    await graph.write_events([e0])
    await graph.write_events([e1, e2, e1])
    assert [s.count for s in await graph.served_by("raw:clicks")] == [30]
    assert len(await graph.events("raw:clicks", None, None, 100)) == 3


async def test_events_are_ordered_by_their_time_not_by_the_text_of_their_timestamp(
    graph: LineageGraph,
) -> None:
    """With half-second windows the emitter stamps "...00Z" and "...00.500Z": as text the
    second sorts first, and `limit` kept the wrong newest windows."""
    stamps = [
        "2024-01-01T00:00:00Z",
        "2024-01-01T00:00:00.500Z",
        "2024-01-01T00:00:01Z",
        "2024-01-01T00:00:01.500Z",
    ]
    await graph.write_events([event("raw:clicks", ts, 1) for ts in reversed(stamps)])
    assert [e.timestamp for e in await graph.events("raw:clicks", None, None, 100)] == stamps
    assert [e.timestamp for e in await graph.events("raw:clicks", None, None, 2)] == stamps[2:]


async def test_lineage_as_of_a_past_time(graph: LineageGraph) -> None:
    t1, t2 = "2024-01-01T00:00:00.000000Z", "2024-02-01T00:00:00.000000Z"
    await graph.apply_definitions(definition_facts(snap(1, t1, RAW, DERIVED, SCORE)))
    # v2: score no longer derives from derived:ctr, the ranker service drops raw:clicks
    score2 = FeatureView("score", (U,), (Feature("rank", DType.FLOAT64),), upstream=("raw:views",))
    svc2 = FeatureService("ranker", (FeatureRef("score", "rank"),))
    await graph.apply_definitions(definition_facts(snap(2, t2, RAW, DERIVED, score2, services=(svc2,))))
    jan15, now = 1705276800000, None
    assert await graph.upstream("score:rank", 1, now) == ["raw:views"]
    assert await graph.upstream("score:rank", 1, jan15) == ["derived:ctr"]
    assert await graph.services_using("raw:clicks", now) == []
    assert await graph.services_using("raw:clicks", jan15) == ["ranker"]
    assert await graph.feature("score:rank", 1600000000000) is None  # before it existed
    f = await graph.feature("score:rank")
    assert f is not None and f.versions == (1, 2) and f.version == 2


async def test_an_older_snapshot_never_rolls_the_graph_back(graph: LineageGraph) -> None:
    """Every server writes what it swaps to; one lagging behind must not undo a newer apply."""
    t1, t2 = "2024-01-01T00:00:00.000000Z", "2024-02-01T00:00:00.000000Z"
    score2 = FeatureView("score", (U,), (Feature("rank", DType.FLOAT64),), upstream=("raw:views",))
    assert await graph.apply_definitions(definition_facts(snap(2, t2, RAW, DERIVED, score2)))
    assert not await graph.apply_definitions(definition_facts(snap(1, t1, RAW, DERIVED, SCORE)))
    assert not await graph.apply_definitions(definition_facts(snap(2, t2, RAW, DERIVED, score2)))
    assert await graph.upstream("score:rank", 1) == ["raw:views"]


SCORE2 = FeatureView("score", (U,), (Feature("rank", DType.FLOAT64),), upstream=("raw:views",))
SVC2 = FeatureService("ranker", (FeatureRef("score", "rank"),))


async def test_racing_writers_leave_the_newest_definitions_whole(graph: LineageGraph) -> None:
    """A server lagging one version behind applies at the same moment as a current one.
    Whichever finishes first, the graph ends up with the newer snapshot's edges, none of
    the older one's: the version check and the writes are one transaction."""
    for k in range(4):
        older, newer = 2 * k + 1, 2 * k + 2
        old_facts = definition_facts(snap(older, f"2024-01-{older:02d}T00:00:00Z", RAW, DERIVED, SCORE))
        new_facts = definition_facts(
            snap(newer, f"2024-01-{newer:02d}T00:00:00Z", RAW, DERIVED, SCORE2, services=(SVC2,))
        )
        applied = await asyncio.gather(graph.apply_definitions(old_facts), graph.apply_definitions(new_facts))
        assert applied[1], "the newest version is always applied"
        assert await graph.upstream("score:rank", 1) == ["raw:views"], f"round {k}"
        assert await graph.downstream("derived:ctr", 1) == [], f"round {k}"
        assert await graph.services_using("raw:clicks") == [], f"round {k}"
        assert await graph.services_using("score:rank") == ["ranker"], f"round {k}"
    # and a writer that lost the race entirely changes nothing afterwards
    assert not await graph.apply_definitions(
        definition_facts(snap(7, "2024-01-07T00:00:00Z", RAW, DERIVED, SCORE))
    )
    assert await graph.upstream("score:rank", 1) == ["raw:views"]


OTHER = FeatureView("other", (U,), (Feature("n", DType.INT64),), upstream=("warehouse.other", "raw:views"))
OTHER_SVC = FeatureService("other_svc", (FeatureRef("other", "n"),))


async def test_one_projects_definitions_leave_other_projects_lineage_alone(graph: LineageGraph) -> None:
    t1, t2, t3 = "2024-01-01T00:00:00Z", "2024-02-01T00:00:00Z", "2024-03-01T00:00:00Z"
    await graph.apply_definitions(definition_facts(snap(1, t1, RAW, DERIVED, SCORE)))
    assert await graph.apply_definitions(
        definition_facts(snap(1, t2, OTHER, services=(OTHER_SVC,), project="q"))
    )
    # project p's edges stay live, now and as of any time after q's apply
    mar = 1709251200000
    for at in (None, mar):
        assert await graph.upstream("score:rank", 2, at) == ["derived:ctr", "raw:clicks", "raw:views"]
        assert await graph.services_using("raw:clicks", at) == ["ranker"]
        assert await graph.table_features("warehouse.events", at) == ["raw:clicks", "raw:views"]
        assert await graph.feature("score:rank", at) is not None
    assert await graph.downstream("raw:views", 1) == ["derived:ctr", "other:n"]
    # p's next snapshot closes what p dropped, and nothing of q's
    await graph.apply_definitions(definition_facts(snap(2, t3, RAW, DERIVED, SCORE2, services=(SVC2,))))
    assert await graph.upstream("score:rank", 1) == ["raw:views"]
    assert await graph.services_using("raw:clicks") == []
    assert await graph.upstream("other:n", 1) == ["raw:views"]
    assert await graph.services_using("other:n") == ["other_svc"]
    assert await graph.table_features("warehouse.other") == ["other:n"]
    assert await graph.feature("other:n", mar + 1) is not None


async def test_drift_records_are_idempotent_and_read_by_time_range(graph: LineageGraph) -> None:
    from lineage.graph.drift import DriftRecord

    def rec(at_ms: int, server: str = "w1", reference: int = 3) -> DriftRecord:
        return DriftRecord("raw:clicks", at_ms, "ks", 0.08, 1e-5, 1000, reference, server)

    await graph.add_drift([rec(1000), rec(2000), rec(2000, "w2"), rec(3000, reference=4)])
    await graph.add_drift([rec(1000)])  # delivered twice: still one record
    assert await graph.drift("raw:clicks", None, None, 100) == [
        rec(1000), rec(2000), rec(2000, "w2"), rec(3000, reference=4)
    ]  # fmt: skip
    assert [r.at_ms for r in await graph.drift("raw:clicks", 2000, 3000, 100)] == [2000, 2000]
    assert await graph.drift("raw:clicks", None, None, 1) == [rec(3000, reference=4)]
    assert await graph.drift("raw:views", None, None, 100) == []


def run(
    run_id: str, state: str, started: str, ended: str = "", version: int = 0, rows: int = 0
) -> JobRunEvent:
    dv = DataVersion(view="raw", version=version, rows=rows, published_at=ended, fingerprint="sha256:ab")
    return JobRunEvent(
        job="materialize:raw", run_id=run_id, state=state, started_at=started,  # type: ignore[arg-type]
        ended_at=ended, inputs=["clickhouse://warehouse.events"], outputs=["redis://fs/p/raw"], view="raw",
        rows_read=rows, rows_written=rows, data_version=dv if version else None,
    )  # fmt: skip


async def around(
    graph: LineageGraph, root: str, direction: str, depth: int, at: int | None = None
) -> set[str]:
    node = await resolve(root, graph.nodes)
    assert node is not None, root
    topo = await topology(node, direction, depth, at, graph.incident, graph.nodes, 1000)
    ids = {n.id for n in topo.nodes}
    assert {e.source for e in topo.edges} | {e.target for e in topo.edges} <= ids  # no dangling edge
    return ids


async def test_a_feature_served_by_more_servers_than_an_answer_holds_lists_and_draws_the_newest(
    graph: LineageGraph,
) -> None:
    """Server names carry the host: a fleet's rollouts add workers' names that are never
    pruned. Past 1,000 of them the feature's servedBy and its graph failed as too large.
    Windows align to the clock: servers of one rollout share their last_seen (ties)."""
    await graph.apply_definitions(definition_facts(snap(1, "2024-01-01T00:00:00.000000Z", RAW)))
    n = MAX_SERVED + 1_000  # past MAX_RESULTS too
    await graph.write_events(
        [
            event("raw:clicks", f"2024-01-01T00:{i // 10 // 60:02d}:{i // 10 % 60:02d}Z", 1, f"fs@pod{i:04d}")
            for i in range(n)
        ]
    )
    served = await graph.served_by("raw:clicks")
    newest_first = sorted(range(n), key=lambda i: (-(i // 10), f"fs@pod{i:04d}"))
    assert [s.server for s in served] == [f"fs@pod{i:04d}" for i in newest_first[:MAX_SERVED]]
    since = served[25].last_seen_ms  # a tie: 30 servers at or after it
    assert [s.server for s in await graph.served_by("raw:clicks", since, 1000)] == [
        s.server for s in served[:30]
    ]
    assert len(await graph.served_by("raw:clicks", None, 3)) == 3
    down = await around(graph, "raw:clicks", "DOWNSTREAM", 1)
    servers = {i for i in down if i.startswith("server:")}
    assert servers == {f"server:{s.server}" for s in served}  # the MAX_SERVED newest, ties alike
    assert "feature:raw:clicks" in await around(graph, f"server:{served[0].server}", "UPSTREAM", 1)


async def test_the_topology_walks_every_node_kind_up_and_down(graph: LineageGraph) -> None:
    await graph.apply_definitions(
        definition_facts(snap(1, "2024-01-01T00:00:00.000000Z", RAW, DERIVED, SCORE))
    )
    await graph.write_events([event("raw:clicks", "2024-01-01T00:00:07Z", 5)])
    await graph.write_runs([run("r1", "START", "2024-01-01T00:01:00Z")])
    await graph.write_runs([run("r1", "COMPLETE", "2024-01-01T00:01:00Z", "2024-01-01T00:02:00Z", 1, 40)])
    up = await around(graph, "score:rank", "UPSTREAM", 2)
    assert {"feature:derived:ctr", "view:score", "table:ml.models", "feature:raw:clicks"} <= up
    assert "service:ranker" not in up
    up4 = await around(graph, "feature:raw:clicks", "UPSTREAM", 4)
    # view -> its data version -> the run that published it -> the table that run read
    assert {"view:raw", "data_version:raw@1", "run:r1", "table:clickhouse://warehouse.events"} <= up4
    down = await around(graph, "table:warehouse.events", "DOWNSTREAM", 3)
    assert {"feature:raw:clicks", "feature:derived:ctr", "service:ranker", "server:fs@a"} <= down
    assert "view:raw" not in down
    both = await around(graph, "raw:clicks", "BOTH", 1)
    assert {"view:raw", "table:warehouse.events", "feature:derived:ctr", "service:ranker"} <= both
    assert await around(graph, "ranker", "UPSTREAM", 1) == {
        "service:ranker",
        "feature:score:rank",
        "feature:raw:clicks",
    }
    assert await resolve("nope:nope", graph.nodes) is None
    [f] = await graph.nodes(["feature:raw:clicks"])
    assert f.attributes["dtype"] == "int64" and f.label == "raw:clicks"
    [r] = await graph.nodes(["run:r1"])
    assert r.attributes["state"] == "COMPLETE" and r.attributes["rowsWritten"] == 40
    [d] = await graph.nodes(["data_version:raw@1"])
    assert d.attributes["rows"] == 40 and d.attributes["fingerprint"] == "sha256:ab"


async def test_the_topology_as_of_a_past_time_and_its_size_bound(graph: LineageGraph) -> None:
    t1, t2 = "2024-01-01T00:00:00.000000Z", "2024-02-01T00:00:00.000000Z"
    await graph.apply_definitions(definition_facts(snap(1, t1, RAW, DERIVED, SCORE)))
    await graph.apply_definitions(definition_facts(snap(2, t2, RAW, DERIVED, SCORE2, services=(SVC2,))))
    jan15 = 1705276800000
    assert "feature:derived:ctr" in await around(graph, "score:rank", "UPSTREAM", 1, jan15)
    assert "feature:derived:ctr" not in await around(graph, "score:rank", "UPSTREAM", 1)
    node = await resolve("score:rank", graph.nodes)
    assert node is not None
    with pytest.raises(TooLarge):
        await topology(node, "UPSTREAM", 3, None, graph.incident, graph.nodes, 2)


async def test_runs_answer_what_changed_upstream_since_a_time(graph: LineageGraph) -> None:
    await graph.apply_definitions(
        definition_facts(snap(1, "2024-01-01T00:00:00.000000Z", RAW, DERIVED, SCORE))
    )
    await graph.write_runs([run("r1", "COMPLETE", "2024-01-01T00:01:00Z", "2024-01-01T00:02:00Z", 1, 40)])
    await graph.write_runs([run("r2", "FAIL", "2024-01-02T00:01:00Z", "2024-01-02T00:02:00Z")])
    await graph.write_runs([run("r1", "START", "2024-01-01T00:01:00Z")])  # a late START changes nothing
    changes = await graph.changes("score:rank", None, None, 100)
    assert [(c.run_id, c.kind, c.data_version, c.rows) for c in changes] == [
        ("r2", "run_failed", "", 0),
        ("r1", "data_version", "raw@1", 40),
    ]
    assert changes[1].job == "materialize:raw" and changes[1].at_ms == 1704067320000
    jan2 = 1704153600000
    assert [c.run_id for c in await graph.changes("score:rank", None, jan2, 100)] == ["r2"]
    assert [c.run_id for c in await graph.changes(None, "clickhouse://warehouse.events", None, 1)] == ["r2"]
    assert await graph.changes(None, "warehouse.nothing", None, 100) == []
    assert await graph.changes("other:n", None, None, 100) == []


async def test_search_finds_features_views_tables_and_services(graph: LineageGraph) -> None:
    await graph.apply_definitions(
        definition_facts(snap(1, "2024-01-01T00:00:00.000000Z", RAW, DERIVED, SCORE))
    )
    assert [n.id for n in await graph.search("raw", 10)] == [
        "view:raw", "feature:raw:clicks", "feature:raw:views",
    ]  # fmt: skip
    # `rank` is the feature's own name: an exact match, before the prefix `ranker`
    assert [n.id for n in await graph.search("RANK", 10)] == ["feature:score:rank", "service:ranker"]
    assert [n.id for n in await graph.search("warehouse", 10)] == [
        "table:warehouse.events", "table:clickhouse://warehouse.events",
    ]  # fmt: skip


def layered(project: str, table: str, widths: list[int], fan_in: int | None = None) -> DefinitionFacts:
    """Layers of features, each derived from every feature of the layer before (or its
    first ``fan_in``); the first layer is produced by ``table``."""
    layers = [[f"l{n}:f{i}" for i in range(w)] for n, w in enumerate(widths)]
    every = [f for layer in layers for f in layer]
    return DefinitionFacts(
        project=project, valid_from_ms=1, registry_version=1,
        views=tuple(f"l{n}" for n in range(len(widths))), services=(),
        features=tuple(FeatureInfo(f, f.partition(":")[0], "float64", 1, (1,)) for f in every),
        contains=tuple((f.partition(":")[0], f) for f in every), uses=(),
        derived_from=tuple(
            (b, a) for n in range(1, len(layers)) for b in layers[n] for a in layers[n - 1][:fan_in]
        ),
        produced_by=tuple((f, table, "batch") for f in layers[0]),
    )  # fmt: skip


async def test_a_walk_that_reaches_more_features_than_an_answer_may_list_is_refused(
    graph: LineageGraph,
) -> None:
    """l0:f0 is the input of 1,000 features, one of which is the input of one more: a walk
    may answer MAX_WALK (1,000) features, never more (a GraphQL answer may not list more):
    the walk stops there instead of gathering everything and being refused afterwards."""
    await graph.apply_definitions(layered("wide", "warehouse.wide", [2, 1000, 1], fan_in=1))
    assert len(await graph.downstream("l0:f0", 1)) == MAX_WALK
    assert await graph.upstream("l2:f0", 2) == ["l0:f0", "l1:f0"]
    with pytest.raises(TooLarge, match=f"from l0:f0 reaches more than {MAX_WALK} features within 2 hops"):
        await graph.downstream("l0:f0", 2)
    with pytest.raises(TooLarge, match=r"the features of warehouse\.wide reaches more than"):
        await graph.impact("warehouse.wide", 1)  # its 2 features and the 1,000 derived ones
    assert (await graph.impact("warehouse.nothing", 5)).features == ()


async def test_a_walk_from_many_features_is_one_walk_and_its_answer_the_same(graph: LineageGraph) -> None:
    """impact walks once from all of the table's features (it walked from each in turn,
    28 s of one event loop on a 6 x 100 layered graph): same features and services."""
    await graph.apply_definitions(layered("narrow", "warehouse.narrow", [3, 3, 3, 3]))
    impact = await graph.impact("warehouse.narrow", 2)
    assert impact.features == tuple(sorted(f"l{n}:f{i}" for n in range(3) for i in range(3)))
    assert len((await graph.impact("warehouse.narrow", 5)).features) == 12


async def test_the_in_process_graph_stops_a_walk_after_max_walk_steps_edges() -> None:
    """The in-process graph walks on the serving event loop: 6 layers of 100 features,
    each derived from every feature of the layer before (50,000 edges), is refused
    after MAX_WALK_STEPS edges examined rather than walked; a shallow walk answers."""
    graph = InMemoryGraph()
    await graph.apply_definitions(layered("dense", "warehouse.dense", [100] * 6))
    with pytest.raises(TooLarge, match=f"examines more than {MAX_WALK_STEPS} edges within 5 hops"):
        await graph.downstream("l0:f0", 5)
    with pytest.raises(TooLarge, match=r"the features of warehouse\.dense examines"):
        await graph.impact("warehouse.dense", 3)
    assert len(await graph.downstream("l0:f0", 1)) == 100
    assert len((await graph.impact("warehouse.dense", 1)).features) == 200


async def test_a_walk_hands_on_only_the_newest_runs_and_data_versions_of_each_node(
    graph: LineageGraph,
) -> None:
    """Runs and data versions pile up with time; the topology keeps the RECENT newest per
    node and edge kind, and the adapters send no more than those (the Bolt adapter picks
    them in Cypher: it read every one and dropped all but three in Python)."""
    await graph.apply_definitions(
        definition_facts(snap(1, "2024-01-01T00:00:00.000000Z", RAW, DERIVED, SCORE))
    )
    runs = []
    for view in ("raw", "derived"):
        for v in range(1, 6):
            at = f"2024-01-0{v}T00:02:00Z"
            dv = DataVersion(view=view, version=v, rows=v, published_at=at, fingerprint="")
            runs.append(JobRunEvent(
                job=f"materialize:{view}", run_id=f"{view}{v}", state="COMPLETE", started_at=at, ended_at=at,
                inputs=["warehouse.events"], outputs=[], view=view, rows_read=v, rows_written=v, data_version=dv,
            ))  # fmt: skip
    await graph.write_runs(runs)
    edges = (await graph.incident(["view:raw", "view:derived"], None, True)).edges
    of = sorted((e.target, e.source) for e in edges if e.kind == "OF")
    assert of == [("view:derived", f"data_version:derived@{v}") for v in (3, 4, 5)] + [
        ("view:raw", f"data_version:raw@{v}") for v in (3, 4, 5)
    ]
    reads = [
        e.source
        for e in (await graph.incident(["table:warehouse.events"], None, False)).edges
        if e.kind == "READ"
    ]
    assert len(reads) == RECENT and {"run:raw5", "run:derived5"} <= set(reads)


async def test_a_bolt_read_that_outlives_its_timeout_is_graph_unavailable(arcade: ArcadeServer) -> None:
    """No read waits on the graph server past its timeout (sent to the server, which
    Neo4j enforces, and a deadline here, for servers that ignore it, as ArcadeDB does)."""
    arcade.wipe()
    hasty = BoltGraph(arcade.uri, arcade.USER, arcade.PASSWORD, arcade.DATABASE, read_timeout=1e-6)
    try:
        with pytest.raises(GraphUnavailable, match="graph read took longer than 1e-06 s"):
            await hasty.search("raw", 10)
    finally:
        await hasty.close()
    patient = BoltGraph(arcade.uri, arcade.USER, arcade.PASSWORD, arcade.DATABASE)
    try:
        assert await patient.search("raw", 10) == []
    finally:
        await patient.close()


def retention_statements() -> list[str]:
    """The pruning statements docs/lineage.md gives operators (its Retention section)."""
    doc = (Path(__file__).resolve().parents[2] / "docs" / "lineage.md").read_text()
    section = doc.split("## Retention", 1)[1].split("\n## ", 1)[0]
    [block] = re.findall(r"```cypher\n(.*?)```", section, re.S)
    parts = [
        " ".join(line for line in part.splitlines() if not line.startswith("//"))
        for part in block.split("\n\n")
    ]
    return [p.strip() for p in parts if p.strip()]


async def test_the_documented_retention_statements_prune_old_lineage_and_keep_the_rest(
    arcade: ArcadeServer,
) -> None:
    from neo4j import GraphDatabase

    from lineage.graph.drift import DriftRecord

    arcade.wipe()
    graph = BoltGraph(arcade.uri, arcade.USER, arcade.PASSWORD, arcade.DATABASE)
    await graph.start()
    try:
        await graph.apply_definitions(definition_facts(snap(1, "2024-01-01T00:00:00Z", RAW, DERIVED, SCORE)))
        await graph.write_events([event("raw:clicks", "2024-01-01T00:00:07Z", 5)])
        await graph.write_events([event("raw:clicks", "2026-01-01T00:00:07Z", 7)])
        await graph.write_events([event("raw:views", "2024-01-01T00:00:07Z", 3, service="fs@old")])
        await graph.write_runs([run("r1", "COMPLETE", "2024-01-01T00:01:00Z", "2024-01-01T00:02:00Z", 1, 40)])
        await graph.write_runs([run("r2", "COMPLETE", "2026-01-01T00:01:00Z", "2026-01-01T00:02:00Z", 2, 50)])
        old, new = 1704067200000, 1767225600000  # 2024-01-01, 2026-01-01
        await graph.add_drift(
            [DriftRecord("raw:clicks", t, "ks", 0.1, 1e-5, 1000, 1, "w") for t in (old, new)]
        )
        statements = retention_statements()
        assert len(statements) == 5
        cutoff = 1735689600000  # 2025-01-01
        with (
            GraphDatabase.driver(arcade.uri, auth=(arcade.USER, arcade.PASSWORD)) as driver,
            driver.session(database=arcade.DATABASE) as session,
        ):
            for statement in statements:
                for _ in range(10):  # "run each one again until it answers deleted = 0"
                    if session.run(statement, cutoff=cutoff).single()["deleted"] == 0:  # type: ignore[index]
                        break
        assert [e.served_count for e in await graph.events("raw:clicks", None, None, 100)] == [7]
        assert [r.at_ms for r in await graph.drift("raw:clicks", None, None, 100)] == [new]
        assert [c.run_id for c in await graph.changes("score:rank", None, None, 100)] == ["r2"]
        assert [n.id for n in await graph.nodes(["data_version:raw@1", "data_version:raw@2"])] == [
            "data_version:raw@2"
        ]
        assert await graph.upstream("score:rank", 2) == ["derived:ctr", "raw:clicks", "raw:views"]
        assert [(s.server, s.count) for s in await graph.served_by("raw:clicks")] == [("fs@a", 12)]
        assert await graph.served_by("raw:views") == []  # its only server was last seen in 2024
    finally:
        await graph.close()
