"""An etcd that comes back behind the revision a server has seen (its data lost and the
registry applied again, or a restore from a backup): the server notices, reads the
registry again in full and follows it, instead of watching for a revision etcd may not
reach for millions of writes while it serves a snapshot etcd no longer has."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from featurestore.model import Definitions, DType, Entity, Feature, FeatureView, make_definitions
from featurestore.registry.etcd import EtcdRegistry
from tests.etcd_proxies import watch_lost
from tests.servers import EtcdServer
from tests.support import eventually, following

USER = Entity("user_id", DType.INT64)
WAIT_S = 20.0  # a generous bound, not a timing assertion


def defs(n_features: int) -> Definitions:
    view = FeatureView("v", (USER,), tuple(Feature(f"f{i}", DType.FLOAT64) for i in range(n_features)))
    return make_definitions("reset", [USER], [view], [])


@pytest.fixture
def etcd(tmp_path: Path) -> Iterator[EtcdServer]:
    """An etcd of this test's own: its data is wiped."""
    server = EtcdServer(tmp_path / "etcd").start()
    yield server
    server.stop()


async def publish_all(endpoint: str, sizes: range) -> None:
    operator = EtcdRegistry([endpoint], "reset")
    try:
        for n in sizes:
            current = await operator.current()
            await operator.publish(defs(n), expected_version=current.version if current else None)
    finally:
        await operator.close()


async def test_a_server_follows_an_etcd_wiped_between_two_publications(etcd: EtcdServer) -> None:
    await publish_all(etcd.endpoint, range(1, 11))  # versions 1-10, etcd revision ~11
    server = EtcdRegistry([etcd.endpoint], "reset", heartbeat_interval=0.2)
    async with following(server) as followed:
        await eventually(lambda: followed.yields >= 1, WAIT_S, "the watch")
        served = await server.current()
        assert served is not None and served.version == 10
        assert await server.get(1) is not None  # cached: version 1 of the old history
        resets = watch_lost("reset")

        await asyncio.to_thread(etcd.stop)
        shutil.rmtree(etcd.data_dir)  # the data is lost
        await asyncio.to_thread(etcd.start)
        await eventually(lambda: watch_lost("reset") > resets, WAIT_S, "the reset noticed")
        assert await server.current() is None  # re-read: nothing applied yet

        before = followed.yields
        await publish_all(etcd.endpoint, range(3, 4))  # the operator applies again: version 1
        await eventually(lambda: followed.yields > before, WAIT_S, "the publication after the reset")
        current = await server.current()
        assert current is not None and current.version == 1
        assert len(current.definitions.views["v"].features) == 3  # not the old version 1
        assert server.health().connected


async def test_a_server_whose_watch_outlived_a_reset_is_told_by_its_heartbeat(etcd: EtcdServer) -> None:
    """The watch's own reconnect reads etcd's head first; the heartbeat is the net for a
    watch that stayed open across it (here: the feed's revision is moved past etcd's
    head, as if etcd had lost the writes since)."""
    await publish_all(etcd.endpoint, range(1, 3))
    server = EtcdRegistry([etcd.endpoint], "reset", heartbeat_interval=0.2)
    async with following(server) as followed:
        await eventually(lambda: followed.yields >= 1, WAIT_S, "the watch")
        resets = watch_lost("reset")
        server._revision += 1000  # what an etcd restored from an older backup looks like
        await eventually(lambda: watch_lost("reset") > resets, WAIT_S, "the heartbeat to notice")
        await eventually(lambda: followed.yields >= 2, WAIT_S, "a full re-read")
        before = followed.yields
        await publish_all(etcd.endpoint, range(5, 6))
        await eventually(lambda: followed.yields > before, WAIT_S, "the next publication followed")
