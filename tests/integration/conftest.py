"""Fixtures the lineage integration tests share."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from lineage.graph.bolt import BoltGraph
from tests.servers import ArcadeServer


@pytest.fixture
async def graph(arcade: ArcadeServer) -> AsyncIterator[BoltGraph]:
    """The session's ArcadeDB, wiped, as a started Bolt graph (closed after the test)."""
    arcade.wipe()
    g = BoltGraph(arcade.uri, arcade.USER, arcade.PASSWORD, arcade.DATABASE)
    await g.start()
    yield g
    await g.close()
