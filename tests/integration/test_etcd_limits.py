"""Snapshots over etcd's request limit (--max-request-bytes, 1.5 MiB by default), against
a real etcd: refused up front naming the size and the limit; a refusal by etcd itself is
no lost connection. Under a raised limit, a snapshot over gRPC's default 4 MiB receive
limit is read, and watched; one that takes longer to arrive than gRPC's ping timeout
(keepalive) is read within the call's timeout. An etcd whose database is full (NOSPACE)
refuses writes as RESOURCE_EXHAUSTED, no lost connection either."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncGenerator, Iterator
from pathlib import Path

import pytest

from featurestore.definitions.snapshot import snapshot_to_json
from featurestore.errors import Code, LimitExceeded
from featurestore.model import Definitions, DType, Entity, Feature, FeatureView, make_definitions
from featurestore.registry.etcd import EtcdRegistry
from tests.etcd_proxies import SilencingTcpProxy
from tests.servers import EtcdServer

USER = Entity("user_id", DType.INT64)
BLURB = "7-day rolling click-through rate of the user on the home feed, smoothed"


def defs(n_features: int) -> Definitions:
    view = FeatureView("v", (USER,), tuple(Feature(f"f{i}", DType.FLOAT64, BLURB) for i in range(n_features)))
    return make_definitions("p", [USER], [view], [])


BIG = 12_000  # features: a snapshot of about 1.6 MiB


async def test_a_snapshot_over_the_request_limit_is_refused_naming_its_size_and_the_limit(
    etcd_server: EtcdServer,
) -> None:
    reg = EtcdRegistry([etcd_server.endpoint], f"p{uuid.uuid4().hex[:8]}")
    try:
        await reg.publish(defs(1), expected_version=None)
        limit = r"is 1\.\d\d MiB .* request limit of 1\.50 MiB \(1572864 bytes\)"
        with pytest.raises(LimitExceeded, match=limit) as e:
            await reg.publish(defs(BIG), expected_version=1)
        assert e.value.code is Code.RESOURCE_EXHAUSTED
        with pytest.raises(LimitExceeded, match=limit):
            await reg.stage(defs(BIG))
        assert (await reg.current()).version == 1  # type: ignore[union-attr]
        assert await reg.versions() == [1]
        assert reg.health().connected
    finally:
        await reg.close()


async def test_etcd_refusing_a_request_as_too_large_is_no_lost_connection(etcd_server: EtcdServer) -> None:
    """A registry configured with a higher limit than etcd's: etcd refuses the write
    itself. That is final (no retry helps) and the registry stays connected."""
    reg = EtcdRegistry([etcd_server.endpoint], f"p{uuid.uuid4().hex[:8]}", max_request_bytes=64 * 2**20)
    try:
        await reg.publish(defs(1), expected_version=None)
        with pytest.raises(LimitExceeded, match="too large"):
            await reg.publish(defs(BIG), expected_version=1)
        assert reg.health().connected
        assert (await reg.current()).version == 1  # type: ignore[union-attr]
    finally:
        await reg.close()


async def test_a_snapshot_that_takes_longer_than_the_ping_timeout_to_arrive_is_read_within_the_call_timeout(
    etcd_server: EtcdServer,
) -> None:
    """gRPC's ping timeout (5 s, for keepalive) is met only by a ping's ack, which etcd
    sends behind the response it is sending: a snapshot that took over 5 s to arrive
    was cut ("ping timeout") however long the call's timeout. About 0.87 MB at 120 KB/s
    (a 1 Mbit/s link): about 7 s."""
    proxy = await SilencingTcpProxy(etcd_server, bytes_per_second=120_000).start()
    project = f"p{uuid.uuid4().hex[:8]}"
    writer = EtcdRegistry([etcd_server.endpoint], project)
    reader = EtcdRegistry([proxy.endpoint], project, timeout=30.0)
    try:
        await writer.publish(defs(1), expected_version=None)
        published = await writer.publish(defs(6000), expected_version=1)
        assert len(snapshot_to_json(published)) > 7 * 120_000
        current = await asyncio.wait_for(reader.current(), 60)
        assert current is not None and len(current.definitions.views["v"].features) == 6000
    finally:
        await reader.close()
        await writer.close()
        await proxy.close()


class RaisedLimitEtcd(EtcdServer):
    LIMIT = 8 * 2**20

    def command(self) -> list[str]:
        return [*super().command(), "--max-request-bytes", str(self.LIMIT)]


@pytest.fixture(scope="module")
def raised_limit_etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RaisedLimitEtcd]:
    server = RaisedLimitEtcd(Path(tmp_path_factory.mktemp("etcd-8mib"))).start()
    try:
        yield server
    finally:
        server.stop()


HUGE = 36_000  # features: a snapshot of about 4.8 MiB


async def test_a_snapshot_over_grpcs_default_4_mib_receive_limit_is_read_and_watched(
    raised_limit_etcd: RaisedLimitEtcd,
) -> None:
    """etcd accepts it under a raised --max-request-bytes (registry.max_request_bytes set
    to match); gRPC's client takes 4 MiB messages by default, so reading it back (a fresh
    client: nothing cached) and its watch event need the client's receive limit lifted
    (``etcd_client.CHANNEL_OPTIONS``)."""
    project, limit = f"p{uuid.uuid4().hex[:8]}", RaisedLimitEtcd.LIMIT
    writer = EtcdRegistry([raised_limit_etcd.endpoint], project, max_request_bytes=limit)
    reader = EtcdRegistry([raised_limit_etcd.endpoint], project, max_request_bytes=limit)
    changes: AsyncGenerator[None, None] = reader.changes()  # type: ignore[assignment]
    try:
        await writer.publish(defs(1), expected_version=None)
        await asyncio.wait_for(anext(changes), 20)  # armed
        published = await writer.publish(defs(HUGE), expected_version=1)
        assert len(snapshot_to_json(published)) > 4 * 2**20
        await asyncio.wait_for(anext(changes), 20)  # the watch event carries the whole value
        current = await reader.current()
        assert current is not None and current.version == 2
        assert len(current.definitions.views["v"].features) == HUGE
        assert reader.health().connected
    finally:
        await changes.aclose()
        await reader.close()
        await writer.close()


class SmallQuotaEtcd(EtcdServer):
    """etcd whose database may grow to 3 MB (--quota-backend-bytes; 2 GiB by default):
    full after three snapshots of about 0.9 MB."""

    QUOTA = 3_000_000

    def command(self) -> list[str]:
        return [*super().command(), "--quota-backend-bytes", str(self.QUOTA)]


@pytest.fixture(scope="module")
def small_quota_etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SmallQuotaEtcd]:
    server = SmallQuotaEtcd(Path(tmp_path_factory.mktemp("etcd-3mb"))).start()
    try:
        yield server
    finally:
        server.stop()


async def test_etcd_refusing_writes_with_its_database_full_is_resource_exhausted_saying_how_to_free_it(
    small_quota_etcd: SmallQuotaEtcd,
) -> None:
    """etcd's NOSPACE ("mvcc: database space exceeded", gRPC RESOURCE_EXHAUSTED, which
    aetcd wraps in a ClientError) was UNAVAILABLE, as if etcd were down: retried for
    nothing, and the registry reported disconnected although etcd answered."""
    reg = EtcdRegistry([small_quota_etcd.endpoint], f"p{uuid.uuid4().hex[:8]}")
    current = None
    try:
        with pytest.raises(LimitExceeded) as raised:
            for _ in range(10):
                current = (await reg.publish(defs(6000), expected_version=current)).version
        assert current is not None and raised.value.code is Code.RESOURCE_EXHAUSTED
        message = raised.value.message
        assert message.startswith("etcd refused the write (etcdserver: mvcc: database space exceeded): ")
        for advice in ("NOSPACE", "--quota-backend-bytes", "featurestore registry prune --keep N",
                       "compact", "etcdctl defrag", "etcdctl alarm disarm", '"Retention"'):  # fmt: skip
            assert advice in message, advice
        assert "too large" not in message
        assert reg.health().connected
        with pytest.raises(LimitExceeded, match="database space exceeded"):  # every write of the cluster
            await reg.swap_data_version("v", expected=0, new=1)
        assert reg.health().connected
        still = await reg.current()  # (reads still answer)
        assert still is not None and still.version == current
    finally:
        await reg.close()
