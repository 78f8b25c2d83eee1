"""End to end on real servers: definitions applied -> Neo4j-compatible graph (ArcadeDB
over Bolt); joins on a running server -> Kafka (Tansu) -> `featurestore lineage consume`
-> graph; a GraphQL query on the server returns the upstream table of the feature just
served."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

from tests.harness import ManagedProcess
from tests.servers import ArcadeServer, TansuBroker
from tests.support import ROOT, ServerProcess, free_port, http_get, http_post, wait_until


def gql(server: ServerProcess, query: str) -> dict[str, Any]:
    _, raw, _ = http_post(server.url + "/graphql", json.dumps({"query": query}).encode())
    doc: dict[str, Any] = json.loads(raw)
    assert "errors" not in doc, doc
    data: dict[str, Any] = doc["data"]
    return data


class LineageConsumerProcess(ManagedProcess):
    """`featurestore lineage consume`, ready once its metrics endpoint answers."""

    def __init__(self, config: Path, log_path: Path) -> None:
        self.metrics_port = free_port()
        super().__init__(f"lineage consumer with metrics on {self.metrics_port}", log_path)
        self.config = config
        self.cwd = ROOT

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def command(self) -> list[str]:
        return [sys.executable, "-m", "featurestore.cli", "lineage", "consume", "--config", str(self.config),
                "--metrics-port", str(self.metrics_port)]  # fmt: skip

    def answers(self) -> bool:
        try:
            return http_get(self.metrics_url, timeout=1)[0] == 200
        except OSError:
            return False


def test_joins_to_kafka_to_graph_to_graphql(
    tmp_path: Path, test_repo: Path, kafka: TansuBroker, arcade: ArcadeServer
) -> None:
    arcade.wipe()
    topic = f"lineage-e2e-{uuid.uuid4().hex[:6]}"
    config = tmp_path / "config.yaml"
    config.write_text(
        f"registry: {{path: {tmp_path / 'registry'}}}\n"
        "stores: {default: {kind: memory}, local: {kind: memory}}\n"
        "lineage:\n"
        "  sink: kafka\n  graph: bolt\n  window_seconds: 0.5\n"
        f"  kafka: {{bootstrap_servers: '{kafka.bootstrap}', topic: {topic}, partitions: 2, group_id: e2e, session_timeout_ms: 2000}}\n"
        f"  bolt: {{uri: '{arcade.uri}', user: {arcade.USER}, password: {arcade.PASSWORD}, database: {arcade.DATABASE}}}\n"
    )
    apply = subprocess.run(
        [sys.executable, "-m", "featurestore.cli", "apply", str(test_repo), "--config", str(config)],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )  # fmt: skip
    assert apply.returncode == 0, apply.stderr
    assert "definitions of version 1 written to bolt://" in apply.stdout

    server = ServerProcess(["--config", str(config)], log_path=tmp_path / "server.log").start()
    consumer = LineageConsumerProcess(config, tmp_path / "consumer.log")
    try:
        consumer.start()
        # lineage from definitions exists before the first read
        before = gql(
            server, '{ feature(id: "user_item:affinity") { upstream { id } producedBy { name role } } }'
        )
        assert [u["id"] for u in before["feature"]["upstream"]] == ["item:price", "user_profile:age"]
        assert {"name": "warehouse.clicks", "role": "upstream"} in before["feature"]["producedBy"]

        status, _ = server.join(
            {"entities": {"user_id": [1, 2], "item_id": [1, 2]}, "feature_service": "candidates_v1"}
        )
        assert status == 200
        query = (
            '{ feature(id: "user_profile:age") { producedBy { name role } servedBy { server count } } '
            'table(name: "warehouse.users") { impact { featureServices } } }'
        )

        def arrived() -> bool:
            return bool(gql(server, query)["feature"]["servedBy"])

        wait_until(arrived, 60, "the served feature's lineage in the graph", interval=0.2)
        data = gql(server, query)
        tables = {(t["name"], t["role"]) for t in data["feature"]["producedBy"]}
        assert ("warehouse.users", "upstream") in tables  # the upstream table of the feature just served
        assert ("memory://default/user_profile", "online") in tables
        assert data["feature"]["servedBy"][0]["count"] == 2
        assert "candidates_v1" in data["table"]["impact"]["featureServices"]
        text = http_get(consumer.metrics_url)[1].decode()
        assert "featurestore_lineage_event_to_graph_seconds_count" in text
        assert 'featurestore_lineage_consumed_total{outcome="written"}' in text
        assert "featurestore_registry_connected" not in text  # (a consumer serves no snapshot)
    finally:
        code = consumer.stop(timeout=30)
        server.stop()
    assert code == 0 and "lineage consumer stopped:" in consumer.read_log()
