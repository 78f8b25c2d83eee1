"""A serving process with ``lineage.graph: bolt`` and its graph server down or hung (a
real ArcadeDB, stopped with SIGSTOP). It created the graph's schema before serving and
wrote each snapshot's definitions on the registry applier's path: a graph that was down
stopped the start (exit 2 in 3 s), one that hung held it 61 s and held each registry
change published meanwhile about 60 s (review s58 #1, #2). Serving never waits for it
now: the schema and definitions are written in the background (featurestore/graph_writer.py)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import REGISTRY

from featurestore.config import Config
from featurestore.model import (
    DType,
    Entity,
    Feature,
    FeatureRef,
    FeatureService,
    FeatureView,
    make_definitions,
)
from featurestore.registry.admin import RegistryAdmin
from featurestore.registry.file import FileRegistry
from featurestore.runtime import build_runtime
from lineage.graph.bolt import BoltGraph
from lineage.graphql import LineageGraphQL
from tests.harness import Paused
from tests.servers import ArcadeServer, TansuBroker
from tests.support import eventually, file_registry_config

USER = Entity("user_id", DType.INT64)


@pytest.fixture(scope="module")
def frozen_arcade(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ArcadeServer]:
    """An ArcadeDB of this module's own: its tests stop the JVM (the session's is shared)."""
    server = ArcadeServer(tmp_path_factory.mktemp("arcade-server-frozen")).start()
    try:
        yield server
    finally:
        server.stop()


def defs(version: int) -> Any:
    """Version n has features f1..fn: f<n> tells which one the graph holds."""
    view = FeatureView("v", (USER,), tuple(Feature(f"f{i}", DType.FLOAT64) for i in range(1, version + 1)))
    return make_definitions("p", [USER], [view], [FeatureService("svc", (FeatureRef("v", "f1"),))])


def bolt_config(tmp_path: Path, kafka: TansuBroker, uri: str) -> Config:
    arcade = ArcadeServer
    return file_registry_config(
        tmp_path,
        {
            ("lineage", "graph"): "bolt",
            ("lineage", "sink"): "kafka",
            ("lineage", "kafka", "bootstrap_servers"): kafka.bootstrap,
            ("lineage", "bolt", "uri"): uri,
            ("lineage", "bolt", "user"): arcade.USER,
            ("lineage", "bolt", "password"): arcade.PASSWORD,
            ("lineage", "bolt", "database"): arcade.DATABASE,
        },
    )


def server_graph_up() -> float | None:
    return REGISTRY.get_sample_value("featurestore_lineage_graph_up", {"client": "server"})


async def graphql(graph: Any, query: str) -> dict[str, Any]:
    transport = httpx.ASGITransport(app=LineageGraphQL(graph))
    async with httpx.AsyncClient(transport=transport, base_url="http://server") as client:
        answer = await client.post("/graphql", json={"query": query})
    doc: dict[str, Any] = answer.json()
    return doc


async def test_a_server_starts_while_its_lineage_graph_is_down_and_its_graphql_says_the_graph_is_unavailable(
    kafka: TansuBroker, tmp_path: Path
) -> None:
    await RegistryAdmin(FileRegistry(tmp_path / "reg", "p")).apply(defs(1))
    rt = await build_runtime(bolt_config(tmp_path, kafka, "bolt://127.0.0.1:1"))
    try:
        assert rt.engine.state.version == 1
        assert rt.readiness().details["status"] == "ok"
        assert server_graph_up() == 0
        doc = await graphql(rt.lineage.graph if rt.lineage else None, '{ feature(id: "v:f1") { id } }')
        assert doc["data"] is None or doc["data"]["feature"] is None
        [error] = doc["errors"]  # (the driver's text stays in the log: graphql_errors.py)
        assert error["message"] == "lineage graph unavailable", doc
        assert error["extensions"]["code"] == "UNAVAILABLE", doc
    finally:
        await rt.close()


async def test_a_server_started_while_its_graph_hangs_serves_and_writes_the_schema_and_definitions_once_it_answers(
    kafka: TansuBroker, frozen_arcade: ArcadeServer, tmp_path: Path
) -> None:
    frozen_arcade.wipe()
    await RegistryAdmin(FileRegistry(tmp_path / "reg", "p")).apply(defs(1))
    config = bolt_config(tmp_path, kafka, frozen_arcade.uri)
    with Paused(frozen_arcade) as frozen:
        rt = await build_runtime(config)  # waited 60 s for the schema, then exit 2
        try:
            assert rt.engine.state.version == 1 and server_graph_up() == 0
            frozen.thaw()
            writer = rt.lineage.writer if rt.lineage else None
            assert writer is not None
            await eventually(
                lambda: writer.written_version == 1, 90, "version 1 written once the graph answers"
            )
            assert writer.schema_created and server_graph_up() == 1
        finally:
            await rt.close()
    graph = BoltGraph(frozen_arcade.uri, frozen_arcade.USER, frozen_arcade.PASSWORD, frozen_arcade.DATABASE)
    try:
        assert (await graph.feature("v:f1")) is not None
    finally:
        await graph.close()


async def test_registry_changes_published_while_the_graph_hangs_are_served_at_once_and_the_newest_written_later(
    kafka: TansuBroker, frozen_arcade: ArcadeServer, tmp_path: Path
) -> None:
    frozen_arcade.wipe()
    admin = RegistryAdmin(FileRegistry(tmp_path / "reg", "p"))
    await admin.apply(defs(1))
    rt = await build_runtime(bolt_config(tmp_path, kafka, frozen_arcade.uri))
    graph = BoltGraph(frozen_arcade.uri, frozen_arcade.USER, frozen_arcade.PASSWORD, frozen_arcade.DATABASE)

    def holds(feature: str) -> Callable[[], Awaitable[bool]]:
        async def check() -> bool:
            return await graph.feature(feature) is not None

        return check

    try:
        await eventually(holds("v:f1"), 60, "version 1 written")
        with Paused(frozen_arcade):
            await admin.apply(defs(2))  # its definitions write hangs with the graph
            await eventually(lambda: rt.engine.state.version == 2, 20, "version 2 served")
            # a rollback, a canary step: it waited for version 2's write (the driver's 60 s)
            await admin.apply(defs(3))
            await eventually(
                lambda: rt.engine.state.version == 3, 20, "version 3 served while the graph hangs"
            )
            details = rt.readiness().details
            assert (details["status"], details["registry_version"]) == ("ok", 3)
        await eventually(holds("v:f3"), 120, "the newest version written once the graph answers")
    finally:
        await rt.close()
        await graph.close()


async def test_the_servers_graph_up_drops_while_graphql_finds_the_graph_hung_and_returns_once_it_answers(
    kafka: TansuBroker, frozen_arcade: ArcadeServer, tmp_path: Path
) -> None:
    """It said 1 from the last definitions write while every read answered UNAVAILABLE
    (review s58 round 2b #3); back at 1 by the writer's probe, with no read asking."""
    frozen_arcade.wipe()
    await RegistryAdmin(FileRegistry(tmp_path / "reg", "p")).apply(defs(1))
    rt = await build_runtime(bolt_config(tmp_path, kafka, frozen_arcade.uri))
    try:
        writer, graph = (rt.lineage.writer, rt.lineage.graph) if rt.lineage else (None, None)
        assert writer is not None
        await eventually(lambda: writer.written_version == 1, 60, "version 1 written")
        assert server_graph_up() == 1
        with Paused(frozen_arcade):
            doc = await graphql(graph, '{ feature(id: "v:f1") { id } }')
            assert doc["errors"][0]["extensions"]["code"] == "UNAVAILABLE", doc
            assert server_graph_up() == 0
        await eventually(lambda: server_graph_up() == 1, 90, "graph_up 1 once the graph answers")
        doc = await graphql(graph, '{ feature(id: "v:f1") { id } }')
        assert doc == {"data": {"feature": {"id": "v:f1"}}}, doc
    finally:
        await rt.close()
