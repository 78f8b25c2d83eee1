"""The scheduled consistency check's scan of the batch source: its deadline is a setting,
a scan given up on stops reading, and nothing waits for a hung read at exit (review 2,
s54, findings 3 and 4)."""

from __future__ import annotations

import asyncio
import logging
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import numpy as np
import pyarrow as pa
import pytest
from prometheus_client import REGISTRY

import featurestore.jobs
from featurestore.config import Config, load_config
from featurestore.definitions.snapshot import new_snapshot
from featurestore.errors import InvalidArgument
from featurestore.model import BatchSource, DType, Entity, Feature, FeatureView, make_definitions
from featurestore.plan import ServingState
from featurestore.quality.schedule import ConsistencySchedule
from featurestore.registry.base import Registry, Watermark
from featurestore.sources.base import OnlineSource, ViewQuery, ViewRead
from tests.support import eventually

ROOT = Path(__file__).parents[2]
U = Entity("user_id", DType.INT64)


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


class _SlowSource:
    """A batch source streaming ``batches`` batches (None: forever) of 10 keys each, one
    every ``every`` seconds, each read in ``asyncio.to_thread`` as the real sources read."""

    def __init__(self, batches: int | None, every: float) -> None:
        self.batches, self.every, self.read = batches, every, 0
        self.closed = False  # its stream's cleanup ran to its end

    def describe(self) -> str:
        return "slow"

    async def latest_batches(self, *_: Any, **__: Any) -> AsyncIterator[pa.RecordBatch]:
        try:
            while self.batches is None or self.read < self.batches:
                await asyncio.to_thread(time.sleep, self.every)
                keys = np.arange(self.read * 10, self.read * 10 + 10)
                self.read += 1
                yield pa.record_batch(
                    {
                        "user_id": pa.array(keys, pa.int64()),
                        "score": pa.array(keys.astype(np.float64)),
                        "event_timestamp": pa.array(np.full(10, 1_000_000), pa.timestamp("us", tz="UTC")),
                    }
                )
        finally:  # as ClickHouse's stream is closed: in a thread
            await asyncio.to_thread(time.sleep, 0.01)
            self.closed = True


class _Store:
    """Every key as the source holds it."""

    async def read(self, queries: list[ViewQuery]) -> list[ViewRead]:
        keys = queries[0].keys
        return [ViewRead([True] * len(keys), [1_000_000] * len(keys), [[float(k) for k in keys]])]  # type: ignore[arg-type]


class _NoWatermarks:
    async def watermark(self, name: str) -> Watermark | None:
        return None

    async def close(self) -> None:
        pass


def _schedule(
    name: str, source: _SlowSource, monkeypatch: pytest.MonkeyPatch, **consistency: Any
) -> ConsistencySchedule:
    view = FeatureView(
        name, (U,), (Feature("score", DType.FLOAT64),), batch_source=BatchSource(path="/nowhere")
    )
    state = ServingState(new_snapshot(make_definitions("p", [U], [view], []), 1), {name: 0})
    config = Config.model_validate(
        {"quality": {"consistency": {"views": [name], "sample": 5, **consistency}}}
    )
    monkeypatch.setattr(featurestore.jobs, "default_source", lambda *_: source)
    return ConsistencySchedule(
        config, {"default": cast(OnlineSource, _Store())}, lambda: state, cast(Registry, _NoWatermarks())
    )


