"""EtcdLink's client replacement (featurestore/registry/etcd_client.py)."""

from __future__ import annotations

import asyncio

from featurestore.registry.etcd_client import EtcdLink


class FakeClient:
    """Stands in for aetcd.Client: only close(), which takes a while, as a real one's does."""

    made: list[FakeClient] = []

    def __init__(self) -> None:
        self.closed = 0
        FakeClient.made.append(self)

    async def close(self) -> None:
        await asyncio.sleep(0.01)
        self.closed += 1


def link_on_fakes() -> EtcdLink:
    link = EtcdLink.__new__(EtcdLink)  # no connection: only the replacement is under test
    link._endpoint = 0
    link._connect = FakeClient  # type: ignore[method-assign]
    link.client = FakeClient()
    return link


async def test_two_calls_renewing_one_failed_client_at_once_replace_it_once() -> None:
    FakeClient.made.clear()
    link = link_on_fakes()
    old = link.client
    await asyncio.gather(link.renew(old), link.renew(old))
    assert len(FakeClient.made) == 2 and link.client is FakeClient.made[1]
    assert link._endpoint == 1 and old.closed == 1
