"""The CLI against a real server, the demo start-up, and graceful shutdown under load."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import uuid
from pathlib import Path

from tests.servers import TansuBroker
from tests.support import ROOT, Background, ServerProcess, http_get, http_post, is_running, wait_until


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "featurestore.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )


def test_validate_ok_and_error(tmp_path: Path) -> None:
    ok = cli("validate", str(ROOT / "featurestore" / "demo" / "features.yaml"))
    assert ok.returncode == 0 and "OK - project demo: 1 entities, 3 feature views (21 features)" in ok.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "project: p\nentities: [{name: u, dtype: int64}]\nfeature_views:\n  - {name: v, entities: [u], features: [{name: f, dtype: decimal}]}\n"
    )
    out = cli("validate", str(bad))
    assert out.returncode == 2
    assert "bad.yaml: feature_views[v].features[f].dtype: unknown dtype 'decimal'" in out.stderr


def test_cli_join_http_and_grpc_print_the_table_and_nothing_on_stderr(server: ServerProcess) -> None:
    http = cli(
        "join",
        "--url",
        server.url,
        "--entity",
        "user_id=17",
        "--features",
        "user_profile:age,user_activity:ctr_30d",
    )
    assert http.returncode == 0, http.stderr
    assert http.stderr == ""  # no httpx INFO line per request
    lines = http.stdout.splitlines()
    assert re.match(r"age\s+71\s+PRESENT\s+2024-01-01T12:19:02Z", lines[2])
    grpc_out = cli(
        "join", "--grpc", server.grpc_target, "--entity", "user_id=17,99999999", "--service", "ranker_v1"
    )
    assert grpc_out.returncode == 0, grpc_out.stderr
    assert grpc_out.stderr == ""
    assert "- (NOT_FOUND)" in grpc_out.stdout and "71" in grpc_out.stdout
    err = cli("join", "--url", server.url, "--entity", "user_id=1", "--features", "nope:x")
    assert err.returncode == 2 and "error: NOT_FOUND:" in err.stderr and "nope" in err.stderr


def test_demo_start_prints_a_working_curl_and_exports_cache_series_of_its_stores_only(tmp_path: Path) -> None:
    """What `make run` does, in a fresh data folder: generate, apply, serve, print curl.
    The cache in front of the ClickHouse store counts under its name, with no store=""
    series beside it (a Grafana legend without a name). The garbage collector's pauses are
    timed from before start-up's full collection (collector.py)."""
    log = tmp_path / "demo.log"
    proc = ServerProcess(["--demo", "--data-dir", str(tmp_path / "data")], log_path=log)
    proc.start(timeout=60)
    try:
        assert (tmp_path / "data" / "users.parquet").exists()
        wait_until(lambda: "curl" in proc.read_log(), 10, "the demo banner")
        text = proc.read_log()
        curl = text[text.index("curl -s") : text.index("}'", text.index("curl -s")) + 2].replace("\\\n", " ")
        out = subprocess.run(shlex.split(curl), capture_output=True, text=True, timeout=10)
        doc = json.loads(out.stdout)
        assert doc["metadata"]["feature_names"] == ["user_id", "age", "ctr_30d"]
        assert doc["results"][1]["values"] == [71, 41]
        # the multi-source join of the demo: memory views and the embedded ClickHouse view
        status, risk = proc.join({"entities": {"user_id": [17, 4242]}, "feature_service": "risk_v1"})
        cols = dict(zip(risk["metadata"]["feature_names"], risk["results"], strict=True))
        assert status == 200 and cols["txn_count_90d"]["statuses"] == ["PRESENT", "PRESENT"]
        assert cols["txn_count_90d"]["values"][0] == 7 and cols["credit_score"]["values"][0] == 651.03
        ready = json.loads(http_get(proc.url + "/readyz")[1])
        assert ready["stores"] == {"default": "ready", "analytics": "ready"}
        cache_series = [
            line
            for line in http_get(proc.url + "/metrics")[1].decode().splitlines()
            if line.startswith(
                ("featurestore_cache_evictions_total{", "featurestore_cache_rejections_total{")
            )
        ]
        assert cache_series and all('store="analytics"' in line for line in cache_series), cache_series
        metrics_text = http_get(proc.url + "/metrics")[1].decode()
        full = re.search(r'^featurestore_gc_pause_seconds_count\{generation="2"\} (\S+)$', metrics_text, re.M)
        assert full is not None and float(full.group(1)) >= 1, "start-up's full collection, timed"
        assert 'featurestore_gc_pause_seconds_count{generation="0"}' in metrics_text
    finally:
        assert proc.stop() == 0
    assert "stopped" in proc.read_log()


