"""The registry follower survives what libraries throw at it: a call cut off by a
reconnect, a background task ended by accident (and the registry-apply task, restarted,
serves the change it was cut off applying)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import socket
from collections.abc import Iterator
from pathlib import Path

import prometheus_client
import pytest

from featurestore import metrics
from featurestore.background import supervised
from featurestore.errors import Unavailable
from featurestore.model import Definitions, DType, Entity, Feature, FeatureView, make_definitions
from featurestore.registry.admin import RegistryAdmin
from featurestore.registry.etcd import EtcdRegistry
from featurestore.registry.etcd_client import EtcdAccess
from featurestore.registry.file import FileRegistry
from featurestore.runtime import build_runtime
from tests.support import eventually, file_registry_config


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


async def test_a_restarted_registry_apply_task_serves_the_change_it_was_cut_off_applying(
    tmp_path: Path,
) -> None:
    """The applier clears the change flag, then is cut off mid-apply (grpc.aio's
    CancelledError on a closed channel, a bug): ``supervised`` starts it again, and the
    new run reads the registry once by itself. The watch has moved past the change and
    flags nothing more, so without that re-read the server stayed on the old version."""
    admin = RegistryAdmin(FileRegistry(tmp_path / "reg", "p"))
    await admin.apply(_defs("f0"))
    config = file_registry_config(tmp_path)
    rt = await build_runtime(config)
    try:
        watch = next(t for t in rt.tasks if t.get_name() == "registry-watch")
        watch.cancel()  # nothing but the test flags changes from here on
        with contextlib.suppress(asyncio.CancelledError):
            await watch
        real, attempts, armed = rt.apply_registry_change, [], asyncio.Event()

        async def cut_off_once() -> None:
            if armed.is_set():  # (the start's own read may still be running before)
                attempts.append(rt.registry_dirty.is_set())
                if len(attempts) == 1:
                    raise asyncio.CancelledError  # nobody cancelled the task
            await real()

        rt.apply_registry_change = cut_off_once  # type: ignore[method-assign]
        before = _restarts("registry-apply")
        published = await admin.apply(_defs("f0", "f1"))
        assert published.snapshot is not None and published.snapshot.version == 2
        armed.set()
        rt.registry_dirty.set()  # what the watch does, once
        await eventually(lambda: rt.engine.state.version == 2, 20, "version 2 served")
        assert attempts == [False, False]  # the flag was cleared each time: no second change
        assert _restarts("registry-apply") == before + 1
    finally:
        await rt.close()


def _defs(*features: str) -> Definitions:
    user = Entity("user_id", DType.INT64)
    view = FeatureView("v", (user,), tuple(Feature(f, DType.FLOAT64) for f in features))
    return make_definitions("p", [user], [view], [])


def test_the_etcd_password_is_not_in_the_access_settings_repr() -> None:
    access = EtcdAccess(username="svc", password="hunter2-5c2e")
    assert "hunter2" not in repr(access) and "hunter2" not in str(access)
    assert "svc" in repr(access)


async def test_closing_the_runtime_writes_the_metrics_buffered_since_the_last_flush(tmp_path: Path) -> None:
    await RegistryAdmin(FileRegistry(tmp_path / "reg", "p")).apply(_defs("f0"))
    rt = await build_runtime(file_registry_config(tmp_path))
    labels = {"route": "/v1/feature/join", "protocol": "http", "outcome": "ok"}
    metrics.flush()
    before = prometheus_client.REGISTRY.get_sample_value("featurestore_requests_total", labels) or 0.0
    metrics.requests(*labels.values()).inc()  # a join of the drain, after the flush task's last run
    await rt.close()
    assert prometheus_client.REGISTRY.get_sample_value("featurestore_requests_total", labels) == before + 1
