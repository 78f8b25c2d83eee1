"""The gRPC API of a real server process: values, parity with HTTP, health, reflection."""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from featurestore.api.proto_codec import column_values
from featurestore.api.timestamps import iso_utc
from featurestore.demo.data import FEATURE_REFS
from featurestore.v1 import featurestore_pb2 as pb
from featurestore.v1 import featurestore_pb2_grpc as pbg
from tests.support import MERCHANTS, ServerProcess, http_get


@pytest.fixture(scope="module")
def channel(server: ServerProcess) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(server.grpc_target) as ch:
        yield ch


def grpc_request(body: dict[str, Any]) -> pb.JoinRequest:
    req = pb.JoinRequest(
        features=body.get("features", []),
        feature_service=body.get("feature_service", ""),
        full_feature_names=body.get("full_feature_names", False),
    )
    for name, values in body["entities"].items():
        col = req.entities.add(name=name)
        if values and isinstance(values[0], str):
            col.string_values.values.extend(values)
        else:
            col.int64_values.values.extend(values)
    return req


# A gRPC column's type is the oneof its values are in; HTTP names it in metadata.dtypes.
GRPC_DTYPES = {
    "int64_values": "int64",
    "double_values": "float64",
    "string_values": "string",
    "bool_values": "bool",
    "timestamp_values": "timestamp",
    "vector_values": "float32_vector",
}


def as_http_shape(resp: pb.JoinResponse) -> dict[str, Any]:
    """A gRPC response in the HTTP JSON shape (timestamps rendered the same way)."""
    results = []
    for name, col in zip(resp.metadata.feature_names, resp.results, strict=True):
        values = column_values(col)
        if col.WhichOneof("values") == "timestamp_values":
            values = [None if v is None else iso_utc(v) for v in values]
        if col.WhichOneof("values") == "vector_values":
            values = [None if v is None else [float(x) for x in v] for v in values]
        results.append(
            {
                "values": values,
                "statuses": [pb.Status.Name(s) for s in col.statuses],
                "event_timestamps": [iso_utc(t) if t else None for t in col.event_timestamps],
            }
        )
        del name
    return {
        "metadata": {
            "feature_names": list(resp.metadata.feature_names),
            "dtypes": [GRPC_DTYPES[str(col.WhichOneof("values"))] for col in resp.results],
            "registry_version": resp.metadata.registry_version,
            "partial": resp.metadata.partial,
        },
        "results": results,
    }


def test_grpc_join_values(channel: grpc.Channel) -> None:
    stub = pbg.FeatureServiceStub(channel)  # type: ignore[no-untyped-call]
    resp = stub.Join(
        grpc_request({"entities": {"user_id": [1, 10**12]}, "features": FEATURE_REFS}), timeout=5
    )
    names = list(resp.metadata.feature_names)
    cols = dict(zip(names, resp.results, strict=True))
    assert column_values(cols["age"]) == [72, None]
    assert list(cols["age"].statuses) == [pb.PRESENT, pb.NOT_FOUND]
    assert column_values(cols["country"]) == ["AU", None]
    assert cols["ctr_30d"].WhichOneof("values") == "double_values"
    assert cols["user_id"].int64_values.values == [1, 10**12]
    assert len(resp.metadata.trace_id) == 32


def _random_bodies(n: int) -> list[dict[str, Any]]:
    rnd = random.Random(11)
    bodies: list[dict[str, Any]] = []
    for _ in range(n):
        kind = rnd.choice(["users", "service", "candidates", "merchants"])
        if kind == "users":
            ids = [
                rnd.choice([rnd.randint(1, 100_000), rnd.randint(100_001, 10**9)])
                for _ in range(rnd.choice([1, 7, 50]))
            ]
            bodies.append(
                {"entities": {"user_id": ids}, "features": rnd.sample(FEATURE_REFS, rnd.randint(1, 16))}
            )
        elif kind == "service":
            bodies.append(
                {
                    "entities": {"user_id": [rnd.randint(1, 100_000)]},
                    "feature_service": "ranker_v1",
                    "full_feature_names": True,
                }
            )
        elif kind == "candidates":
            items = [rnd.randint(1, 600) for _ in range(20)]
            bodies.append(
                {
                    "entities": {"user_id": [rnd.randint(1, 25)] * 20, "item_id": items},
                    "feature_service": "candidates_v1",
                }
            )
        else:
            keys = rnd.sample([*MERCHANTS, "unknown-1", "unknown-2"], 8)
            feats = ["risk_score", "is_blocked", "opened_at", "embedding", "txn_count", "label"]
            bodies.append({"entities": {"merchant_id": keys}, "features": [f"merchant:{f}" for f in feats]})
    return bodies


