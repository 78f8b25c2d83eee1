"""One etcd watch of a key prefix, read from etcd's Watch stream itself.

aetcd's ``Watcher`` swallows two ends of a watch: a response that says etcd cancelled
it (``canceled`` without a compaction: permission denied, an expired auth token, ...)
is dropped, and a stream that ends without an error leaves its watches waiting. Either
way the iterator it hands out never yields again and never raises: a server silently
stops following the registry. ``watch_prefix`` below opens the stream on the aetcd
client's channel (its public ``channel`` and, with a user, ``metadata`` holding the
auth token, both set by ``connect``) and turns every end into an exception:

* ``RevisionCompactedError`` (aetcd's): etcd compacted past the start revision;
* ``WatchEnded``: etcd cancelled the watch, or ended the stream;
* ``etcd_errors.ConnectionFailedError``/``WatchTimeoutError``: the connection failed,
  or etcd did not confirm the watch within the client's timeout.

``tests/integration/test_etcd_watch.py`` runs it against a real etcd (and fails when
aetcd's client stops setting ``channel`` or ``metadata``).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from typing import Any

import aetcd
import grpc
from aetcd import exceptions as etcd_errors
from aetcd import rpc, utils


class WatchEnded(Exception):
    """etcd cancelled the watch, or ended its stream, without a compaction or an error."""

    def __init__(self, cause: str, reason: str) -> None:
        super().__init__(reason)
        self.cause = cause  # "cancelled" or "ended": the label of the lost-watch counter


async def watch_prefix(
    client: aetcd.Client, prefix: bytes, start_revision: int, confirm_within: float
) -> AsyncGenerator[Sequence[Any], None]:
    """Yield the events (``mvccpb.Event``: ``.kv.key``, ``.kv.mod_revision``; none once
    etcd confirmed the watch) of each response of a watch of ``prefix`` from ``start_revision``, until it ends (raises).
    ``confirm_within``: seconds etcd may take to confirm the watch."""
    await client.connect()
    create = rpc.WatchCreateRequest(
        key=prefix, range_end=utils.prefix_range_end(prefix), start_revision=start_revision
    )
    hold = asyncio.Event()  # the request stream stays open (no half-close) while watching

    async def requests() -> AsyncIterator[Any]:
        yield rpc.WatchRequest(create_request=create)
        await hold.wait()

    call = rpc.WatchStub(client.channel).Watch(requests(), metadata=client.metadata)
    try:
        try:
            first = await asyncio.wait_for(call.read(), confirm_within)
        except TimeoutError as e:
            raise etcd_errors.WatchTimeoutError(f"etcd did not confirm the watch of {prefix!r}") from e
        response = first
        while True:
            if response is grpc.aio.EOF:
                raise WatchEnded("ended", "etcd ended the watch stream")
            if response.compact_revision:
                raise etcd_errors.RevisionCompactedError(response.compact_revision)
            if response.canceled:
                raise WatchEnded(
                    "cancelled", f"etcd cancelled the watch: {response.cancel_reason or 'no reason'}"
                )
            yield response.events  # none in the first one: etcd confirmed the watch
            response = await call.read()
    except grpc.aio.AioRpcError as e:
        raise etcd_errors.ConnectionFailedError(f"watch stream: {e.code().name}: {e.details()}") from e
    finally:
        hold.set()
        call.cancel()
