"""A server's freshness gauges (featurestore/freshness.py) against real materialization
runs: a real redis-server, the file registry, the CLI, ``featurestore serve``."""

from __future__ import annotations

import re
from pathlib import Path

from tests.integration.test_materialize import TS0
from tests.integration.test_materialize_incremental import cli_repo, materialize, part
from tests.servers import RedisServer
from tests.support import ServerProcess, http_get, wait_until


def gauges(server: ServerProcess) -> dict[tuple[str, str], float]:
    """(metric, view) -> value of the two freshness gauges in the server's scrape."""
    text = http_get(server.url + "/metrics")[1].decode()
    found = re.findall(
        r'^featurestore_view_(loaded_event_timestamp_seconds|max_age_seconds)\{view="([^"]+)"\} (\S+)$',
        text,
        re.M,
    )
    return {(metric, view): float(value) for metric, view, value in found}


def test_a_server_reports_the_newest_event_time_each_view_loaded_and_follows_the_runs_that_move_it(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    defs, config = cli_repo(tmp_path, redis_server.url)
    defs.write_text(
        defs.read_text().replace(
            "{name: scores, entities: [user_id],", "{name: scores, ttl: 30d, entities: [user_id],"
        )
    )
    out = materialize(config, defs, "--all")
    assert out.returncode == 0, out.stderr
    server = ServerProcess(["--config", str(config), "--no-apply"], log_path=tmp_path / "server.log").start()
    try:
        assert gauges(server) == {
            ("loaded_event_timestamp_seconds", "scores"): (TS0 + 200) / 1e6,  # its newest row's event time
            ("loaded_event_timestamp_seconds", "more"): (TS0 + 100) / 1e6,
            ("max_age_seconds", "scores"): 30 * 86_400.0,  # `more` has no ttl
        }
        # An incremental run moves the watermark alone (the same data version): followed.
        part(tmp_path / "scores" / "p2.parquet", {5: (500, 1_000), 999: (999, 2_000)})
        inc = materialize(config, defs, "--view", "scores", "--incremental")
        assert inc.returncode == 0, inc.stderr
        wait_until(
            lambda: gauges(server)[("loaded_event_timestamp_seconds", "scores")] == (TS0 + 2_000) / 1e6,
            15,
            "the incremental run's watermark to reach the scrape",
        )
        # A run loading only older rows (``--end`` is exclusive) publishes a version whose
        # newest row is older.
        ranged = materialize(config, defs, "--view", "more", "--end", "2024-01-01T00:00:00.000050Z")
        assert ranged.returncode == 0, ranged.stderr
        wait_until(
            lambda: gauges(server)[("loaded_event_timestamp_seconds", "more")] == (TS0 + 49) / 1e6,
            15,
            "the new version's watermark to reach the scrape",
        )
    finally:
        server.stop()
