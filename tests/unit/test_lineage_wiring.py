"""Lineage configurations that would lose every event or serve a graph no event reaches
are refused with one line naming the setting."""

from __future__ import annotations

from pathlib import Path

import pytest

from featurestore.cli import main
from featurestore.config import load_config
from featurestore.errors import InvalidArgument
from featurestore.factories import build_lineage


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def test_lineage_consume_with_the_in_process_graph_is_refused_naming_the_setting(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """It wrote into a graph private to the consumer, read by nothing, and committed: every
    event was lost while the consumer looked healthy."""
    config = write(tmp_path, "lineage:\n  sink: kafka\n  kafka: {bootstrap_servers: '127.0.0.1:1'}\n")
    assert main(["lineage", "consume", "--config", str(config), "--metrics-port", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "error: INVALID_ARGUMENT: featurestore lineage consume writes the shared lineage graph: "
        "set lineage.graph to bolt (with lineage.bolt), not 'memory'"
    ]


async def test_a_kafka_sink_beside_an_in_process_graph_served_over_graphql_is_refused(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "lineage: {sink: kafka}\n"))
    with pytest.raises(InvalidArgument, match=r"set lineage\.graph to bolt .* or lineage\.graphql to false"):
        await build_lineage(config, {})


async def test_a_kafka_sink_without_graphql_still_needs_no_graph(tmp_path: Path) -> None:
    config = load_config(
        write(tmp_path, "lineage: {sink: kafka, graphql: false, kafka: {bootstrap_servers: '127.0.0.1:1'}}\n")
    )
    lineage = await build_lineage(config, {})
    assert lineage is not None and lineage.graph is None
    lineage.emitter.sink.close_seconds = 0.1  # type: ignore[attr-defined]  # nothing to deliver
    await lineage.close()
