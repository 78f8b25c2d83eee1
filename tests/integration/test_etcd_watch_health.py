"""The etcd registry's watch against a real etcd, when it goes quiet or keeps ending: a
connection gone silent (no reset) is dropped by gRPC keepalive and the watch follows on
a new one; the watch asks etcd to end it should etcd lose its leader; a watch that ends
right after etcd confirmed it, or one etcd never answered however long it took, is
retried at a growing pause; and etcd's progress
notifications move a quiet watch past a compaction of other keys."""

from __future__ import annotations

import asyncio
import logging
import re
import uuid
from collections.abc import AsyncGenerator, Iterator
from pathlib import Path

import aetcd
import pytest

from featurestore.registry import etcd_feed
from featurestore.registry.etcd import EtcdRegistry
from tests.etcd_proxies import SilencingTcpProxy, WatchEndingProxy, settle, watch_lost
from tests.servers import EtcdServer
from tests.support import eventually

WAIT_S = 20.0  # for a change to come through: a bound on a hang, not a timing assert
KEEPALIVE_WAIT_S = 60.0  # a ping every 10 s, unanswered for 5 s: the connection is dropped


async def test_a_watch_on_a_connection_gone_silent_is_dropped_and_follows_on_a_new_connection(
    etcd_server: EtcdServer,
) -> None:
    """The TCP proxy stops passing bytes but keeps its sockets open (a peer powered off,
    a partition): without keepalive the watch waited on it until the kernel gave up
    (~15 minutes), missing every change."""
    proxy = await SilencingTcpProxy(etcd_server).start()
    project = f"p{uuid.uuid4().hex[:8]}"
    key = f"/featurestore/{project}/data/v/current".encode()
    reg = EtcdRegistry([proxy.endpoint], project)
    direct = aetcd.Client(port=etcd_server.port)
    changes: AsyncGenerator[None, None] = reg.changes()  # type: ignore[assignment]
    pending: asyncio.Future[None] | None = None
    try:
        await asyncio.wait_for(anext(changes), WAIT_S)  # armed
        pending = asyncio.ensure_future(anext(changes))
        await eventually(lambda: proxy.connections >= 1, WAIT_S, "the registry's connection")
        await direct.put(key, b"1")
        await asyncio.wait_for(pending, WAIT_S)  # watching through the proxy
        pending = asyncio.ensure_future(anext(changes))
        connections = proxy.connections
        proxy.silence()
        await direct.put(key, b"2")  # never reaches the silenced connection
        await asyncio.wait_for(pending, KEEPALIVE_WAIT_S)
        assert proxy.connections > connections
        assert (await reg.data_versions()) == {"v": 2}
    finally:
        await settle(pending, changes)
        await direct.close()
        await reg.close()
        await proxy.close()


async def test_the_watch_asks_etcd_to_end_it_when_etcd_has_no_leader(etcd_server: EtcdServer) -> None:
    """etcd ends a watch on leader loss only for a stream that sends ``hasleader: true``
    (etcd's own client does): else a member cut off from its cluster's quorum keeps the
    watch open and silent."""
    proxy = WatchEndingProxy(etcd_server)
    await proxy.server.start()
    reg = EtcdRegistry([proxy.endpoint], f"p{uuid.uuid4().hex[:8]}")
    changes: AsyncGenerator[None, None] = reg.changes()  # type: ignore[assignment]
    pending: asyncio.Future[None] | None = None
    try:
        await asyncio.wait_for(anext(changes), WAIT_S)  # armed
        pending = asyncio.ensure_future(anext(changes))
        await eventually(lambda: proxy.open_watches == 1, WAIT_S, "the watch open through the proxy")
        assert proxy.watch_metadata[-1].get("hasleader") == "true"
    finally:
        await settle(pending, changes)
        await reg.close()
        await proxy.close()


PAUSE = re.compile(r"watching again from revision \d+ in ([0-9.]+) s")


