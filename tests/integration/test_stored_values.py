"""A real server on a real Redis (pushes, rows another writer left) and the memory store
(a Parquet load): what the join's contract says of output names and stored values,
checked over every encoding a client can ask for (JSON, Arrow IPC, gRPC)."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import msgspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import redis

from featurestore.api.proto_codec import column_values
from featurestore.v1 import featurestore_pb2 as pb
from featurestore.v1 import featurestore_pb2_grpc as pbg
from tests.servers import RedisServer
from tests.support import ServerProcess, http_post

NOW_US = int(time.time() * 1e6)
ARROW = "application/vnd.apache.arrow.stream"

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
  - name: loaded
    entities: [user_id]
    online_store: local
    batch_source: {path: loaded.parquet}
    features:
      - {name: ratio, dtype: float64}
"""

# What a Parquet file can hold: NaN and both infinities beside a number and a null.
LOADED_RATIOS = [math.nan, math.inf, -math.inf, 1.5, None]


class Stack:
    def __init__(self, tmp: Path) -> None:
        self.redis = RedisServer(tmp / "redis").start()
        try:
            (tmp / "features.yaml").write_text(DEFINITIONS)
            pq.write_table(
                pa.table(
                    {
                        "user_id": pa.array(range(1, len(LOADED_RATIOS) + 1), pa.int64()),
                        "ratio": pa.array(LOADED_RATIOS, pa.float64()),
                        "event_timestamp": pa.array(
                            [NOW_US] * len(LOADED_RATIOS), pa.timestamp("us", tz="UTC")
                        ),
                    }
                ),
                tmp / "loaded.parquet",
            )
            config = tmp / "config.yaml"
            config.write_text(
                f"registry: {{path: {tmp / 'registry'}}}\n"
                f"stores: {{default: {{kind: redis, url: '{self.redis.url}', cache: false}}, local: {{kind: memory}}}}\n"
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


def served(stack: Stack, users: list[int], feature: str) -> dict[str, tuple[list[Any], list[str]]]:
    """One feature's (values, statuses) as each encoding serves them: HTTP JSON, HTTP
    Arrow IPC and gRPC, in the Python values a client gets (NaN stays NaN)."""
    body = json.dumps({"entities": {"user_id": users}, "features": [feature]}).encode()
    status, raw, _ = http_post(stack.server.url + "/v1/feature/join", body)
    assert status == 200, raw
    doc = json.loads(raw)["results"][1]
    status, raw, headers = http_post(stack.server.url + "/v1/feature/join", body, {"accept": ARROW})
    assert status == 200 and headers["content-type"] == ARROW, raw
    table = pa.ipc.open_stream(raw).read_all()
    name = feature.split(":")[1]
    col = grpc_join(stack, {"user_id": users}, [feature]).results[1]
    return {
        "json": (doc["values"], doc["statuses"]),
        "arrow": (table.column(name).to_pylist(), table.column(f"{name}__status").to_pylist()),
        "grpc": (column_values(col), [pb.Status.Name(s) for s in col.statuses]),
    }


def push_scores(stack: Stack, users: list[int], scores: list[float], vecs: list[list[float]]) -> None:
    req = pb.PushRequest(feature_view="user_profile")
    req.columns.add(name="user_id").int64_values.values.extend(users)
    req.columns.add(name="item_id").int64_values.values.extend([0] * len(users))
    req.columns.add(name="score").double_values.values.extend(scores)
    vec = req.columns.add(name="vec")
    for v in vecs:
        vec.vector_values.values.add().values.extend(v)
    with grpc.insecure_channel(stack.server.grpc_target) as ch:
        stub = pbg.FeatureServiceStub(ch)  # type: ignore[no-untyped-call]
        assert stub.Push(req, timeout=5).rows_written == len(users)


def test_nan_and_infinities_pushed_over_grpc_are_served_as_null_by_every_encoding(stack: Stack) -> None:
    users = [101, 102, 103, 104]
    push_scores(stack, users, [math.nan, math.inf, -math.inf, 2.5], [[1.0]] * 4)
    answers = served(stack, users, "user_profile:score")
    want = ([None, None, None, 2.5], ["PRESENT"] * 4)
    assert answers == {"json": want, "arrow": want, "grpc": want}


def test_nan_and_infinities_a_parquet_load_reads_are_served_as_null_by_every_encoding(stack: Stack) -> None:
    answers = served(stack, [1, 2, 3, 4, 5], "loaded:ratio")
    want = ([None, None, None, 1.5, None], ["PRESENT"] * 5)
    assert answers == {"json": want, "arrow": want, "grpc": want}


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_a_pushed_vector_element_that_is_not_a_finite_number_is_invalid_argument(
    stack: Stack, bad: float
) -> None:
    with pytest.raises(grpc.RpcError) as info:
        push_scores(stack, [201, 202], [1.0, 1.0], [[1.0], [0.5, bad]])
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (
        f"'vec' takes float32_vector; row 1 is a list whose element 1 is float ({bad!r}), not a finite number"
        in (info.value.details())
    )


def test_rows_another_writer_left_in_the_store_are_served_as_they_are_and_never_fail_the_join(
    stack: Stack,
) -> None:
    """A NaN score and a null vector element written straight into Redis (an older
    version, another tool): no write path of this version stores either. JSON writes
    null for both, gRPC serves NaN (a FloatVector cannot hold null); no 500 or INTERNAL."""
    with redis.Redis.from_url(stack.redis.url) as r:
        r.set("fs:demo:user_profile:v0:301", msgspec.msgpack.encode([7, math.nan, [1.0, None], NOW_US]))
    answers = served(stack, [301], "user_profile:vec")
    assert answers["json"] == ([[1.0, None]], ["PRESENT"])
    [[first, second]] = answers["grpc"][0]
    assert first == 1.0 and math.isnan(second)
    score = served(stack, [301], "user_profile:score")
    assert score["json"] == ([None], ["PRESENT"]) and math.isnan(score["grpc"][0][0])


@pytest.mark.parametrize(
    ("user", "row"),
    [
        (401, [7, 1.5, [1.0], None]),  # no event timestamp
        (402, [7, 1.5, [1.0], "yesterday"]),  # a timestamp that is not epoch µs
        (403, [7.5, 1.5, [1.0], NOW_US]),  # a float in an int64 feature
        (404, [7, "high", [1.0], NOW_US]),  # a string in a float64 feature
        (407, [2**63, 1.5, [1.0], NOW_US]),  # past int64: Arrow failed, gRPC wrapped it
        (408, [7, 1.5, [1.0], 2**63]),  # an event timestamp past int64
        (409, [None, None, None, NOW_US]),  # (fits: every feature null)
        (405, 5),  # not a row at all
        (406, "abcd"),  # a string as long as a row
    ],
)
def test_a_stored_row_that_does_not_fit_its_view_makes_that_view_unavailable_never_the_join(
    stack: Stack, user: int, row: Any
) -> None:
    """Rows another tool wrote that do not fit the view's types: the view's values are
    UNAVAILABLE (its read fails), other views still answer, and no encoding fails (a null
    timestamp was a 500, a float in an int64 feature a gRPC INTERNAL)."""
    with redis.Redis.from_url(stack.redis.url) as r:
        r.set(f"fs:demo:user_profile:v0:{user}", msgspec.msgpack.encode(row))
    want = ["PRESENT"] if user == 409 else ["UNAVAILABLE"]
    for feature in ("user_profile:item_id", "user_profile:score"):
        for encoding, (values, statuses) in served(stack, [user], feature).items():
            assert statuses == want and values == [None], (feature, encoding)
    both = {"entities": {"user_id": [user, 4]}, "features": ["user_profile:score", "loaded:ratio"]}
    status, doc = stack.server.join(both)
    assert status == 200, doc
    fits = user == 409
    # the whole view's read fails: user 4's score (no row: NOT_FOUND) too
    assert doc["results"][1]["statuses"] == (["PRESENT", "NOT_FOUND"] if fits else ["UNAVAILABLE"] * 2)
    assert doc["results"][2]["statuses"] == ["NOT_FOUND", "PRESENT"] and doc["metadata"]["partial"] != fits