def test_sigterm_drains_inflight_requests(test_repo: Path, tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(
        f"registry: {{path: {tmp_path / 'reg'}}}\nstores: {{default: {{kind: memory}}, local: {{kind: memory}}}}\n"
        # 10 s, not the 500 ms default: six threads of 200-row joins on the loaded CI machine
        "limits: {deadline_ms: 10000}\n"
    )
    proc = ServerProcess(
        ["--config", str(config), "--definitions", str(test_repo)], log_path=tmp_path / "log"
    ).start()
    body = json.dumps({"entities": {"user_id": list(range(1, 201))}, "feature_service": "ranker_v1"}).encode()
    statuses: list[int] = []
    errors: list[str] = []
    drained = threading.Event()

    def load() -> None:
        try:
            status, raw, _ = http_post(proc.url + "/v1/feature/join", body, timeout=10)
        except OSError as e:  # refused once the listener closed: expected
            errors.append(type(e).__name__)
            drained.wait(30)  # nothing more to send to: wait for the drain to end
            return
        statuses.append(status)
        if status == 200:
            assert len(json.loads(raw)["results"]) == 17  # a complete response

    try:
        with Background(load, threads=6):
            wait_until(lambda: len(statuses) > 50, 20, "load to build up")
            code = proc.stop(signal.SIGTERM, timeout=20)
            drained.set()
    finally:
        drained.set()
        proc.stop()
    assert code == 0
    assert set(statuses) == {200}  # nothing accepted was failed or cut short
    assert "draining in-flight requests" in proc.read_log() and "stopped" in proc.read_log()


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def test_two_workers_share_the_ports_the_metrics_and_not_their_lineage_identity(
    tmp_path: Path, test_repo: Path, kafka: TansuBroker
) -> None:
    from confluent_kafka import Consumer, TopicPartition

    topic = f"lineage-workers-{uuid.uuid4().hex[:6]}"
    config = tmp_path / "config.yaml"
    config.write_text(
        f"registry: {{path: {tmp_path / 'registry'}}}\n"
        "stores: {default: {kind: memory}, local: {kind: memory}}\n"
        "lineage:\n  sink: kafka\n  graphql: false\n  window_seconds: 0.5\n"
        f"  kafka: {{bootstrap_servers: '{kafka.bootstrap}', topic: {topic}, partitions: 1}}\n"
    )
    proc = ServerProcess(
        ["--config", str(config), "--definitions", str(test_repo), "--workers", "2"],
        log_path=tmp_path / "log",
    ).start()
    try:
        assert proc.proc is not None
        supervisor = proc.proc.pid
        wait_until(lambda: len(_children(supervisor)) == 2, 20, "two workers")
        body = json.dumps({"entities": {"user_id": [1, 2]}, "features": ["user_profile:age"]}).encode()
        consumer = Consumer(
            {"bootstrap.servers": kafka.bootstrap, "group.id": topic, "auto.offset.reset": "earliest"}
        )
        # The topic's one partition from its start, without a consumer group's join (which
        # took most of this test's 27 s on a loaded machine and ran past 60 s beside a
        # second pytest process)
        consumer.assign([TopicPartition(topic, 0, 0)])
        services: set[str] = set()
        sent = 0

        def both_workers_served() -> bool:
            # A fresh connection per request: the kernel spreads them over the workers
            # (the second may still be starting when the first answers readiness).
            nonlocal sent
            for _ in range(10):
                assert http_post(proc.url + "/v1/feature/join", body)[0] == 200
            sent += 10
            msg = consumer.poll(0.5)
            while msg is not None:
                if not msg.error() and msg.value():
                    services.add(json.loads(msg.value() or b"")["service"])
                msg = consumer.poll(0)
            return len(services) >= 2

        try:
            wait_until(both_workers_served, 60, "lineage events from both workers", interval=0)
        finally:
            consumer.close()
        assert {s.rsplit("/", 1)[1] for s in services} == {"w0", "w1"}, services

        def counted() -> float:
            text = http_get(proc.url + "/metrics")[1].decode()
            return sum(
                float(m)
                for m in re.findall(
                    r'^featurestore_requests_total\{[^}]*route="/v1/feature/join"[^}]*\} (\S+)$', text, re.M
                )
            )

        # whichever worker answers the scrape reports both workers' requests
        wait_until(lambda: counted() == sent, 10, f"the metrics of both workers to add up to {sent}")

        # a worker that dies is replaced, its live gauges leave the scrape, and the
        # server keeps answering
        victim = _children(supervisor)[0]
        environ = Path(f"/proc/{victim}/environ").read_bytes().split(b"\0")
        metrics_dir = Path(
            next(e for e in environ if e.startswith(b"PROMETHEUS_MULTIPROC_DIR=")).split(b"=", 1)[1].decode()
        )
        assert list(metrics_dir.glob(f"gauge_live*_{victim}.db"))
        os.kill(victim, signal.SIGKILL)
        wait_until(
            lambda: len(_children(supervisor)) == 2 and victim not in _children(supervisor),
            20,
            "the worker to be replaced",
        )
        assert not list(metrics_dir.glob(f"gauge_live*_{victim}.db"))
        wait_until(lambda: http_post(proc.url + "/v1/feature/join", body)[0] == 200, 20, "serving again")
    finally:
        assert proc.stop() == 0


def test_workers_do_not_outlive_a_killed_supervisor(tmp_path: Path, test_repo: Path) -> None:
    """SIGKILL (or the OOM killer) gives the supervisor no chance to forward signals:
    its workers must still go, not hold the ports as orphans."""
    config = tmp_path / "config.yaml"
    config.write_text(
        f"registry: {{path: {tmp_path / 'registry'}}}\nstores: {{default: {{kind: memory}}, local: {{kind: memory}}}}\n"
    )
    proc = ServerProcess(
        ["--config", str(config), "--definitions", str(test_repo), "--workers", "2"],
        log_path=tmp_path / "log",
    ).start()
    assert proc.proc is not None
    supervisor = proc.proc.pid
    workers: list[int] = []
    try:
        wait_until(lambda: len(_children(supervisor)) == 2, 20, "two workers")
        workers = _children(supervisor)
        proc.kill()  # SIGKILL: the supervisor cannot forward anything
        wait_until(lambda: not any(is_running(w) for w in workers), 20, "the workers to exit")
    finally:
        proc.kill()
        for w in workers:  # only if the test failed: never leave them running
            if is_running(w):
                os.kill(w, signal.SIGKILL)
