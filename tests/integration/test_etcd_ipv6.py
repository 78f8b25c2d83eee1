"""The etcd registry reaches an etcd on an IPv6 address (http://[::1]:2379): gRPC's
target needs the address in brackets, which urlparse's hostname drops."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from featurestore.model import DType, Entity, Feature, FeatureView, make_definitions
from featurestore.registry.etcd import EtcdRegistry
from tests.servers import EtcdServer


class IPv6EtcdServer(EtcdServer):
    @property
    def endpoint(self) -> str:
        return f"http://[::1]:{self.port}"


@pytest.fixture
def etcd_v6(tmp_path: Path) -> Iterator[EtcdServer]:
    server = IPv6EtcdServer(tmp_path).start()
    try:
        yield server
    finally:
        server.stop()


async def test_the_etcd_registry_publishes_and_reads_over_an_ipv6_endpoint(etcd_v6: EtcdServer) -> None:
    user = Entity("user_id", DType.INT64)
    defs = make_definitions("p", [user], [FeatureView("v", (user,), (Feature("f0", DType.FLOAT64),))], [])
    reg = EtcdRegistry([etcd_v6.endpoint], "p", timeout=5.0)
    try:
        await reg.publish(defs, expected_version=None)
        current = await reg.current()
        assert current is not None and current.version == 1
        assert reg.health().connected
    finally:
        await reg.close()
