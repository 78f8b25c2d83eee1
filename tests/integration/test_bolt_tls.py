"""The lineage graph over Bolt with TLS (a CA of the test's own, the password from a
file), against ArcadeDB's Bolt listener taking TLS only."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from featurestore.config import load_config
from featurestore.factories import make_graph
from lineage.graph.base import GraphUnavailable
from tests.security import TlsArcadeServer, make_certs


@pytest.fixture(scope="module")
def arcade_tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsArcadeServer]:
    work = tmp_path_factory.mktemp("arcade-tls")
    server = TlsArcadeServer(work / "db", make_certs(work / "certs")).start()
    yield server
    server.stop()


def config(tmp_path: Path, server: TlsArcadeServer, ca: bool) -> Path:
    (tmp_path / "neo4j-password").write_text(server.PASSWORD + "\n")
    path = tmp_path / "config.yaml"
    path.write_text(
        f"lineage: {{graph: bolt, bolt: {{uri: '{server.uri}', user: {server.USER}, database: {server.DATABASE},\n"
        f"  password_file: {tmp_path / 'neo4j-password'}"
        + (f", ca_file: {server.certs.ca}}}}}\n" if ca else "}}\n")
    )
    return path


async def test_the_graph_writes_and_reads_over_bolt_with_tls(
    arcade_tls: TlsArcadeServer, tmp_path: Path
) -> None:
    graph = make_graph(load_config(config(tmp_path, arcade_tls, ca=True)))
    try:
        await graph.start()  # the schema statements: writes over the TLS session
        assert await graph.table_exists("no.such_table") is False
    finally:
        await graph.close()


async def test_a_plaintext_bolt_client_is_refused(arcade_tls: TlsArcadeServer, tmp_path: Path) -> None:
    graph = make_graph(load_config(config(tmp_path, arcade_tls, ca=False)))
    try:
        with pytest.raises(GraphUnavailable):
            await graph.start()
    finally:
        await graph.close()
