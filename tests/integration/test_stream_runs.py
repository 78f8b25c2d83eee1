"""A stream processor is recorded in lineage as job runs, one per window: START when it
starts, COMPLETE per window with the events it read and applied, its topic as input
(real broker, real Redis, OpenLineage's file transport as the receiver)."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

from tests.servers import RedisServer, TansuBroker
from tests.support import ROOT, StreamProcessorProcess, wait_until

DEMO = ROOT / "featurestore" / "demo" / "stream_features.yaml"


def events(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_a_stream_processor_is_a_job_run_per_window_with_its_topic_and_event_counts(
    kafka: TansuBroker, redis_server: RedisServer, tmp_path: Path
) -> None:
    topic = f"clicks-{uuid.uuid4().hex[:8]}"
    defs = tmp_path / "features.yaml"
    defs.write_text(DEMO.read_text().replace("topic: clicks", f"topic: {topic}"))
    runs_file = tmp_path / "openlineage.jsonl"
    config = tmp_path / "config.yaml"
    config.write_text(
        f"project: streamruns\nregistry: {{path: {tmp_path / 'registry'}}}\n"
        f"stores: {{default: {{kind: redis, url: '{redis_server.url}', cache: false}}}}\n"
        f"derived: {{cache_dir: {tmp_path / 'kernels'}}}\n"  # not ~/.cache: another pytest process's
        f"lineage: {{openlineage: {{enabled: true, transport: file, file: '{runs_file}'}}}}\n"
        "stream:\n  poll_seconds: 0.02\n  lag_interval_seconds: 0.2\n  run_window_seconds: 1\n"
        f"  kafka: {{bootstrap_servers: '{kafka.bootstrap}', session_timeout_ms: 2000}}\n"
    )
    produced = subprocess.run(
        [sys.executable, "-m", "featurestore.cli", "stream", "produce-sample", "--config", str(config),
         "--topic", topic, "--users", "5", "--rate", "2000", "--seconds", "0.5"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert produced.returncode == 0, produced.stderr
    sent = int(produced.stdout.split()[1])
    processor = StreamProcessorProcess(
        ["--config", str(config), "--definitions", str(defs), "--view", "user_clicks"],
        tmp_path / "stream.log",
    ).start()
    try:

        def windows_closed() -> bool:
            done = [e for e in events(runs_file) if e["eventType"] == "COMPLETE"]
            return len(done) >= 2

        wait_until(windows_closed, 60, "two run windows of the processor to complete")
    finally:
        processor.stop()
    recorded = [e for e in events(runs_file) if e["job"]["name"] == "stream:user_clicks"]
    assert recorded, events(runs_file)
    starts = [e for e in recorded if e["eventType"] == "START"]
    completes = [e for e in recorded if e["eventType"] == "COMPLETE"]
    assert len(starts) >= 2 and len(completes) >= 2
    # every run that started ended (the last one when the processor stopped), each once
    assert {e["run"]["runId"] for e in starts} == {e["run"]["runId"] for e in completes}
    assert all(topic in json.dumps(e["inputs"]) for e in starts), starts[0]["inputs"]
    # the windows' applied events add up to what the processor applied: none counted twice
    written = [
        e["outputs"][0]["outputFacets"]["outputStatistics"]["rowCount"]
        for e in completes
        if e.get("outputs") and "outputStatistics" in e["outputs"][0].get("outputFacets", {})
    ]
    assert 0 < sum(written) <= sent, (written, sent)
