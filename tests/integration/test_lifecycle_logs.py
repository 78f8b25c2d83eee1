"""What a real server logs through an outage and at its stop (review s55): librdkafka's
own lines go through Python logging (``log_format: json`` gives JSON, and they are
rate-limited as the server's own repeated lines are), and the counts of rate-limited
lines since their last summary are written when the server stops, not lost."""

from __future__ import annotations

import json
import time
from pathlib import Path

from tests.support import ServerProcess, free_port, wait_until


def start(tmp_path: Path, test_repo: Path, config_text: str) -> ServerProcess:
    config = tmp_path / "config.yaml"
    config.write_text(f"registry: {{path: {tmp_path / 'registry'}}}\n{config_text}")
    return ServerProcess(
        ["--config", str(config), "--definitions", str(test_repo)], log_path=tmp_path / "log"
    ).start()


def test_librdkafka_lines_of_a_broker_outage_are_json_log_records_rate_limited(
    tmp_path: Path, test_repo: Path
) -> None:
    server = start(
        tmp_path,
        test_repo,
        "stores: {default: {kind: memory}, local: {kind: memory}}\nlog_format: json\n"
        f"lineage: {{sink: kafka, graphql: false, kafka: {{bootstrap_servers: '127.0.0.1:{free_port()}'}}}}\n",
    )  # (nothing listens there: every connection attempt fails, ~17 lines a second before)
    try:
        wait_until(lambda: "rdkafka#producer" in server.read_log(), 20, "librdkafka's first line")
        time.sleep(3)  # an outage of a few seconds: dozens of attempts
    finally:
        code = server.stop()
    assert code == 0
    lines = [line for line in server.read_log().splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]  # each a JSON object: no raw "%3|...|FAIL|" line
    rdkafka = [r for r in records if r["logger"] == "lineage.kafka.rdkafka"]
    assert rdkafka and all("Connect to" in r["message"] for r in rdkafka), rdkafka
    # each kind of line once at first, then its count: at the stop at the latest
    assert len(rdkafka) <= 6, rdkafka
    summaries = [r for r in rdkafka if "occurrences" in r]
    assert summaries and sum(r["occurrences"] for r in summaries) >= 10, rdkafka


def test_the_count_of_rate_limited_lines_since_the_last_summary_is_written_at_the_stop(
    tmp_path: Path, test_repo: Path
) -> None:
    server = start(
        tmp_path,
        test_repo,
        f"stores: {{default: {{kind: redis, url: 'redis://127.0.0.1:{free_port()}/0'}}, local: {{kind: memory}}}}\n",
    )  # (its default store down: every read of user_profile fails, logged once, then counted)
    body = {"entities": {"user_id": [17]}, "features": ["user_profile:age"]}
    try:
        for _ in range(20):
            status, answer = server.join(body)
            assert status == 200 and answer["results"][1]["statuses"] == ["UNAVAILABLE"]
    finally:
        code = server.stop()  # within the 10 s interval of the first line
    assert code == 0
    failed = [line for line in server.read_log().splitlines() if "view user_profile read failed" in line]
    assert len(failed) == 2, failed  # the first at once, and the rest's count at the stop
    assert "[19 occurrences in the " in failed[1], failed
