"""A hung server (it accepts the connection and never answers) ends a join with
DeadlineExceededError at the deadline, not before it and not long after, over HTTP and
gRPC, blocking and asyncio. The join runs on a thread the test waits for a bounded time,
so a client that ignored its deadline fails the test instead of hanging the run (no
pytest timeout is configured). A client closed while its join waits ends the join with
FailedPreconditionError on every variant."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable

import pytest

from featurestore.client import (
    AsyncFeatureClient,
    DeadlineExceededError,
    FailedPreconditionError,
    FeatureClient,
)

TRANSPORTS = ["http", "grpc"]
DEADLINE = 1.0
# Past the deadline, what a loaded CI host may add (a thread's start, grpc's timer, an
# asyncio loop's set-up). A client that took the deadline twice (a retry, each address of a
# name in turn: review s55, finding 1) would end later than DEADLINE + LATE.
LATE = 0.8


class Silent:
    """A TCP listener that accepts connections and never answers (a hung server)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]

    def address(self, transport: str) -> str:
        return f"{'http' if transport == 'http' else 'grpc'}://127.0.0.1:{self.port}"

    def close(self) -> None:
        self.sock.close()


def timed(call: Callable[[], object]) -> tuple[float, BaseException | None]:
    """``call`` on a daemon thread: (seconds until it ended, what it raised). Fails when it
    has not ended DEADLINE + LATE after its start."""
    ended: list[tuple[float, BaseException | None]] = []

    def run() -> None:
        started = time.monotonic()
        try:
            call()
        except BaseException as e:
            ended.append((time.monotonic() - started, e))
        else:
            ended.append((time.monotonic() - started, None))

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(DEADLINE + LATE)
    assert ended, f"the join had not ended {DEADLINE + LATE} s into its {DEADLINE} s deadline"
    return ended[0]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_server_that_never_answers_gives_deadline_exceeded_at_the_deadline(transport: str) -> None:
    silent = Silent()
    try:
        with FeatureClient(silent.address(transport), retries=0) as client:
            elapsed, error = timed(
                lambda: client.join({"user_id": [1]}, ["user_profile:age"], deadline=DEADLINE)
            )
    finally:
        silent.close()
    assert isinstance(error, DeadlineExceededError), error
    assert DEADLINE * 0.9 <= elapsed < DEADLINE + LATE, elapsed


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_server_that_never_answers_gives_the_asyncio_client_deadline_exceeded_at_the_deadline(
    transport: str,
) -> None:
    silent = Silent()

    async def join() -> None:
        async with AsyncFeatureClient(silent.address(transport), retries=0) as client:
            await client.join({"user_id": [1]}, ["user_profile:age"], deadline=DEADLINE)

    try:
        elapsed, error = timed(lambda: asyncio.run(join()))
    finally:
        silent.close()
    assert isinstance(error, DeadlineExceededError), error
    assert DEADLINE * 0.9 <= elapsed < DEADLINE + LATE, elapsed


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_client_closed_by_another_thread_while_its_join_waits_ends_the_join_with_a_failed_precondition(
    transport: str,
) -> None:
    """Not grpc's CancelledError ("Channel closed!") nor UNAVAILABLE blaming the server
    (review s57 round 2: the close is the caller's)."""
    silent = Silent()
    client = FeatureClient(silent.address(transport), deadline=DEADLINE, retries=0)
    try:
        threading.Timer(0.2, client.close).start()
        _, raised = timed(lambda: client.join({"user_id": [1]}, ["v:f"]))
    finally:
        client.close()
        silent.close()
    assert isinstance(raised, FailedPreconditionError), repr(raised)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_an_asyncio_client_closed_while_its_join_waits_ends_the_join_with_a_failed_precondition(
    transport: str,
) -> None:
    """grpc.aio cancels the calls of a channel closed under them: the join's task, which
    nobody cancelled, got a bare CancelledError (lost inside a TaskGroup)."""
    silent = Silent()

    async def scenario() -> BaseException | None:
        client = AsyncFeatureClient(silent.address(transport), deadline=DEADLINE, retries=0)
        join = asyncio.ensure_future(client.join({"user_id": [1]}, ["v:f"]))
        await asyncio.sleep(0.2)
        await client.close()
        try:
            await join
        except BaseException as e:  # (CancelledError included: what the test looks for)
            return e
        return None

    results: list[BaseException | None] = []
    try:
        _, raised = timed(lambda: results.append(asyncio.run(scenario())))  # (bounded: timed)
    finally:
        silent.close()
    assert raised is None and len(results) == 1
    assert isinstance(results[0], FailedPreconditionError), repr(results[0])
