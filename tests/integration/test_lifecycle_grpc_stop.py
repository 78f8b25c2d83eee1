"""A real server stopped under gRPC load drains the Join calls in flight at its SIGTERM
instead of cancelling them: grpc core's stop cancels every call it still queues for a
take-up (grpc_intake.py, "The stop"), and with ``grpc.intake_loops: 0`` grpc.aio's one
take-up a loop wakeup leaves most of a busy worker's calls queued (review s55: 4-6 of 8
calls in flight ended CANCELLED at every stop, with a stream or a unary Join)."""

from __future__ import annotations

import collections
import signal
import threading
import time
from pathlib import Path

import grpc
import pytest

from featurestore.v1 import featurestore_pb2 as pb
from featurestore.v1 import featurestore_pb2_grpc as pb_grpc
from tests.support import ServerProcess

CALLERS = 8
KEYS = 3000  # a join that keeps the event loop busy (~10-30 ms), so calls queue in core
GUARD = 30.0  # seconds; only turns a hang into a failure


def request() -> pb.JoinRequest:
    users = pb.EntityColumn(name="user_id", int64_values=pb.Int64List(values=list(range(1, KEYS + 1))))
    return pb.JoinRequest(entities=[users], features=["user_profile:age", "user_activity:ctr_30d"])


@pytest.mark.parametrize("unary_join", [False, True])
def test_join_calls_in_flight_at_the_stop_are_answered_not_cancelled_with_no_intake_loops(
    tmp_path: Path, test_repo: Path, unary_join: bool
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(
        f"registry: {{path: {tmp_path / 'registry'}}}\n"
        "stores: {default: {kind: memory}, local: {kind: memory}}\n"
        f"grpc: {{intake_loops: 0, unary_join: {str(unary_join).lower()}}}\n"
        "limits: {deadline_ms: 10000}\n"  # (the load's joins are answered, not cut short)
    )
    server = ServerProcess(
        ["--config", str(config), "--definitions", str(test_repo)], log_path=tmp_path / "log"
    ).start()
    outcomes: collections.Counter[tuple[str, str]] = collections.Counter()
    lock = threading.Lock()
    signalled: list[float] = []
    req = request()

    def call() -> None:
        with grpc.insecure_channel(server.grpc_target) as channel:
            join = pb_grpc.FeatureServiceStub(channel).Join  # type: ignore[no-untyped-call]
            while not signalled or time.monotonic() - signalled[0] < 3:
                phase = "after" if signalled else "before"  # (read when the call starts)
                try:
                    join(req, timeout=GUARD)
                    outcome = "OK"
                except grpc.RpcError as e:
                    outcome = e.code().name
                    if signalled:
                        time.sleep(0.05)  # the port is closing: no busy loop
                with lock:
                    outcomes[(phase, outcome)] += 1

    callers = [threading.Thread(target=call, daemon=True) for _ in range(CALLERS)]
    try:
        for t in callers:
            t.start()
        time.sleep(2)  # every caller's channel connected and calling
        assert server.proc is not None
        signalled.append(time.monotonic())
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(GUARD) == 0
        for t in callers:
            t.join(GUARD)
    finally:
        server.stop()
    before = {outcome: n for (phase, outcome), n in outcomes.items() if phase == "before"}
    # every call started before the signal (8 of them in flight at it) was answered
    assert set(before) == {"OK"}, outcomes
    assert before["OK"] >= CALLERS, outcomes
