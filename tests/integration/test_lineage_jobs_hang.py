"""Jobs that write their run reports straight into a Bolt graph server (``lineage.graph:
bolt``, no Kafka) while that server hangs: a real ArcadeDB, stopped with SIGSTOP. Each
report waited 60 s for it: `materialize --all` of 2 views took 242 s for 1 s of work, and
`stream run` exited 115 s after SIGTERM, past its 30 s grace period (review s58 round 2b
#1). A report now has a 5 s deadline, and the reports after one that failed skip the graph.
The bounds below are on a hang (the job ends at all before it), not on speed."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import Paused
from tests.integration.test_materialize_incremental import cli_repo
from tests.integration.test_stream_faults import topic_producer
from tests.servers import ArcadeServer, RedisServer, TansuBroker
from tests.support import ROOT, wait_until

# Well under the 60 s one report used to wait, and under a pod's 30 s grace period: the
# job's own work (about 1 s), the first report's 5 s deadline, and a Python start on a
# busy 2-core machine (3-8 s).
BOUND_SECONDS = 25


@pytest.fixture(scope="module")
def frozen_arcade(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ArcadeServer]:
    """An ArcadeDB of this module's own: its tests stop the JVM (the session's is shared)."""
    server = ArcadeServer(tmp_path_factory.mktemp("arcade-jobs-frozen")).start()
    try:
        yield server
    finally:
        server.stop()


def bolt_lineage(server: ArcadeServer) -> str:
    return (
        f"lineage: {{graph: bolt, graphql: false, bolt: {{uri: '{server.uri}', user: {server.USER}, "
        f"password: {server.PASSWORD}, database: {server.DATABASE}}}}}\n"
    )


def unrecorded(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "not recorded in lineage" in line]


def test_materialize_of_two_views_with_a_hung_graph_loads_both_and_skips_the_graph_after_one_report(
    redis_server: RedisServer, frozen_arcade: ArcadeServer, tmp_path: Path
) -> None:
    defs, config = cli_repo(tmp_path, redis_server.url)
    config.write_text(config.read_text() + bolt_lineage(frozen_arcade))
    command = [sys.executable, "-m", "featurestore.cli", "materialize", "--config", str(config),
               "--definitions", str(defs), "--all"]  # fmt: skip
    with Paused(frozen_arcade):
        out = subprocess.run(command, capture_output=True, text=True, timeout=BOUND_SECONDS, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "more: published data version 1 (was 0): 100 rows written" in out.stdout
    assert "scores: published data version 1 (was 0): 200 rows written" in out.stdout
    lines = unrecorded(out.stderr)
    assert [line.split("(")[1].split(")")[0] for line in lines] == ["START", "COMPLETE"] * 2, lines
    assert "within 5 s" in lines[0] and all("not sent" in line for line in lines[1:]), lines


def test_stream_run_with_a_hung_graph_exits_promptly_on_sigterm(
    kafka: TansuBroker, redis_server: RedisServer, frozen_arcade: ArcadeServer, tmp_path: Path
) -> None:
    topic, project = f"hung-{uuid.uuid4().hex[:8]}", f"p{uuid.uuid4().hex[:6]}"
    definitions = tmp_path / "defs.yaml"
    definitions.write_text(
        f"project: {project}\nentities: [{{name: user_id, dtype: int64}}]\nstream_views:\n"
        f"  - {{name: hung_view, entities: [user_id], source: {{topic: {topic}, key_fields: [u], "
        "timestamp_field: ts}, aggregations: [{name: n, function: count, window: 1h}]}\n"
    )
    producer = topic_producer(kafka, topic)
    producer.produce(topic, key=b"1", value=json.dumps({"u": 1, "ts": time.time_ns() // 1_000_000}).encode())
    assert producer.flush(10) == 0
    config = tmp_path / "config.yaml"
    config.write_text(
        f"project: {project}\nstores: {{default: {{kind: redis, url: '{redis_server.url}', cache: false}}}}\n"
        f"stream: {{kafka: {{bootstrap_servers: '{kafka.bootstrap}', session_timeout_ms: 2000}}}}\n"
        + bolt_lineage(frozen_arcade)
    )
    stdout, stderr = tmp_path / "out.txt", tmp_path / "err.txt"
    with Paused(frozen_arcade), stdout.open("w") as out, stderr.open("w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "featurestore.cli", "stream", "run", "--config", str(config),
             "--definitions", str(definitions), "--view", "hung_view", "--metrics-port", "0"],
            cwd=ROOT, stdout=out, stderr=err, text=True,
        )  # fmt: skip
        try:
            wait_until(
                lambda: proc.poll() is not None or "hung_view: assigned" in stderr.read_text(),
                60,
                "the processor assigned its partitions",
            )
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(BOUND_SECONDS)  # it took 115 s: a START and a COMPLETE, 60 s each
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert code == 0, stderr.read_text()[-2000:]
    assert "stream processor stopped: hung_view" in stdout.read_text()
    lines = unrecorded(stderr.read_text())
    assert [line.split("(")[1].split(")")[0] for line in lines] == ["START", "COMPLETE"], lines


def test_apply_with_a_hung_graph_publishes_and_returns_saying_the_graph_write_was_cut_short(
    redis_server: RedisServer, frozen_arcade: ArcadeServer, tmp_path: Path
) -> None:
    """apply, registry rollback and canary promote (one helper) waited 61 s for the graph
    after publishing (review s58 round 2b #5)."""
    defs, config = cli_repo(tmp_path, redis_server.url)
    config.write_text(config.read_text() + bolt_lineage(frozen_arcade))
    command = [sys.executable, "-m", "featurestore.cli", "apply", str(defs), "--config", str(config)]
    with Paused(frozen_arcade):
        out = subprocess.run(command, capture_output=True, text=True, timeout=BOUND_SECONDS, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "published registry version 1 (was None)" in out.stdout
    [line] = [line for line in out.stdout.splitlines() if line.startswith("lineage graph:")]
    assert "definitions of version 1 not written (" in line and "the change is published" in line, line
