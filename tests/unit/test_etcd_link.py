"""EtcdLink's client replacement (featurestore/registry/etcd_client.py)."""

from __future__ import annotations

import asyncio

import grpc
from aetcd import exceptions as etcd_errors

from featurestore.errors import Code, Unavailable
from featurestore.registry.etcd_client import EtcdLink
from featurestore.registry.limits import refusal


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


def rpc_error(code: grpc.StatusCode, details: str) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details=details)


def wrapped(error: grpc.aio.AioRpcError) -> etcd_errors.ClientError:
    """What aetcd raises for an error code it has no exception of (its ``_handle_exception``)."""
    try:
        raise etcd_errors.ClientError(error.details()) from error
    except etcd_errors.ClientError as e:
        return e


def test_a_full_etcd_database_is_resource_exhausted_and_never_called_a_request_too_large() -> None:
    """The RESOURCE_EXHAUSTED branch of refusal() saw only a bare AioRpcError, which aetcd
    never raises, and said "too large" for etcd's NOSPACE."""
    nospace = rpc_error(grpc.StatusCode.RESOURCE_EXHAUSTED, "etcdserver: mvcc: database space exceeded")
    for error in (nospace, wrapped(nospace)):
        refused = refusal(error, 2**20)
        assert refused is not None and refused.code is Code.RESOURCE_EXHAUSTED
        assert "database space exceeded" in refused.message and "alarm disarm" in refused.message
        assert "too large" not in refused.message
    big = rpc_error(grpc.StatusCode.RESOURCE_EXHAUSTED, "grpc: received message larger than max (9 vs. 8)")
    assert "too large" in (refusal(wrapped(big), 2**20) or Unavailable("")).message
    busy = rpc_error(grpc.StatusCode.RESOURCE_EXHAUSTED, "etcdserver: too many requests")
    assert refusal(wrapped(busy), 2**20) is None  # a busy etcd: retried as any