async def watch_pauses(proxy: WatchEndingProxy, caplog: pytest.LogCaptureFixture, n: int) -> list[float]:
    """The pauses before the first ``n`` re-watches of a registry watching through ``proxy``
    (from its warnings)."""
    caplog.set_level(logging.WARNING, logger="featurestore.registry.etcd")
    await proxy.server.start()
    reg = EtcdRegistry([proxy.endpoint], f"p{uuid.uuid4().hex[:8]}")
    changes: AsyncGenerator[None, None] = reg.changes()  # type: ignore[assignment]
    pending: asyncio.Future[None] | None = None

    def pauses() -> list[float]:
        return [float(m[1]) for r in caplog.records if (m := PAUSE.search(r.getMessage()))]

    try:
        await asyncio.wait_for(anext(changes), WAIT_S)  # armed
        pending = asyncio.ensure_future(anext(changes))
        await eventually(lambda: len(pauses()) >= n, WAIT_S, f"{n} watches to end")
        return pauses()
    finally:
        await settle(pending, changes)
        await reg.close()
        await proxy.close()


async def test_a_watch_that_ends_right_after_etcd_confirms_it_is_watched_again_after_a_growing_pause(
    etcd_server: EtcdServer, caplog: pytest.LogCaptureFixture
) -> None:
    """The pause (0.1 s doubling to 0.5 s, jittered down to half) started over at each
    response, etcd's confirmation included: a stream confirmed and ended at once was
    watched again every 0.05-0.1 s, with a warning each time."""
    pauses = await watch_pauses(WatchEndingProxy(etcd_server, end_at_once=True), caplog, 4)
    # 0.1, 0.2, 0.4, then 0.5 s: the fourth pause is 0.25-0.5 s
    assert pauses[3] >= 0.25, pauses


async def test_a_watch_etcd_never_answered_is_watched_again_after_a_growing_pause_however_long_it_took(
    etcd_server: EtcdServer, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pause started over once a watch had lived 5 s, counted from before its
    connect: a watch whose connect took that long and that then ended without etcd's
    confirmation counted as a healthy one, and was retried at the shortest pause every
    time. (The 5 s are cut to 0.3 s here, the connect stretched to 0.6 s.)"""
    monkeypatch.setattr(etcd_feed, "_WATCH_STEADY_S", 0.3)
    pauses = await watch_pauses(WatchEndingProxy(etcd_server, unanswered_for=0.6), caplog, 3)
    # 0.1, 0.2, then 0.4 s: the third pause is 0.2-0.4 s (it was 0.05-0.1 s every time)
    assert pauses[2] >= 0.2, pauses


class ProgressEtcdServer(EtcdServer):
    """etcd sending watch progress notifications every second (10 minutes by default)."""

    def command(self) -> list[str]:
        return [*super().command(), "--experimental-watch-progress-notify-interval", "1s"]


@pytest.fixture(scope="module")
def progress_etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdServer]:
    server = ProgressEtcdServer(Path(tmp_path_factory.mktemp("etcd-progress"))).start()
    yield server
    server.stop()


async def test_a_quiet_watch_follows_etcds_progress_so_a_compaction_of_other_keys_forces_no_full_read(
    progress_etcd: EtcdServer,
) -> None:
    """Only the registry's own events moved the revision a lost watch starts again
    from: after other keys changed and were compacted, a quiet registry's next watch
    started behind the compaction and read the whole registry again."""
    proxy = WatchEndingProxy(progress_etcd)
    await proxy.server.start()
    project = f"p{uuid.uuid4().hex[:8]}"
    reg = EtcdRegistry([proxy.endpoint], project)
    direct = aetcd.Client(port=progress_etcd.port)
    changes: AsyncGenerator[None, None] = reg.changes()  # type: ignore[assignment]
    compacted, ended = watch_lost("compacted"), watch_lost("ended")
    pending: asyncio.Future[None] | None = None
    try:
        await asyncio.wait_for(anext(changes), WAIT_S)  # armed
        pending = asyncio.ensure_future(anext(changes))
        await eventually(lambda: proxy.open_watches == 1, WAIT_S, "the watch open through the proxy")
        for _ in range(3):
            head = (await direct.put(b"/elsewhere", b"x")).header.revision
        # (the registry's own revision: nothing outside it tells when a notification came)
        await eventually(lambda: reg._revision >= head, WAIT_S, "a progress notification")
        await direct.compact(head, physical=True)
        proxy.end_watches()
        await direct.put(f"/featurestore/{project}/data/v/current".encode(), b"5")
        await asyncio.wait_for(pending, WAIT_S)
        assert (watch_lost("ended"), watch_lost("compacted")) == (ended + 1, compacted)
        assert (await reg.data_versions()) == {"v": 5}
    finally:
        await settle(pending, changes)
        await direct.close()
        await reg.close()
        await proxy.close()
