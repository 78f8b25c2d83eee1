"""The registry follower survives what libraries throw at it: a call cut off by a
reconnect, a background task ended by accident."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import socket
from collections.abc import Iterator

import prometheus_client
import pytest

from featurestore import metrics
from featurestore.background import supervised
from featurestore.errors import Unavailable
from featurestore.registry.etcd import EtcdRegistry
from featurestore.registry.etcd_client import EtcdAccess


@pytest.fixture
def silent_peer() -> Iterator[int]:
    """A TCP listener that accepts and never answers (a hung etcd, a half-open link)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    try:
        yield srv.getsockname()[1]
    finally:
        srv.close()


async def test_an_etcd_read_cut_off_by_a_reconnect_is_unavailable_not_a_cancellation(
    silent_peer: int,
) -> None:
    reg = EtcdRegistry([f"http://127.0.0.1:{silent_peer}"], "p", timeout=30.0)
    try:
        read = asyncio.create_task(reg.current())
        await asyncio.sleep(0.3)  # the read is in flight on the client...
        await reg._link.reconnect()  # ...when the watch loop replaces it (what changes() does)
        with pytest.raises(Unavailable, match="cut off"):
            await read
        assert not reg.health().connected
    finally:
        await reg.close()


async def test_cancelling_a_caller_of_the_etcd_registry_still_cancels_it(silent_peer: int) -> None:
    reg = EtcdRegistry([f"http://127.0.0.1:{silent_peer}"], "p", timeout=30.0)
    try:
        read = asyncio.create_task(reg.current())
        await asyncio.sleep(0.3)
        read.cancel()
        with pytest.raises(asyncio.CancelledError):
            await read
    finally:
        await reg.close()


def _restarts(name: str) -> float:
    metrics.flush()
    value = prometheus_client.REGISTRY.get_sample_value(
        "featurestore_background_task_restarts_total", {"task": name}
    )
    return value or 0.0


async def test_a_background_task_that_fails_or_is_cut_off_is_counted_and_run_again() -> None:
    runs = 0
    again = asyncio.Event()

    async def job() -> None:
        nonlocal runs
        runs += 1
        if runs == 1:
            raise asyncio.CancelledError  # grpc.aio's way of saying "your channel closed"
        if runs == 2:
            raise RuntimeError("a bug")
        again.set()
        await asyncio.Event().wait()

    before = _restarts("test-job")
    task = asyncio.create_task(supervised("test-job", job, delay=0.0))
    await asyncio.wait_for(again.wait(), 10)
    assert runs == 3 and _restarts("test-job") == before + 2
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert task.cancelled()


async def test_a_background_task_whose_job_swallows_the_shutdown_cancel_still_ends() -> None:
    runs = 0
    running = asyncio.Event()

    async def job() -> None:
        nonlocal runs
        runs += 1
        running.set()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.Event().wait()

    task = asyncio.create_task(supervised("test-swallow", job, delay=0.0))
    await asyncio.wait_for(running.wait(), 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 10)
    assert runs == 1


async def test_a_background_task_restarting_again_and_again_waits_longer_each_time() -> None:
    starts: list[float] = []
    loop = asyncio.get_running_loop()

    async def job() -> None:
        starts.append(loop.time())
        raise RuntimeError("a bug")

    task = asyncio.create_task(supervised("test-storm", job, delay=0.05))
    await asyncio.sleep(0.5)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    waits = [b - a for a, b in itertools.pairwise(starts)]
    assert 3 <= len(starts) <= 5 and all(w2 > w1 * 1.5 for w1, w2 in itertools.pairwise(waits))


def test_the_etcd_password_is_not_in_the_access_settings_repr() -> None:
    access = EtcdAccess(username="svc", password="hunter2-5c2e")
    assert "hunter2" not in repr(access) and "hunter2" not in str(access)
    assert "svc" in repr(access)
