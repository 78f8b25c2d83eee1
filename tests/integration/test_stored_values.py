"""A real server on a real Redis (pushes, rows another writer left) and the memory store
(a Parquet load): what the join's contract says of output names and stored values,
checked over every encoding a client can ask for (JSON, Arrow IPC, gRPC)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from featurestore.v1 import featurestore_pb2 as pb
from featurestore.v1 import featurestore_pb2_grpc as pbg
from tests.servers import RedisServer
from tests.support import ServerProcess

DEFINITIONS = """
project: demo
entities:
  - {name: user_id, dtype: int64}
  - {name: item_id, dtype: int64}
feature_views:
  - name: user_profile
    entities: [user_id]
    features:
      - {name: item_id, dtype: int64}
      - {name: score, dtype: float64}
      - {name: vec, dtype: float32_vector}
"""


class Stack:
    def __init__(self, tmp: Path) -> None:
        self.redis = RedisServer(tmp / "redis").start()
        try:
            (tmp / "features.yaml").write_text(DEFINITIONS)
            config = tmp / "config.yaml"
            config.write_text(
                f"registry: {{path: {tmp / 'registry'}}}\n"
                f"stores: {{default: {{kind: redis, url: '{self.redis.url}', cache: false}}}}\n"
                "limits: {deadline_ms: 2000}\n"
            )
            self.server = ServerProcess(
                ["--config", str(config), "--definitions", str(tmp / "features.yaml")],
                log_path=tmp / "server.log",
            ).start()
        except BaseException:
            self.redis.stop()
            raise

    def stop(self) -> None:
        self.server.stop()
        self.redis.stop()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = Stack(tmp_path_factory.mktemp("stored-values"))
    yield s
    s.stop()


def grpc_join(stack: Stack, entities: dict[str, list[int]], features: list[str]) -> pb.JoinResponse:
    req = pb.JoinRequest(features=features)
    for name, values in entities.items():
        req.entities.add(name=name).int64_values.values.extend(values)
    with grpc.insecure_channel(stack.server.grpc_target) as ch:
        stub = pbg.FeatureServiceStub(ch)  # type: ignore[no-untyped-call]
        resp: pb.JoinResponse = stub.Join(req, timeout=5)
        return resp


def test_a_feature_named_as_an_entity_column_of_the_request_is_400_and_invalid_argument(stack: Stack) -> None:
    """No requested view is keyed on item_id, yet the request carries it: two result
    columns named item_id would be ambiguous (a client's dict keeps one)."""
    entities, features = {"user_id": [1], "item_id": [7]}, ["user_profile:item_id"]
    status, doc = stack.server.join({"entities": entities, "features": features})
    assert status == 400, doc
    err: dict[str, Any] = doc["error"]
    assert err["code"] == "INVALID_ARGUMENT" and "entity column 'item_id'" in err["message"]
    assert err["details"] == [{"feature": "user_profile:item_id", "entity": "item_id"}]
    with pytest.raises(grpc.RpcError) as info:
        grpc_join(stack, entities, features)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "entity column 'item_id'" in info.value.details()
    status, doc = stack.server.join({"entities": entities, "features": features, "full_feature_names": True})
    assert status == 200 and doc["metadata"]["feature_names"] == [
        "user_id",
        "item_id",
        "user_profile__item_id",
    ]