def test_the_check_deadline_is_the_configured_timeout_else_the_interval(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """It was the interval clamped to 5 min..1 h: a daily check's 70-min scan erred every
    day. Then 4 h by default, past FeatureSkewCheckFailing's 3.5 h at the hourly default
    (review 3, s54): unset, it is the interval (a round then takes at most 2 intervals)."""
    for interval, timeout, deadline in ((60, 7200, 7200), (86_400, None, 86_400), (3600, None, 3600)):
        settings = {"interval_seconds": interval} | ({"timeout_seconds": timeout} if timeout else {})
        schedule = _schedule(f"deadline_{interval}", _SlowSource(0, 0), monkeypatch, **settings)
        assert schedule.deadline_seconds == deadline
    path = tmp_path / "c.yaml"
    for bad in ("0", "-5"):
        path.write_text(f"quality: {{consistency: {{timeout_seconds: {bad}}}}}\n")
        with pytest.raises(InvalidArgument, match=r"quality\.consistency\.timeout_seconds"):
            load_config(path)


async def test_a_scan_longer_than_the_interval_completes_within_the_configured_timeout_and_not_past_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The deadline was derived from the interval (clamped to at least 300 s): a 0.8 s scan
    at an interval of 0.2 s passed whatever the setting said (review 3, s54). Now the
    same scan completes under a 30 s timeout and is cut under a 0.3 s one."""
    schedule = _schedule(
        "long_scan", _SlowSource(8, 0.1), monkeypatch, interval_seconds=0.2, timeout_seconds=30
    )
    report = await schedule.check_view("long_scan")
    assert report is not None and report.checked == 5 and report.counts["consistent"] == 5
    assert sample("featurestore_consistency_checks_total", view="long_scan", outcome="ok") == 1
    short = _schedule(
        "short_scan", _SlowSource(8, 0.1), monkeypatch, interval_seconds=0.2, timeout_seconds=0.3
    )
    assert await short.check_view("short_scan") is None
    assert sample("featurestore_consistency_checks_total", view="short_scan", outcome="error") == 1


async def test_a_scan_cut_by_the_deadline_stops_reading_the_batch_source(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The thread read the whole source after the check gave up: the warehouse's load
    stayed, and the next round found the scan still alive and erred too."""
    source = _SlowSource(None, 0.05)  # endless
    schedule = _schedule("cut_scan", source, monkeypatch, timeout_seconds=0.3)
    assert await schedule.check_view("cut_scan") is None
    await asyncio.sleep(0.3)
    read = source.read
    await asyncio.sleep(0.3)
    assert source.read == read
    assert not schedule._scans["cut_scan"].is_alive()
    assert source.closed  # its cleanup was aborted at the scan loop's teardown (review 3, s54)
    assert "abandoned" not in caplog.text  # the stop it was asked for is no failure to log
    assert sample("featurestore_consistency_checks_total", view="cut_scan", outcome="error") == 1


def test_a_stopped_server_exits_at_once_though_a_scan_hangs_in_a_read_of_the_batch_source() -> None:
    """The reads ran in the scan loop's default executor, whose threads the interpreter
    joins at exit: a process stopped with a scan hung in a read (a silent warehouse, a hung
    network file system) stayed until the read ended, 30 s here."""
    code = textwrap.dedent(
        """
        import asyncio, time
        import featurestore.jobs
        from featurestore.config import Config
        from featurestore.definitions.snapshot import new_snapshot
        from featurestore.model import BatchSource, DType, Entity, Feature, FeatureView, make_definitions
        from featurestore.plan import ServingState
        from featurestore.quality.schedule import ConsistencySchedule

        class Hung:
            def describe(self): return "hung"
            async def latest_batches(self, *a, **k):
                await asyncio.to_thread(time.sleep, 30)
                yield None

        class NoMarks:
            async def watermark(self, name): return None
            async def close(self): pass

        U = Entity("user_id", DType.INT64)
        view = FeatureView("v", (U,), (Feature("s", DType.FLOAT64),), batch_source=BatchSource(path="/x"))
        state = ServingState(new_snapshot(make_definitions("p", [U], [view], []), 1), {"v": 0})
        config = Config.model_validate({"quality": {"consistency": {"views": ["v"], "timeout_seconds": 0.5}}})
        featurestore.jobs.default_source = lambda *a: Hung()
        schedule = ConsistencySchedule(config, {"default": object()}, lambda: state, NoMarks())
        print(asyncio.run(schedule.check_view("v")), flush=True)
        import threading
        assert any(t.name == "consistency-scan:v" for t in threading.enumerate())  # hung in its read
        print(time.monotonic(), flush=True)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60, check=True
    )
    checked, checked_at = done.stdout.split()
    assert checked == "None"  # the deadline: an error
    assert time.monotonic() - float(checked_at) < 5, "the exit waited for the hung read"


async def test_a_scan_that_fails_after_the_check_gave_up_logs_its_error(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Only "no answer within ..." was logged: a broken source read as a slow one (review 3, s54)."""

    class _Broken(_SlowSource):
        async def latest_batches(self, *_: Any, **__: Any) -> AsyncIterator[pa.RecordBatch]:
            await asyncio.to_thread(self.fail)  # past the check's 0.1 s
            yield pa.record_batch({"user_id": [1]})

        def fail(self) -> None:
            time.sleep(0.4)
            raise ValueError("part-7.parquet: schema differs")

    schedule = _schedule("broken_scan", _Broken(None, 0), monkeypatch, timeout_seconds=0.1)
    caplog.set_level(logging.WARNING, "featurestore.quality.schedule")
    assert await schedule.check_view("broken_scan") is None
    await eventually(
        lambda: any("abandoned scan failed" in r.getMessage() for r in caplog.records),
        10,
        "the scan's error logged",
    )
    await asyncio.sleep(0.2)  # (and only once)
    abandoned = [r for r in caplog.records if "abandoned scan failed" in r.getMessage()]
    assert len(abandoned) == 1 and "schema differs" in abandoned[0].getMessage()
    assert abandoned[0].levelno == logging.WARNING


def _endless_arrow_server() -> tuple[str, list[int]]:
    """A local HTTP server answering one request with an Arrow stream that never ends, as
    ClickHouse's ArrowStream answer of a big table; the bytes it got out so far."""
    table = pa.table(
        {"user_id": list(range(10_000)), "score": [1.0] * 10_000, "event_timestamp": [1] * 10_000}
    )
    [batch] = table.to_batches()
    listener = socket.create_server(("127.0.0.1", 0))
    sent = [0]

    def serve() -> None:
        conn, _ = listener.accept()
        conn.recv(65536)
        conn.sendall(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        sink = pa.BufferOutputStream()
        writer = pa.ipc.new_stream(sink, batch.schema)
        done = 0
        try:
            while sent[0] < 2_000_000_000:
                writer.write_batch(batch)
                data = sink.getvalue().to_pybytes()
                piece, done = data[done:], len(data)
                conn.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
                sent[0] += len(piece)
        except OSError:  # the client closed: what is wanted
            pass
        finally:
            conn.close()
            listener.close()

    threading.Thread(target=serve, daemon=True).start()
    return f"http://127.0.0.1:{listener.getsockname()[1]}/", sent


async def test_a_clickhouse_scan_that_is_stopped_closes_its_result_without_reading_the_rest() -> None:
    """clickhouse-connect's own stream over urllib3's response, as query_arrow_stream
    builds it: the check giving up must not read the rest of a LIMIT 1 BY result (a
    draining close would read it all; this fails if the library starts to)."""
    import urllib3
    from clickhouse_connect.driver.query import to_arrow_batches

    from featurestore.offline import ClickHouseOfflineSource

    url, sent = _endless_arrow_server()
    http = urllib3.PoolManager()

    def arrow_stream(*_: Any, **__: Any) -> Any:
        return to_arrow_batches(http.request("GET", url, preload_content=False))

    client = SimpleNamespace(
        query=lambda sql: SimpleNamespace(  # (DESCRIBE TABLE: name, type)
            result_rows=[
                ("user_id", "Int64"),
                ("score", "Int64"),
                ("event_timestamp", "DateTime64(6, 'UTC')"),
            ]
        ),
        query_arrow_stream=arrow_stream,
    )
    source = ClickHouseOfflineSource.__new__(ClickHouseOfflineSource)
    source.table, source._quoted, source._client = "db.t", "`db`.`t`", client
    batches = source.latest_batches(["score"], ["user_id"], "event_timestamp", 10)
    async for _ in batches:
        break
    started, sent_before = time.monotonic(), sent[0]
    await asyncio.wait_for(batches.aclose(), 10)  # type: ignore[attr-defined]
    assert time.monotonic() - started < 1, "the close read on"
    await asyncio.sleep(0.2)
    after = sent[0]
    await asyncio.sleep(0.3)
    assert sent[0] == after, "the server still streams: the connection was not closed"
    assert after - sent_before < 50_000_000
