"""Snapshots over etcd's request limit (--max-request-bytes, 1.5 MiB by default), against
a real etcd: refused up front naming the size and the limit; a refusal by etcd itself is
no lost connection."""

from __future__ import annotations

import uuid

import pytest

from featurestore.errors import Code, LimitExceeded
from featurestore.model import Definitions, DType, Entity, Feature, FeatureView, make_definitions
from featurestore.registry.etcd import EtcdRegistry
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
