"""Load shedding in a real server: joins pile up behind a frozen Redis until the worker's
in-flight cap, and the rest are shed at once (HTTP 503 with Retry-After and the JSON
error body, gRPC RESOURCE_EXHAUSTED, counted); once Redis answers again, joins succeed.
The bundled client comes back to a shed join no sooner than its Retry-After."""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from featurestore.client import FeatureClient, FeatureServiceError, ResourceExhaustedError, UnavailableError
from featurestore.refusal import RETRY_AFTER_SECONDS
from featurestore.v1 import featurestore_pb2 as pb
from featurestore.v1 import featurestore_pb2_grpc as pbg
from tests.integration.test_redis_serving import materialize
from tests.servers import RedisServer
from tests.support import ServerProcess, http_get, http_post, wait_until

CAP = 3
ENTITIES = {"user_id": [1]}
FEATURES = ["user_profile:age"]
JOIN = {"entities": ENTITIES, "features": FEATURES}


class Stack:
    # 5 s: the held joins leave the frozen store at 4.5 s (the answer's margin kept), and the
    # shedding checks and scrapes must be done by then on a loaded machine
    def __init__(
        self, tmp: Path, test_repo: Path, demo_dir: Path, deadline_ms: int = 5000, limits: str = ""
    ) -> None:
        self.redis = RedisServer(tmp / "redis").start()
        config = tmp / "config.yaml"
        # No cache (every join reads Redis) and a health round too slow to open the
        # circuit during the test: joins wait on the frozen store until their deadline.
        # Only the cap sheds here: a lag target no loaded CI machine reaches.
        config.write_text(
            f"registry: {{path: {tmp / 'registry'}, definitions: {test_repo}}}\n"
            f"stores:\n  default: {{kind: redis, url: '{self.redis.url}', cache: false, health_interval_ms: 600000}}\n"
            "  local: {kind: memory}\n"
            f"limits: {{deadline_ms: {deadline_ms}, max_inflight: {CAP}, shed_target_ms: 60000{limits}}}\n"
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

    def hold_the_cap(self, timeout: float = 10.0) -> tuple[list[threading.Thread], list[int]]:
        """Freeze Redis and start CAP joins that wait on it: the worker sheds what follows
        until Redis is resumed (or their deadline passes)."""
        self.redis.pause()
        statuses: list[int] = []
        body = json.dumps(JOIN).encode()
        url = self.server.url + "/v1/feature/join"
        hangers = [
            threading.Thread(
                target=lambda: statuses.append(http_post(url, body, timeout=timeout)[0]), daemon=True
            )
            for _ in range(CAP)
        ]
        for t in hangers:
            t.start()
        wait_until(
            lambda: self.metric(r'^featurestore_inflight_requests\{protocol="http"\} (\S+)$') >= CAP,
            10,
            "the worker to hold its cap of joins waiting on the frozen store",
        )
        return hangers, statuses

    def requests(self, route: str, protocol: str, outcome: str) -> float:
        text = http_get(self.server.url + "/metrics")[1].decode()
        want = {"route": route, "protocol": protocol, "outcome": outcome}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "featurestore_requests_total" and sample.labels == want:
                    return float(sample.value)
        return 0.0

    def shed_count(self, api: str, reason: str = "inflight") -> float:
        return self.metric(rf'^featurestore_requests_shed_total\{{api="{api}",reason="{reason}"\}} (\S+)$')


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
    hangers, statuses = stack.hold_the_cap()

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

    assert stack.shed_count("http") == 1 and stack.shed_count("grpc") == 1
    # counted as shed on both protocols, not as the server error UNAVAILABLE (FeatureStoreJoinErrors)
    for route, protocol, code in (
        ("/v1/feature/join", "http", "UNAVAILABLE"),
        ("/featurestore.v1.FeatureService/Join", "grpc", "RESOURCE_EXHAUSTED"),
    ):
        assert stack.requests(route, protocol, "shed") == 1 and stack.requests(route, protocol, code) == 0

    stack.redis.resume()
    for t in hangers:
        t.join(30)
    assert len(statuses) == CAP and 503 not in statuses  # the joins that waited were answered
    status, doc = server.join({"entities": {"user_id": [2, 3]}, "features": ["user_profile:age"]})
    assert status == 200 and doc["results"][1]["statuses"] == ["PRESENT", "PRESENT"]


@pytest.fixture
def long_stack(tmp_path: Path, test_repo: Path, demo_dir: Path) -> Iterator[Stack]:
    """A stack whose joins wait up to 30 s on the frozen store: shedding lasts while the
    client's retries wait out Retry-After."""
    s = Stack(tmp_path, test_repo, demo_dir, deadline_ms=30_000)
    yield s
    s.redis.resume()
    s.stop()


@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_the_client_retries_a_shed_join_only_after_retry_after_and_never_past_its_deadline(
    long_stack: Stack, transport: str
) -> None:
    stack, server = long_stack, long_stack.server
    assert server.join(JOIN)[0] == 200
    hangers, statuses = stack.hold_the_cap(timeout=60)
    where = server.url if transport == "http" else f"grpc://{server.grpc_target}"
    api = "http" if transport == "http" else "grpc"
    shed_error = UnavailableError if transport == "http" else ResourceExhaustedError

    # Retry-After (1 s) is past a 0.9 s deadline: one try, raised at once, saying when to come back
    # (0.9, not 0.5: the try itself must come back before the deadline on the loaded CI machine)
    retried: list[int] = []
    before = stack.shed_count(api)
    with (
        FeatureClient(where, on_retry=lambda n, e: retried.append(n)) as client,
        pytest.raises(shed_error) as raised,
    ):
        client.join(ENTITIES, FEATURES, deadline=0.9)
    assert raised.value.retry_after == RETRY_AFTER_SECONDS and retried == []
    assert stack.shed_count(api) == before + 1

    # A deadline with room: each retry waits out Retry-After, not the 50 ms backoff
    before = stack.shed_count(api)
    started = time.monotonic()
    with (
        FeatureClient(where, retries=2, on_retry=lambda n, e: retried.append(n)) as client,
        pytest.raises(FeatureServiceError) as raised,
    ):
        client.join(ENTITIES, FEATURES, deadline=20)
    waited = time.monotonic() - started
    assert isinstance(raised.value, shed_error) and retried == [1, 2]
    assert stack.shed_count(api) == before + 3
    assert waited >= 2 * RETRY_AFTER_SECONDS  # two waits of at least Retry-After each

    stack.redis.resume()
    for t in hangers:
        t.join(30)
    assert len(statuses) == CAP and 503 not in statuses


@pytest.fixture
def row_stack(tmp_path: Path, test_repo: Path, demo_dir: Path) -> Iterator[Stack]:
    """A stack whose workers cap the rows of their joins in flight at 10 (while their
    event loop runs late), with room for more joins than that by count."""
    s = Stack(tmp_path, test_repo, demo_dir, limits=", shed_max_rows: 10, max_inflight: 64")
    yield s
    s.redis.resume()
    s.stop()


def test_joins_waiting_on_a_frozen_store_hold_their_rows_and_are_never_shed_for_them(
    row_stack: Stack,
) -> None:
    """The row cap bounds a queue of work on the event loop; joins waiting on a paused
    Redis leave the loop idle: past the cap, they wait for the store (the cap's shedding
    itself is in tests/unit/test_row_cap.py, where a test sets the loop's lag)."""
    stack, server = row_stack, row_stack.server
    url = server.url + "/v1/feature/join"
    assert server.join(JOIN)[0] == 200
    stack.redis.pause()
    statuses: list[int] = []
    joins = [{"entities": {"user_id": list(range(1, 9))}, "features": FEATURES}] * 2  # 8 + 8 rows > 10
    hangers = [
        threading.Thread(
            target=lambda j=j: statuses.append(http_post(url, json.dumps(j).encode(), timeout=10)[0]),
            daemon=True,
        )
        for j in joins
    ]
    for t in hangers:
        t.start()
    wait_until(  # both counted in: the rows gauge (each worker's, reported every 250 ms)
        lambda: stack.metric(r"^featurestore_join_inflight_rows (\S+)$") == 16,
        10,
        "the 16 rows of the two joins waiting on the frozen store",
    )
    stack.redis.resume()
    for t in hangers:
        t.join(30)
    assert statuses == [200, 200] and stack.shed_count("http", "rows") == 0
    wait_until(
        lambda: stack.metric(r"^featurestore_join_inflight_rows (\S+)$") == 0, 10, "the rows to be given back"
    )
