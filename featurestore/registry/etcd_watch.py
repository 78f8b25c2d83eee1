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
* ``etcd_errors.ConnectionFailedError``/``WatchTimeoutError``: the connection failed
  (or was closed under the watch: ``EtcdLink.reconnect``), or etcd did not confirm the
  watch within the client's timeout.

The watch asks etcd for progress notifications (the revision it has caught up to while
no event of the prefix comes: a later watch need not start behind a compaction of other
keys) and sends ``hasleader: true``: a member cut off from its cluster's quorum ends the
stream ("no leader") instead of holding it open and silent.

``tests/integration/test_etcd_watch.py`` runs it against a real etcd (and fails when
aetcd's client stops setting ``channel`` or ``metadata``).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from typing import Any

import aetcd
import grpc
from aetcd import exceptions as etcd_errors
from aetcd import rpc, utils

# etcd's own client sends this with every watch (clientv3.WithRequireLeader): etcd then
# ends the stream when its member loses the leader, and refuses it while there is none.
REQUIRE_LEADER = ("hasleader", "true")


class WatchEnded(Exception):
    """etcd cancelled the watch, or ended its stream, without a compaction or an error."""

    def __init__(self, cause: str, reason: str) -> None:
        super().__init__(reason)
        self.cause = cause  # "cancelled" or "ended": the label of the lost-watch counter


async def watch_prefix(
    client: aetcd.Client, prefix: bytes, start_revision: int, confirm_within: float
) -> AsyncGenerator[tuple[Sequence[Any], int], None]:
    """Yield ``(events, progress)`` for each response of a watch of ``prefix`` from
    ``start_revision``, until it ends (raises). ``events``: ``mvccpb.Event`` (``.kv.key``,
    ``.kv.mod_revision``), none once etcd confirmed the watch; ``progress``: the revision
    every event up to which has been sent, from a progress notification (else 0).
    ``confirm_within``: seconds etcd may take to confirm the watch."""
    await client.connect()
    create = rpc.WatchCreateRequest(
        key=prefix,
        range_end=utils.prefix_range_end(prefix),
        start_revision=start_revision,
        progress_notify=True,
    )
    hold = asyncio.Event()  # the request stream stays open (no half-close) while watching

    async def requests() -> AsyncIterator[Any]:
        yield rpc.WatchRequest(create_request=create)
        await hold.wait()

    metadata = (*(client.metadata or ()), REQUIRE_LEADER)
    call = rpc.WatchStub(client.channel).Watch(requests(), metadata=metadata)
    try:
        try:
            response = await asyncio.wait_for(call.read(), confirm_within)
        except TimeoutError as e:
            raise etcd_errors.WatchTimeoutError(f"etcd did not confirm the watch of {prefix!r}") from e
        while True:
            if response is grpc.aio.EOF:
                raise WatchEnded("ended", "etcd ended the watch stream")
            if response.compact_revision:
                raise etcd_errors.RevisionCompactedError(response.compact_revision)
            if response.canceled:
                raise WatchEnded(
                    "cancelled", f"etcd cancelled the watch: {response.cancel_reason or 'no reason'}"
                )
            # A progress notification: no events, not the confirmation. (The confirmation's
            # revision is etcd's head, past the events a watch from an older one has yet to send.)
            progress = response.header.revision if not response.events and not response.created else 0
            yield response.events, progress
            response = await call.read()
    except grpc.aio.AioRpcError as e:
        raise etcd_errors.ConnectionFailedError(f"watch stream: {e.code().name}: {e.details()}") from e
    except asyncio.CancelledError as e:
        # grpc.aio ends a read on a channel closed under it (another call's failure
        # replaced the client) with CancelledError, although nobody cancelled this task
        task = asyncio.current_task()
        if task is None or task.cancelling():
            raise
        raise etcd_errors.ConnectionFailedError("watch stream: its channel was closed") from e
    finally:
        hold.set()
        call.cancel()


class RetryPause:
    """The jittered pause before each new watch after one was lost: ``low`` doubling to
    ``high``, from ``low`` again once a watch delivered events (``steady``) or lived
    ``steady_after`` seconds from etcd's first response (``confirmed``). A watch that is
    confirmed and ends at once is no proof that etcd is well again, nor is one that took
    long to connect and never got an answer: the pause keeps growing."""

    def __init__(self, low: float, high: float, steady_after: float) -> None:
        self._low, self._high, self._steady_after = low, high, steady_after
        self._backoff = low
        self._confirmed: float | None = None

    def opening(self) -> None:
        """A new watch (or the connection before it) is being opened: it counts for
        nothing until etcd answers it."""
        self._confirmed = None

    def confirmed(self) -> None:
        """etcd answered the watch (its first answer, the confirmation, starts the clock)."""
        if self._confirmed is None:
            self._confirmed = time.monotonic()

    def steady(self) -> None:
        self._backoff = self._low

    def next(self) -> float:
        """The pause after a lost watch, in seconds."""
        if self._confirmed is not None and time.monotonic() - self._confirmed >= self._steady_after:
            self._backoff = self._low
        self._confirmed = None
        wait = random.uniform(self._backoff / 2, self._backoff)
        self._backoff = min(self._backoff * 2, self._high)
        return wait
