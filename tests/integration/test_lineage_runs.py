"""`featurestore materialize` records its runs in a Bolt graph (ArcadeDB), and GraphQL
answers what changed upstream of a feature since a time."""

from __future__ import annotations

import asyncio
from pathlib import Path

from lineage.graph.bolt import BoltGraph
from tests.integration.test_materialize_incremental import cli_repo, materialize, part
from tests.servers import ArcadeServer, RedisServer


def test_materialize_writes_its_runs_and_data_versions_into_the_bolt_graph(
    redis_server: RedisServer, arcade: ArcadeServer, tmp_path: Path
) -> None:
    arcade.wipe()
    defs, config = cli_repo(tmp_path, redis_server.url)
    config.write_text(
        config.read_text() + f"lineage: {{graph: bolt, bolt: {{uri: '{arcade.uri}', user: {arcade.USER}, "
        f"password: {arcade.PASSWORD}, database: {arcade.DATABASE}}}}}\n"
    )
    assert materialize(config, defs, "--view", "scores").returncode == 0
    part(tmp_path / "scores" / "p2.parquet", {7: (700, 1_000)})
    assert materialize(config, defs, "--view", "scores").returncode == 0
    assert materialize(config, defs, "--view", "scores", "--incremental").returncode == 0

    async def check() -> None:
        graph = BoltGraph(arcade.uri, arcade.USER, arcade.PASSWORD, arcade.DATABASE)
        try:
            changes = await graph.changes(None, f"file://{tmp_path / 'scores'}", None, 10)
            assert [(c.kind, c.data_version, c.job) for c in changes] == [
                ("run_complete", "", "materialize:scores"),  # incremental: into the current version
                ("data_version", "scores@2", "materialize:scores"),
                ("data_version", "scores@1", "materialize:scores"),
            ]
            assert [c.rows for c in changes][1:] == [200, 200]
            [dv] = await graph.nodes(["data_version:scores@2"])
            assert dv.attributes["rows"] == 200 and dv.attributes["fingerprint"].startswith("sha256:")
            [first] = await graph.nodes(["data_version:scores@1"])
            assert first.attributes["fingerprint"] != dv.attributes["fingerprint"]  # a new file since
        finally:
            await graph.close()

    asyncio.run(check())


def test_materialize_loads_its_view_while_the_bolt_graph_is_down_and_says_its_runs_went_unrecorded(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """It created the graph's schema before the job and failed with exit 2, loading
    nothing, against "Recording never fails the job" (review s58 #3)."""
    defs, config = cli_repo(tmp_path, redis_server.url)
    config.write_text(
        config.read_text() + "lineage: {graph: bolt, graphql: false, bolt: {uri: 'bolt://127.0.0.1:1', "
        "user: u, password: p}}\n"
    )
    out = materialize(config, defs, "--view", "scores")
    assert out.returncode == 0, out.stderr
    assert "scores: published data version 1 (was 0): 200 rows written" in out.stdout
    unrecorded = [line for line in out.stderr.splitlines() if "not recorded in lineage" in line]
    assert [("(START)" in line, "(COMPLETE)" in line) for line in unrecorded] == [
        (True, False),
        (False, True),
    ]
    assert all("GraphUnavailable" in line for line in unrecorded), unrecorded
