"""``featurestore check consistency`` on the demo (issue 13, requirement 6), every class
produced by a constructed case, and both ways of reading the online side."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from tests.support import ROOT, ServerProcess, http_post


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "featurestore.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )


def check(url: str, *extra: str) -> tuple[int, dict[str, Any]]:
    out = cli(
        "check", "consistency", "--view", "user_profile", "--url", url, "--sample", "300", "--json", *extra
    )
    assert out.returncode in (0, 1), out.stderr
    return out.returncode, json.loads(out.stdout)


def row_of(proc: ServerProcess, user: int) -> dict[str, Any]:
    features = ["age", "tenure_days", "num_devices", "country", "plan_tier", "preferred_language",
                "lifetime_value", "credit_score"]  # fmt: skip
    status, doc = proc.join(
        {"entities": {"user_id": [user]}, "features": [f"user_profile:{f}" for f in features]}
    )
    assert status == 200, doc
    cols = dict(zip(doc["metadata"]["feature_names"], doc["results"], strict=True))
    row = {f: [cols[f]["values"][0]] for f in features}
    row["event_timestamp"] = [cols["age"]["event_timestamps"][0]]
    return row


def push(proc: ServerProcess, user: int, row: dict[str, Any]) -> None:
    body = {"feature_view": "user_profile", "rows": {"user_id": [user], **row}}
    status, raw, _ = http_post(proc.url + "/v1/feature/push", json.dumps(body).encode())
    assert status == 200, raw


@pytest.fixture
def demo(tmp_path: Path) -> Any:
    proc = ServerProcess(["--demo", "--data-dir", str(tmp_path / "data")], log_path=tmp_path / "demo.log")
    proc.start(timeout=90)
    try:
        yield proc, tmp_path / "data" / "users.parquet"
    finally:
        proc.stop()


def test_the_demo_is_consistent_then_shows_conflict_online_newer_stale_and_missing_keys(demo: Any) -> None:
    proc, users = demo
    code, report = check(proc.url)
    assert code == 0 and report["checked"] == 300 and report["consistent"] == 300, report
    # the demo's ClickHouse view (materialized into the in-process engine at start) too
    out = cli(
        "check", "consistency", "--view", "user_transactions", "--url", proc.url, "--sample", "200", "--json"
    )
    assert out.returncode == 0 and json.loads(out.stdout)["consistent"] == 200, out.stdout + out.stderr

    # a push with the same event time and another value: a conflict (exit 1)
    same = row_of(proc, 17)
    same["age"] = [same["age"][0] + 1]
    push(proc, 17, same)
    # a push with a later event time: online_newer (expected, not a mismatch)
    later = row_of(proc, 18)
    later["event_timestamp"] = ["2030-01-01T00:00:00Z"]
    push(proc, 18, later)
    # a pushed key the batch source does not have: missing_offline
    push(proc, 999_999_999, later)
    # the offline file gains a newer row for key 19 (not materialized: the server keeps
    # serving what it loaded) and a key the server never loaded: stale, missing_online
    table = pq.read_table(users)
    extra = table.filter(pc.is_in(table.column("user_id"), pa.array([19], pa.int64())))
    extra = extra.set_column(extra.schema.get_field_index("event_timestamp"), "event_timestamp",
                             pa.array([2_000_000_000_000_000], pa.timestamp("us", tz="UTC")).cast(
                                 table.schema.field("event_timestamp").type))  # fmt: skip
    new_key = extra.set_column(0, "user_id", pa.array([888_888_888], pa.int64()))
    pq.write_table(pa.concat_tables([table, extra, new_key]), users)

    keys = ["--key", "17", "--key", "18", "--key", "19", "--key", "999999999", "--key", "888888888"]
    code, report = check(proc.url, *keys)
    assert code == 1, report
    assert (report["conflict"], report["online_newer"], report["stale"]) == (1, 1, 1), report
    assert (report["missing_offline"], report["missing_online"]) == (1, 1), report
    assert report["checked"] == 305 and report["consistent"] == 300, report
    by_class = {ex["class"]: ex for ex in report["examples"]}
    assert by_class["conflict"]["key"] == 17 and by_class["conflict"]["feature"] == "age"
    assert by_class["stale"]["key"] == 19 and by_class["online_newer"]["key"] == 18

    # the stale, conflicting and missing keys are 3 of 305: allowed at --max-mismatch 0.01
    code, _ = check(proc.url, *keys, "--max-mismatch", "0.01")
    assert code == 0
    table_out = cli("check", "consistency", "--view", "user_profile", "--url", proc.url, "--sample", "10")
    assert table_out.returncode == 0 and "consistent" in table_out.stdout and "stale" in table_out.stdout


def test_usage_errors_exit_2_with_one_line(demo: Any) -> None:
    proc, _ = demo
    out = cli("check", "consistency", "--view", "nope", "--url", proc.url)
    # one line, "error: [CODE: ]message" (main's CLI adds the status name)
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and out.stderr.startswith("error: ")
    assert out.stderr.endswith("unknown feature view 'nope'\n")
    out = cli("check", "consistency", "--view", "user_profile", "--url", proc.url, "--sample", "0")
    assert (
        out.returncode == 2
        and out.stderr.startswith("error: ")
        and "--sample: expected an integer" in out.stderr
    )
    out = cli("check", "consistency", "--view", "user_profile", "--url", "http://127.0.0.1:9")
    assert out.returncode == 2 and out.stderr.startswith("error: ")


def test_a_server_that_requires_tokens_is_checked_with_a_token_file(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(
        'auth: {tokens: "checker-token-0123456789 read,admin"}\n'
        "stores: {default: {kind: memory}, analytics: {kind: memory}}\n"
    )
    proc = ServerProcess(
        ["--demo", "--data-dir", str(tmp_path / "data"), "--config", str(config)], log_path=tmp_path / "log"
    )
    proc.start(timeout=90)
    try:
        denied = cli("check", "consistency", "--view", "user_profile", "--url", proc.url, "--sample", "5")
        assert denied.returncode == 2 and "401" in denied.stderr
        token = tmp_path / "token"
        token.write_text("checker-token-0123456789\n")
        out = cli("check", "consistency", "--view", "user_profile", "--url", proc.url, "--sample", "50",
                  "--token-file", str(token), "--json")  # fmt: skip
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["consistent"] == 50
    finally:
        proc.stop()


def test_a_server_whose_max_rows_is_under_a_thousand_is_checked_in_joins_it_takes(tmp_path: Path) -> None:
    """(review s57) The CLI read 1,000 keys a join: a server with limits.max_rows of 100
    refused every one (RESOURCE_EXHAUSTED, exit 2) at the default --sample of 10,000."""
    proc = ServerProcess(
        ["--demo", "--data-dir", str(tmp_path / "data")],
        env={"FEATURESTORE_LIMITS__MAX_ROWS": "100"},
        log_path=tmp_path / "log",
    )
    proc.start(timeout=90)
    try:
        status, doc = proc.join(
            {"entities": {"user_id": list(range(1, 102))}, "features": ["user_profile:age"]}
        )
        assert status == 413 and doc["error"]["code"] == "RESOURCE_EXHAUSTED", doc  # the limit holds
        out = cli("check", "consistency", "--view", "user_profile", "--url", proc.url, "--json")
        assert out.returncode == 0, out.stderr
        report = json.loads(out.stdout)
        assert report["checked"] == 10_000 and report["consistent"] == 10_000, report
    finally:
        proc.stop()
