"""Load shedding in a real server: joins pile up behind a frozen Redis until the worker's
in-flight cap, and the rest are shed at once (HTTP 503 with Retry-After and the JSON
error body, gRPC RESOURCE_EXHAUSTED, counted); once Redis answers again, joins succeed."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from featurestore.v1 import featurestore_pb2 as pb
from featurestore.v1 import featurestore_pb2_grpc as pbg
from tests.integration.test_redis_serving import materialize
from tests.servers import RedisServer
from tests.support import ServerProcess, http_get, http_post, wait_until

CAP = 3
JOIN = {"entities": {"user_id": [1]}, "features": ["user_profile:age"]}


class Stack:
    def __init__(self, tmp: Path, test_repo: Path, demo_dir: Path) -> None:
        self.redis = RedisServer(tmp / "redis").start()
        config = tmp / "config.yaml"
        # No cache (every join reads Redis) and a health round too slow to open the
        # circuit during the test: joins wait on the frozen store until their deadline.
        # Only the cap sheds here: a lag target no loaded CI machine reaches.
        config.write_text(
            f"registry: {{path: {tmp / 'registry'}, definitions: {test_repo}}}\n"
            f"stores:\n  default: {{kind: redis, url: '{self.redis.url}', cache: false, health_interval_ms: 600000}}\n"
            "  local: {kind: memory}\n"
            f"limits: {{deadline_ms: 3000, max_inflight: {CAP}, shed_target_ms: 60000}}\n"
        )
        try:
            for view in ("user_profile", "user_activity"):
                materialize(config, view, demo_dir / "users.parquet")
            self.server = ServerProcess(
                ["--config", str(config), "--no-apply"], log_path=tmp / "server.log"
            ).start()
        except BaseException:
            self.redis.stop()
            raise

    def metric(self, pattern: str) -> float:
        text = http_get(self.server.url + "/metrics")[1].decode()
        m = re.search(pattern, text, re.M)
        return float(m.group(1)) if m else 0.0

    def stop(self) -> None:
        self.server.stop()
        self.redis.stop()


@pytest.fixture
def stack(tmp_path: Path, test_repo: Path, demo_dir: Path) -> Iterator[Stack]:
    s = Stack(tmp_path, test_repo, demo_dir)
    yield s
    s.redis.resume()
    s.stop()


def test_joins_beyond_the_in_flight_cap_are_shed_at_once_and_served_again_when_the_store_answers(
    stack: Stack,
) -> None:
    server = stack.server
    assert server.join(JOIN)[0] == 200
    wait_until(  # the worker samples its event loop: its limit is reported, at the cap
        lambda: stack.metric(r"^featurestore_join_inflight_limit (\S+)$") == CAP,
        10,
        "the worker's shedder to report its in-flight limit",
    )
    stack.redis.pause()
    statuses: list[int] = []
    hangers = [
        threading.Thread(target=lambda: statuses.append(server.join(JOIN)[0]), daemon=True)
        for _ in range(CAP)
    ]
    for t in hangers:
        t.start()
    wait_until(
        lambda: stack.metric(r'^featurestore_inflight_requests\{protocol="http"\} (\S+)$') >= CAP,
        10,
        "the worker to hold its cap of joins waiting on the frozen store",
    )

    status, raw, headers = http_post(server.url + "/v1/feature/join", json.dumps(JOIN).encode())
    assert status == 503 and headers.get("retry-after", headers.get("Retry-After")) == "1"
    error = json.loads(raw)["error"]
    assert error["code"] == "UNAVAILABLE" and "overloaded" in error["message"]
    assert error["details"] == [{"reason": "inflight", "retry_after_seconds": 1}]

    with grpc.insecure_channel(server.grpc_target) as ch:
        request = pb.JoinRequest(features=JOIN["features"])
        request.entities.add(name="user_id").int64_values.values.append(1)
        with pytest.raises(grpc.RpcError) as e:
            pbg.FeatureServiceStub(ch).Join(request, timeout=5)  # type: ignore[no-untyped-call]
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "overloaded" in (e.value.details() or "")

    shed = r'^featurestore_requests_shed_total\{{api="{}",reason="inflight"\}} (\S+)$'
    assert stack.metric(shed.format("http")) == 1 and stack.metric(shed.format("grpc")) == 1

    stack.redis.resume()
    for t in hangers:
        t.join(30)
    assert len(statuses) == CAP and 503 not in statuses  # the joins that waited were answered
    status, doc = server.join({"entities": {"user_id": [2, 3]}, "features": ["user_profile:age"]})
    assert status == 200 and doc["results"][1]["statuses"] == ["PRESENT", "PRESENT"]
