"""The /metrics of the processes that do not serve (featurestore/exporter.py)."""

from __future__ import annotations

import urllib.request

from prometheus_client import generate_latest

import lineage.metrics
from featurestore import exporter, metrics
from featurestore.streaming import metrics as stream_metrics


def test_a_process_that_does_not_serve_exports_no_serving_state_but_everything_else() -> None:
    lineage.metrics.CONSUMED.labels("written").inc(0)
    stream_metrics.EVENTS.labels("v", "ok").inc(0)
    text = generate_latest(exporter.registry()).decode()
    names = {line.split("{")[0].split(" ")[0] for line in text.splitlines() if not line.startswith("#")}
    for gauge in metrics.SERVING_STATE:
        for family in gauge.describe():
            assert family.name not in names  # (read as a server blind to its registry: 0)
    assert "featurestore_registry_connected" not in names
    assert {"featurestore_lineage_consumed_total", "featurestore_stream_events_total"} <= names
    assert "featurestore_registry_connected" in generate_latest().decode()  # (a server's, unchanged)
    assert "process_cpu_seconds_total" in names or "python_gc_objects_collected_total" in names


def test_the_exporter_serves_that_registry_over_http() -> None:
    server, thread = exporter.start(0, "127.0.0.1")
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.server_port}/metrics", timeout=5) as r:
            text = r.read().decode()
        assert "featurestore_lineage_consumed_total" in text
        assert "featurestore_registry_connected" not in text
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)
