"""The client takes every answer the server is allowed to send: a join whose gRPC
response is over grpc's default 4 MB receive limit (the server sends up to 64 MiB)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from featurestore.client import FeatureClient, Status
from tests.support import ServerProcess

ROWS = 40_000  # x 16 features: ~5 MB of values, statuses and event times in one message
FEATURES = [
    f"user_activity:{f}" for f in ("sessions_7d", "sessions_30d", "avg_session_minutes", "clicks_7d")
] + [f"user_profile:{f}" for f in ("age", "tenure_days", "num_devices", "lifetime_value", "credit_score")]


@pytest.fixture(scope="module")
def big(test_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    work = tmp_path_factory.mktemp("client-limits")
    config = work / "config.yaml"
    config.write_text(
        f"registry: {{path: {work / 'registry'}}}\n"
        "stores: {default: {kind: memory}, local: {kind: memory}}\n"
        f"limits: {{max_rows: {ROWS}, deadline_ms: 10000}}\n"
    )
    proc = ServerProcess(
        ["--config", str(config), "--definitions", str(test_repo)], log_path=work / "server.log"
    ).start()
    yield proc
    proc.stop()


@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_a_join_answer_over_4_mb_reaches_the_client(big: ServerProcess, transport: str) -> None:
    address = big.url if transport == "http" else f"grpc://{big.grpc_target}"
    with FeatureClient(address, deadline=30) as client:
        result = client.join({"user_id": list(range(1, ROWS + 1))}, FEATURES)
    assert len(result.columns) == len(FEATURES) + 1
    assert all(len(c.values) == ROWS for c in result.columns)
    assert result.columns[-1].statuses[0] is Status.PRESENT
