"""Push timestamps (review s55, finding 6): over HTTP an ISO 8601 string, as the API docs
and the OpenAPI schema say; an integer is a 400 naming the column and the form expected.
It was taken as epoch microseconds, so epoch seconds (JSON's habit) were stored as
January 1970 with a 200. gRPC's ``timestamp_values`` stay epoch µs."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import grpc
import httpx
import pytest

from featurestore.api.grpc import GrpcApi
from featurestore.api.http import HttpApi
from featurestore.definitions.snapshot import new_snapshot
from featurestore.health import Readiness
from featurestore.join import JoinEngine, Limits
from featurestore.model import DType, Entity, Feature, FeatureView, make_definitions
from featurestore.plan import ServingState
from featurestore.push import PushService
from featurestore.sources.base import ViewQuery, ViewRead
from featurestore.sources.memory import MemorySource
from featurestore.v1 import featurestore_pb2 as pb
from tests.unit.test_api_edges import FakeContext

SKU = Entity("sku", DType.STRING)
VIEW = FeatureView("bysku", (SKU,), (Feature("n", DType.INT64), Feature("seen", DType.TIMESTAMP)))
AT_US = 1_714_557_600_000_000  # 2024-05-01T10:00:00Z


@pytest.fixture
async def engine() -> JoinEngine:
    engine = JoinEngine(
        {"default": MemorySource("default")},
        ServingState(new_snapshot(make_definitions("p", [SKU], [VIEW], []), 1)),
        Limits(max_rows=100, deadline_seconds=5.0),
    )
    await engine.stores["default"].prepare([VIEW])
    return engine


@pytest.fixture
async def http(engine: JoinEngine) -> AsyncIterator[httpx.AsyncClient]:
    api = HttpApi(
        engine, PushService(engine), lambda: Readiness(True), max_body_bytes=1 << 16, deadline_ms=5000
    )
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=api), base_url="http://fs") as client:
        yield client


async def stored(engine: JoinEngine, sku: str) -> tuple[list[Any], int]:
    [read] = await engine.stores["default"].read([ViewQuery(VIEW, [sku], [0, 1], 0)])
    assert isinstance(read, ViewRead) and read.found == [True]
    return [c[0] for c in read.columns], read.event_ts_us[0]


def push(sku: str, seen: Any, at: Any) -> bytes:
    return json.dumps(
        {"feature_view": "bysku", "rows": {"sku": [sku], "n": [1], "seen": [seen], "event_timestamp": [at]}}
    ).encode()


@pytest.mark.parametrize(
    ("seen", "at", "column"),
    [
        ("2024-05-01T10:00:00Z", 1_714_557_600, "event_timestamp"),  # epoch seconds: stored as 1970
        (AT_US, "2024-05-01T10:00:00Z", "seen"),  # epoch µs is no clearer over JSON
    ],
)
async def test_an_integer_timestamp_over_http_is_a_400_naming_the_column_and_the_iso_form(
    http: httpx.AsyncClient, engine: JoinEngine, seen: Any, at: Any, column: str
) -> None:
    answer = await http.post("/v1/feature/push", content=push("epoch", seen, at))
    assert answer.status_code == 400 and answer.headers["content-type"] == "application/json"
    error = answer.json()["error"]
    assert error["code"] == "INVALID_ARGUMENT"
    assert f"column '{column}' takes timestamp; row 0 is int" in error["message"]
    assert "ISO 8601 string, e.g. 2024-05-01T10:00:00Z" in error["message"]
    assert error["details"] == [
        {"column": column, "row": 0, "expected": "timestamp", "got": "int", "format": "ISO 8601"}
    ]
    [read] = await engine.stores["default"].read([ViewQuery(VIEW, ["epoch"], [0], 0)])
    assert isinstance(read, ViewRead) and read.found == [False]  # nothing written


async def test_iso_8601_timestamps_over_http_are_stored_as_the_instants_they_name(
    http: httpx.AsyncClient, engine: JoinEngine
) -> None:
    answer = await http.post(
        "/v1/feature/push", content=push("iso", "2024-05-01T12:00:00+02:00", "2024-05-01T10:00:00Z")
    )
    assert answer.status_code == 200, answer.text
    assert await stored(engine, "iso") == ([1, AT_US], AT_US)


async def test_grpc_timestamp_values_are_epoch_microseconds(engine: JoinEngine) -> None:
    req = pb.PushRequest(feature_view="bysku")
    req.columns.add(name="sku").string_values.values.append("grpc")
    req.columns.add(name="n").int64_values.values.append(1)
    req.columns.add(name="seen").timestamp_values.values.append(AT_US)
    req.columns.add(name="event_timestamp").timestamp_values.values.append(AT_US)
    ctx = FakeContext()
    with contextlib.suppress(grpc.aio.AbortError):
        await GrpcApi(engine, PushService(engine), deadline_ms=500).push(req.SerializeToString(), ctx)
    assert ctx.code is None, ctx.details
    assert await stored(engine, "grpc") == ([1, AT_US], AT_US)
