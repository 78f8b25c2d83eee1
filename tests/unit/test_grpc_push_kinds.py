"""A gRPC push column sent in a typed field its dtype does not take is refused, naming
the column (its values alone would have been stored as the view's type says)."""

from __future__ import annotations

import contextlib

import grpc
import pytest

from featurestore.api.grpc import GrpcApi
from featurestore.push import PushService
from featurestore.v1 import featurestore_pb2 as pb
from tests.unit.test_api_edges import FakeContext, make_engine


def nums_push(f_kind: str, key_kind: str = "int64_values") -> bytes:
    req = pb.PushRequest(feature_view="nums")
    getattr(req.columns.add(name="user_id"), key_kind).values.append(7)
    col = req.columns.add(name="f")
    getattr(col, f_kind).values.append(5)
    req.columns.add(name="e").vector_values.values.add().values.extend([1.0, 2.0])
    req.columns.add(name="event_timestamp").timestamp_values.values.append(1_700_000_000_000_000)
    return req.SerializeToString()


async def push(body: bytes) -> FakeContext:
    engine = make_engine()
    await engine.stores["default"].prepare(list(engine.state.definitions.views.values()))
    ctx = FakeContext()
    with contextlib.suppress(grpc.aio.AbortError):
        await GrpcApi(engine, PushService(engine), deadline_ms=500).push(body, ctx)
    return ctx


@pytest.mark.parametrize("kind", ["double_values", "int64_values"])
async def test_a_float64_column_is_taken_as_doubles_or_integers(kind: str) -> None:
    assert (await push(nums_push(kind))).code is None


@pytest.mark.parametrize(
    ("f_kind", "key_kind", "named"),
    [
        ("timestamp_values", "int64_values", "column 'f' is float64, sent as timestamp_values"),
        ("double_values", "timestamp_values", "column 'user_id' is int64, sent as timestamp_values"),
    ],
)
async def test_a_column_in_a_typed_field_its_dtype_does_not_take_is_invalid_argument(
    f_kind: str, key_kind: str, named: str
) -> None:
    ctx = await push(nums_push(f_kind, key_kind))
    assert ctx.code == grpc.StatusCode.INVALID_ARGUMENT
    assert named in ctx.details