def test_http_and_grpc_return_identical_values(server: ServerProcess, channel: grpc.Channel) -> None:
    stub = pbg.FeatureServiceStub(channel)  # type: ignore[no-untyped-call]
    for body in _random_bodies(60):
        status, http_doc = server.join(body)
        assert status == 200, http_doc
        grpc_doc = as_http_shape(stub.Join(grpc_request(body), timeout=5))
        http_doc["metadata"].pop("trace_id")
        for col in http_doc["results"]:  # float32 vectors: both sides carry float32 values
            col["values"] = [[float(x) for x in v] if isinstance(v, list) else v for v in col["values"]]
        assert grpc_doc == http_doc, body


def test_health_and_reflection(channel: grpc.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "featurestore.v1.FeatureService"):
        resp = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        assert resp.status == health_pb2.HealthCheckResponse.SERVING
    refl = reflection_pb2_grpc.ServerReflectionStub(channel)
    answers = list(
        refl.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5)
    )
    names = {s.name for s in answers[0].list_services_response.service}
    assert "featurestore.v1.FeatureService" in names
    assert "grpc.health.v1.Health" in names


def test_grpc_push_takes_an_int64_column_into_a_float_column(channel: grpc.Channel) -> None:
    """An int64 column for a float64 feature: values beyond 2**53 are stored as the
    nearest double, not refused by pyarrow as INTERNAL."""
    req = pb.PushRequest(feature_view="merchant")
    req.columns.add(name="merchant_id").string_values.values.append("push-grpc-big")
    req.columns.add(name="risk_score").int64_values.values.append(2**60)
    req.columns.add(name="is_blocked").bool_values.values.append(False)
    req.columns.add(name="opened_at").timestamp_values.values.append(1_704_067_200_000_000)
    req.columns.add(name="embedding").vector_values.values.add().values.extend([float(2**60), 1.0])
    req.columns.add(name="txn_count").int64_values.values.append(1)
    req.columns.add(name="label").string_values.values.append("pushed")
    stub = pbg.FeatureServiceStub(channel)  # type: ignore[no-untyped-call]
    assert stub.Push(req, timeout=5).rows_written == 1
    resp = stub.Join(
        grpc_request(
            {
                "entities": {"merchant_id": ["push-grpc-big"]},
                "features": ["merchant:risk_score", "merchant:embedding"],
            }
        ),
        timeout=5,
    )
    cols = dict(zip(resp.metadata.feature_names, resp.results, strict=True))
    assert column_values(cols["risk_score"]) == [float(2**60)]
    assert [list(v) for v in column_values(cols["embedding"])] == [[float(2**60), 1.0]]


def test_the_server_takes_up_grpc_joins_through_its_call_intake(
    server: ServerProcess, channel: grpc.Channel
) -> None:
    # featurestore_grpc_intake_loops reads grpc.intake_loops (16) only when process.py
    # started the intake on the running server with the Join method grpc registered: a
    # wrong name fails every loop's first take-up (the gauge counts them down), missing
    # grpc internals leave it at 0.
    stub = pbg.FeatureServiceStub(channel)  # type: ignore[no-untyped-call]
    futures = [
        stub.Join.future(
            grpc_request({"entities": {"user_id": [i]}, "features": ["user_profile:age"]}), timeout=10
        )
        for i in range(32)
    ]
    assert all(f.result().results for f in futures)
    text = http_get(server.url + "/metrics")[1].decode()
    assert "featurestore_grpc_intake_loops 16.0" in text.splitlines()
    assert "featurestore_grpc_intake_internals_missing 0.0" in text.splitlines()
