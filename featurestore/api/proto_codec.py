"""Protobuf <-> engine types for the gRPC API (typed value columns)."""

from __future__ import annotations

import math
from typing import Any, TypeVar

from google.protobuf.message import DecodeError

from featurestore.api import proto_wire
from featurestore.errors import InvalidArgument, clipped, quoted
from featurestore.join import JoinRequest, JoinResult
from featurestore.push import PushRequest, PushResult
from featurestore.v1 import featurestore_pb2 as pb

_Message = TypeVar("_Message", pb.JoinRequest, pb.PushRequest)


def decode_join(data: bytes) -> JoinRequest:
    msg = _parse(pb.JoinRequest, data, "join")
    entities: dict[str, list[Any]] = {}
    for col in msg.entities:
        if col.name in entities:
            raise InvalidArgument(
                f"entity {quoted(col.name)} is given twice", details=[{"entity": clipped(col.name)}]
            )
        kind = col.WhichOneof("values")
        if kind == "int64_values":
            entities[col.name] = list(col.int64_values.values)
        elif kind == "string_values":
            entities[col.name] = list(col.string_values.values)
        else:
            entities[col.name] = []
    return JoinRequest(
        entities=entities,
        features=tuple(msg.features),
        feature_service=msg.feature_service or None,
        full_feature_names=msg.full_feature_names,
        request_data=_request_data(msg) if msg.request_data else None,
    )


def _request_data(msg: pb.JoinRequest) -> dict[str, list[Any]]:
    """Typed columns -> lists (types are checked against the request_schema in the join)."""
    out: dict[str, list[Any]] = {}
    for col in msg.request_data:
        if col.name in out:
            raise InvalidArgument(
                f"request_data field {quoted(col.name)} is given twice",
                details=[{"request_data": clipped(col.name)}],
            )
        kind = col.WhichOneof("values")
        values: list[Any] = [] if kind is None else list(getattr(col, kind).values)
        nulls = col.null_rows
        if nulls and max(nulls) >= len(values):
            raise InvalidArgument(
                f"request_data.{clipped(col.name)}.null_rows: row {max(nulls)} is past its {len(values)} values",
                details=[{"request_data": clipped(col.name)}],
            )
        if kind == "double_values":
            _check_finite(col.name, values, nulls)
        for i in nulls:
            values[i] = None
        out[col.name] = values
    return out


def _check_finite(name: str, values: list[float], nulls: Any) -> None:
    """HTTP's JSON cannot carry NaN or infinities; neither may a double column (null is
    null_rows). One sum finds them: NaN and inf - inf are NaN, a finite sum minus
    itself is 0 (an overflowing sum takes the slow path and passes)."""
    total = sum(values)
    if total - total == 0.0:
        return
    skip = set(nulls)
    for i, v in enumerate(values):
        if not math.isfinite(v) and i not in skip:
            raise InvalidArgument(
                f"request_data.{clipped(name)}[{i}]: {v} is not a finite number (null goes in null_rows)",
                details=[{"request_data": clipped(name)}],
            )


def decode_push(data: bytes) -> PushRequest:
    msg = _parse(pb.PushRequest, data, "push")
    if not msg.feature_view:  # the JSON schema's minLength: the same 400 / INVALID_ARGUMENT
        raise InvalidArgument("invalid push request: feature_view is empty; name the view to write")
    columns: dict[str, list[Any]] = {}
    kinds: dict[str, str] = {}
    for col in msg.columns:
        if col.name in columns:
            raise InvalidArgument(
                f"column {quoted(col.name)} is given twice", details=[{"column": clipped(col.name)}]
            )
        kind = col.WhichOneof("values")
        if kind is None:
            values: list[Any] = []  # (no typed field: a column of no rows)
        elif kind == "vector_values":
            values = [list(v.values) for v in col.vector_values.values]
        else:
            values = list(getattr(col, kind).values)
        if kind is not None:
            kinds[col.name] = kind
        for i in col.null_rows:
            if i >= len(values):  # a row that does not exist: the column is not what was meant
                raise InvalidArgument(
                    f"{clipped(col.name)}.null_rows: row {i} is past its {len(values)} values",
                    details=[{"column": clipped(col.name)}],
                )
            values[i] = None
        columns[col.name] = values
    return PushRequest(view=msg.feature_view, columns=columns, kinds=kinds)


def _parse(message: type[_Message], data: bytes, what: str) -> _Message:
    """The parsed message, or InvalidArgument when the bytes are not one."""
    try:
        return message.FromString(data)
    except DecodeError as e:
        raise InvalidArgument(f"invalid {what} request: malformed protobuf ({e})") from None


def encode_push(result: PushResult) -> bytes:
    return pb.PushResponse(
        rows_written=result.rows_written, data_version=result.data_version
    ).SerializeToString()


def encode_join(result: JoinResult, trace_id: str) -> bytes:
    """The JoinResponse wire bytes, written directly (proto_wire.py says why)."""
    return proto_wire.encode_join(
        result.columns, result.rows, result.registry_version, trace_id, result.partial
    )


def column_values(col: pb.FeatureColumn) -> list[Any]:
    """A response column back to Python values, None where not PRESENT (for clients)."""
    kind = col.WhichOneof("values")
    if kind is None:
        raw: list[Any] = [None] * len(col.statuses)
    elif kind == "vector_values":
        raw = [list(v.values) for v in col.vector_values.values]
    else:
        raw = list(getattr(col, kind).values)
    nulls = set(col.null_rows)
    return [
        v if s == pb.PRESENT and i not in nulls else None
        for i, (v, s) in enumerate(zip(raw, col.statuses, strict=True))
    ]
