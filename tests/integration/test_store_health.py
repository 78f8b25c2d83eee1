"""What a server says about a failing store.

A store that lost its data is not "ok": on a real Redis (restarted empty under a
running server, or a version's keys deleted) and on ClickHouse (a dropped table), the
views whose served data version is gone are reported missing, in ``/readyz`` and
``featurestore_view_data_missing``, until re-materializing brings them back.

A store outage does not flood the log: each kind of failure is logged once, then
counted, while the metrics count every failure."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from featurestore.sources.base import DataMissing, ViewQuery, ViewRead
from featurestore.sources.clickhouse import ClickHouseOnlineSource, ClickHouseOptions
from featurestore.sources.clickhouse.sql import table_name
from featurestore.sources.redis import RedisOptions, RedisSource
from tests.contract.test_online_source import ALL_TYPES, all_types_rows
from tests.integration.test_clickhouse_source import TX, rows
from tests.integration.test_redis_serving import materialize
from tests.servers import RedisServer
from tests.support import REDIS_CONNECT_MS, ServerProcess, eventually, http_get, wait_until

TS = 1_704_067_200_000_000


@pytest.fixture(params=["redis_server", "redis_cluster"])
async def redis_source(request: pytest.FixtureRequest) -> AsyncIterator[RedisSource]:
    server = request.getfixturevalue(request.param)
    cluster = request.param == "redis_cluster"
    options = RedisOptions(
        url=server.url,
        cluster=cluster,
        pool_size=2,
        health_interval_ms=20,
        connect_timeout_ms=REDIS_CONNECT_MS,
    )
    src = RedisSource("r", f"t{uuid.uuid4().hex[:8]}", options)
    await src.start()
    yield src
    await src.close()


async def test_the_redis_probe_finds_a_served_version_gone_without_any_read(
    redis_source: RedisSource,
) -> None:
    src = redis_source
    await src.write(ALL_TYPES, all_types_rows([1, 2]), 1)
    src.serving({"all_types": 1})
    assert not src.missing()
    await src.drop_version(ALL_TYPES, 1)  # what FLUSHALL or a restart without persistence does to it
    await eventually(lambda: "all_types" in src.missing(), 10, "the probe to find the marker gone")
    assert "marker fs:" in src.missing()["all_types"] and "re-materialize" in src.missing()["all_types"]
    [read] = await src.read([ViewQuery(ALL_TYPES, [1], [0], 1)])
    assert isinstance(read, DataMissing)

    await src.write(ALL_TYPES, all_types_rows([1, 2]), 2)  # re-materialized into version 2
    src.serving({"all_types": 2})
    assert not src.missing()
    [read] = await src.read([ViewQuery(ALL_TYPES, [1], [0], 2)])
    assert isinstance(read, ViewRead) and read.found == [True] and not src.missing()


CH_PROJECT = f"t{uuid.uuid4().hex[:8]}"


@pytest.fixture
async def ch(chdb_dsn: str) -> AsyncIterator[ClickHouseOnlineSource]:
    # No health round of its own: the test runs each one (check()).
    src = ClickHouseOnlineSource(
        "ch", CH_PROJECT, ClickHouseOptions(dsn=chdb_dsn, threads=2, health_interval_ms=600_000)
    )
    await src.start()
    await src.prepare([TX])
    yield src
    await src.close()


async def test_a_dropped_clickhouse_table_is_reported_by_the_health_round_and_by_a_read(
    ch: ClickHouseOnlineSource,
) -> None:
    def tx_rows(ids: list[int]) -> Any:
        n = len(ids)
        return rows(
            TX, {"user_id": ids, "txn_90d": ids, "avg_basket": [1.5] * n, "event_timestamp": [TS] * n}
        )

    await ch.write(TX, tx_rows([1, 2]), 2)
    ch.serving({"tx": 2})
    await ch.check()
    assert not ch.missing()
    table = f"{ch.options.database}.{table_name(CH_PROJECT, 'tx', 2)}"
    await ch.pool.admin(lambda c: c.command(f"DROP TABLE {table}"))
    await ch.check()  # one health round
    assert "does not exist" in ch.missing()["tx"] and "re-materialize" in ch.missing()["tx"]

    ch.serving({"tx": 0})
    assert not ch.missing()
    [read] = await ch.read([ViewQuery(TX, [1], [0], 2)])  # a request still on version 2
    assert isinstance(read, DataMissing) and not ch.missing()  # not the version served now

    await ch.write(TX, tx_rows([1, 2]), 3)  # re-materialized
    ch.serving({"tx": 3})
    await ch.check()
    [read] = await ch.read([ViewQuery(TX, [1], [0], 3)])
    assert isinstance(read, ViewRead) and read.found == [True] and not ch.missing()


class Stack:
    """A server whose Redis keeps nothing across a restart (no persistence)."""

    def __init__(self, tmp: Path, test_repo: Path, demo_dir: Path) -> None:
        self.redis = RedisServer(tmp / "redis").start()
        self.users = demo_dir / "users.parquet"
        self.config = tmp / "config.yaml"
        self.config.write_text(
            f"registry: {{path: {tmp / 'registry'}, definitions: {test_repo}}}\n"
            f"stores:\n  default: {{kind: redis, url: '{self.redis.url}', health_interval_ms: 100, "
            f"connect_timeout_ms: {REDIS_CONNECT_MS}}}\n"
            "  local: {kind: memory}\n"
            "limits: {deadline_ms: 5000}\n"  # not the 500 ms default: the loaded CI machine
        )
        try:
            for view in ("user_profile", "user_activity"):
                materialize(self.config, view, self.users)
            self.server = ServerProcess(
                ["--config", str(self.config), "--no-apply"], log_path=tmp / "server.log"
            ).start()
        except BaseException:
            self.redis.stop()
            raise

    def readyz(self) -> dict[str, Any]:
        doc: dict[str, Any] = json.loads(http_get(self.server.url + "/readyz")[1])
        return doc

    def missing_gauge(self, view: str) -> float:
        text = http_get(self.server.url + "/metrics")[1].decode()
        m = re.search(
            rf'^featurestore_view_data_missing\{{store="default",view="{view}"\}} (\S+)$', text, re.M
        )
        assert m is not None, f"no featurestore_view_data_missing series for {view}"
        return float(m.group(1))

    def statuses(self, feature: str, users: list[int]) -> list[str]:
        """The statuses of one feature for users no earlier join read (the LRU cache in
        front of Redis would answer those)."""
        status, doc = self.server.join({"entities": {"user_id": users}, "features": [feature]})
        assert status == 200
        result: list[str] = doc["results"][1]["statuses"]
        return result

    def stop(self) -> None:
        self.server.stop()
        self.redis.stop()


@pytest.fixture
def stack(tmp_path: Path, test_repo: Path, demo_dir: Path) -> Iterator[Stack]:
    s = Stack(tmp_path, test_repo, demo_dir)
    yield s
    s.stop()


def test_redis_restarted_empty_degrades_its_views_until_they_are_materialized_again(stack: Stack) -> None:
    ready = stack.readyz()
    assert ready["status"] == "ok" and ready["data_missing"] == {}
    assert (
        stack.missing_gauge("user_profile") == 0
        and stack.statuses("user_profile:age", [1, 2]) == ["PRESENT"] * 2
    )

    stack.redis.restart()  # no persistence: every data version is gone, Redis answers PING
    wait_until(
        lambda: set(stack.readyz()["data_missing"]) == {"user_profile", "user_activity"},
        15,
        "readyz to report both Redis views missing their data",
    )
    ready = stack.readyz()
    assert ready["status"] == "degraded" and ready["ready"] is True  # the memory views still answer
    assert ready["stores"]["default"] == "ready"  # Redis itself answers
    assert any(
        d.startswith("view user_profile is missing its data (store default: marker")
        for d in ready["degraded"]
    )
    metrics = http_get(stack.server.url + "/metrics")[1].decode()
    assert 'featurestore_source_up{kind="redis",store="default"} 1.0' in metrics
    assert stack.missing_gauge("user_profile") == 1 and stack.missing_gauge("user_activity") == 1
    assert stack.statuses("user_profile:age", [3, 4]) == ["UNAVAILABLE"] * 2

    materialize(stack.config, "user_profile", stack.users)  # no server restart
    wait_until(lambda: "user_profile" not in stack.readyz()["data_missing"], 15, "user_profile materialized")
    assert (
        stack.statuses("user_profile:age", [5, 6]) == ["PRESENT"] * 2
        and stack.missing_gauge("user_profile") == 0
    )
    assert set(stack.readyz()["data_missing"]) == {"user_activity"}  # still gone: not materialized yet
    materialize(stack.config, "user_activity", stack.users)
    wait_until(lambda: stack.readyz()["status"] == "ok", 15, "every view back")
    assert stack.statuses("user_activity:ctr_30d", [7, 8]) == ["PRESENT"] * 2


def test_a_store_outage_logs_each_kind_of_failure_once_then_a_count_and_the_metric_counts_all(
    stack: Stack,
) -> None:
    def failures(view: str) -> float:
        text = http_get(stack.server.url + "/metrics")[1].decode()
        pattern = rf'^featurestore_view_read_failures_total\{{reason="error",store="default",view="{view}"\}} (\S+)$'
        m = re.search(pattern, text, re.M)
        return float(m.group(1)) if m else 0.0

    def logged(view: str) -> list[int]:
        """The failures of ``view`` each log line stands for (1, or a summary's count)."""
        pattern = rf"view {view} read failed on store default: .*?(?: \[(\d+) occurrences in the [^\]]*\])?$"
        return [int(n) if n else 1 for n in re.findall(pattern, stack.server.read_log(), re.M)]

    stack.redis.stop()
    wait_until(lambda: stack.readyz()["stores"]["default"] == "down", 10, "the store to be down")
    joins = 40
    for u in range(1000, 1000 + joins):  # users never read: the LRU cache cannot answer
        status, doc = stack.server.join(
            {"entities": {"user_id": [u]}, "features": ["user_profile:age", "user_activity:ctr_30d"]}
        )
        assert status == 200 and doc["results"][1]["statuses"] == ["UNAVAILABLE"]
    wait_until(lambda: failures("user_profile") == joins, 10, "the metric to count every failed read")
    assert failures("user_activity") == joins
    # The first failure of each view was logged at once; the others are summed up once
    # the outage has been quiet for the interval (10 s).
    wait_until(lambda: sum(logged("user_profile")) == joins, 30, "the summary of the repeated failures")
    assert logged("user_profile")[0] == 1 and len(logged("user_profile")) < joins
    wait_until(lambda: sum(logged("user_activity")) == joins, 10, "the summary for user_activity")
