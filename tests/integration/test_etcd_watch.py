"""The etcd registry's watch ending without a lost connection, against a real etcd:
compacted past the last revision seen (the registry is read again), cancelled by etcd or
its stream ended cleanly (watched again from the last revision seen). aetcd's own watcher
swallowed a cancel and a clean end: the server silently stopped following the registry."""

from __future__ import annotations

import asyncio
import inspect
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Iterator

import aetcd
import pytest

from featurestore.registry.etcd import EtcdRegistry
from featurestore.registry.etcd_client import EtcdAccess
from tests.etcd_proxies import WatchEndingProxy, settle, watch_lost
from tests.security import Certs, SecureEtcdServer, make_certs
from tests.servers import EtcdServer
from tests.support import eventually

WAIT_S = 20.0  # for a change to come through: a bound on a hang, not a timing assert


async def next_change(changes: AsyncIterator[None]) -> None:
    await asyncio.wait_for(anext(changes), WAIT_S)


async def test_a_watch_behind_a_compaction_reads_the_registry_again_and_follows_later_changes(
    etcd_server: EtcdServer,
) -> None:
    project = f"p{uuid.uuid4().hex[:8]}"
    reg = EtcdRegistry([etcd_server.endpoint], project)
    admin = aetcd.Client(port=etcd_server.port)
    changes: AsyncGenerator[None, None] = reg.changes()  # type: ignore[assignment]
    before = watch_lost("compacted")
    try:
        await next_change(changes)  # armed at the head revision; the watch is not open yet
        for i in range(3):  # changes made meanwhile, then compacted away
            await admin.put(f"/featurestore/{project}/data/v/current".encode(), str(i).encode())
        head = (await admin.put(b"/elsewhere", b"x")).header.revision
        await admin.compact(head, physical=True)
        await next_change(changes)  # the watch from the old revision: compacted -> read again
        assert watch_lost("compacted") == before + 1
        await admin.put(f"/featurestore/{project}/data/v/current".encode(), b"9")
        await next_change(changes)  # and it follows on from there
        assert (await reg.data_versions()) == {"v": 9}
    finally:
        await changes.aclose()
        await admin.close()
        await reg.close()


@pytest.fixture(scope="module")
def secure_etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureEtcdServer]:
    certs = make_certs(tmp_path_factory.mktemp("etcd-watch-certs"))
    server = SecureEtcdServer(tmp_path_factory.mktemp("etcd-watch"), certs).start()
    try:
        server.enable_auth()
        yield server
    finally:
        server.stop()


def etcdctl(etcd: SecureEtcdServer, *args: str) -> None:
    out = etcd.etcdctl(*args, auth=True)
    assert out.returncode == 0, out.stderr


async def test_a_watch_etcd_cancels_is_watched_again_and_misses_no_change(
    secure_etcd: SecureEtcdServer,
) -> None:
    """A user allowed to read the registry's keys but not (yet) to watch the project's
    prefix: etcd creates the watch and cancels it at once ("permission denied"). The
    registry counts it, watches again, and once allowed sees the change made meanwhile."""
    project, user = f"p{uuid.uuid4().hex[:8]}", f"u{uuid.uuid4().hex[:6]}"
    certs: Certs = secure_etcd.certs
    etcdctl(secure_etcd, "role", "add", user)
    etcdctl(
        secure_etcd,
        "role",
        "grant-permission",
        "--prefix=true",
        user,
        "read",
        f"/featurestore/{project}/registry/",
    )
    etcdctl(secure_etcd, "user", "add", f"{user}:pw-{user}")
    etcdctl(secure_etcd, "user", "grant-role", user, user)
    access = EtcdAccess(user, f"pw-{user}", str(certs.ca), str(certs.client_cert), str(certs.client_key))
    reg = EtcdRegistry([secure_etcd.endpoint], project, access=access)
    changes: AsyncGenerator[None, None] = reg.changes()  # type: ignore[assignment]
    before = watch_lost("cancelled")
    pending: asyncio.Future[None] | None = None
    try:
        await next_change(changes)  # armed; the next step opens the watch
        pending = asyncio.ensure_future(anext(changes))
        await eventually(lambda: watch_lost("cancelled") > before, WAIT_S, "the cancelled watch to count")
        assert not pending.done()
        etcdctl(secure_etcd, "put", f"/featurestore/{project}/data/v/current", "4")  # missed so far
        etcdctl(
            secure_etcd,
            "role",
            "grant-permission",
            "--prefix=true",
            user,
            "read",
            f"/featurestore/{project}/",
        )
        await asyncio.wait_for(pending, WAIT_S)
        assert (await reg.data_versions()) == {"v": 4}
    finally:
        await settle(pending, changes)
        await reg.close()


def test_the_watch_uses_the_channel_and_auth_metadata_aetcds_client_sets_on_connect() -> None:
    """featurestore/registry/etcd_watch.py opens etcd's Watch stream on these."""
    connect = inspect.getsource(aetcd.Client.connect)
    assert "self.channel = rpc.insecure_channel(" in connect
    assert "self.metadata = (('token', resp.token),)" in connect


async def test_a_watch_stream_that_ends_cleanly_is_watched_again_and_misses_no_change(
    etcd_server: EtcdServer,
) -> None:
    proxy = WatchEndingProxy(etcd_server)
    await proxy.server.start()
    project = f"p{uuid.uuid4().hex[:8]}"
    key = f"/featurestore/{project}/data/v/current".encode()
    reg = EtcdRegistry([f"http://127.0.0.1:{proxy.port}"], project)
    direct = aetcd.Client(port=etcd_server.port)
    changes: AsyncGenerator[None, None] = reg.changes()  # type: ignore[assignment]
    before = watch_lost("ended")
    pending: asyncio.Future[None] | None = None
    try:
        await next_change(changes)  # armed
        pending = asyncio.ensure_future(anext(changes))
        await eventually(lambda: proxy.open_watches == 1, WAIT_S, "the watch open through the proxy")
        await direct.put(key, b"1")
        await asyncio.wait_for(pending, WAIT_S)  # followed through the proxy
        pending = asyncio.ensure_future(anext(changes))
        proxy.end_watches()
        await direct.put(key, b"2")  # made while the stream ends: seen by the watch opened again
        await asyncio.wait_for(pending, WAIT_S)
        assert watch_lost("ended") == before + 1
        assert (await reg.data_versions()) == {"v": 2}
    finally:
        await settle(pending, changes)
        await direct.close()
        await reg.close()
        await proxy.close()
