"""JSON request decoding and response encoding for the HTTP join API.

Decoding (msgspec) validates shape and scalar types in C and reports the exact location
of a bad value (``$.entities.user_id[3]``). Encoding writes the columnar response of the
contract with orjson; statuses and event timestamps are rendered once per view and
shared by that view's columns. Both write a non-finite float as null.

Why two libraries: a join response is mostly floats, and orjson writes it faster than
msgspec (ranker_v1 results of the demo, the whole document: 85.1 against 113.0 µs at batch
100, 23.8 against 28.1 at 10, 9.9 against 11.1 at 1; ``python -m benchmarks.json_encoding``,
benchmarks/RESULTS.md, 2026-12-05; one row is written from fragments since, json_row.py);
msgspec's typed decoding has no orjson counterpart, and the other documents (errors,
registry, health) are small and stay on one encoder.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, TypeVar

import msgspec
import orjson

from featurestore.api.json_row import dtype_names, encode_row
from featurestore.api.statuses import JSON_NAME_BY_VALUE, PRESENT_NAME
from featurestore.api.timestamps import iso_json, iso_list
from featurestore.errors import SHOWN_CHARS, InvalidArgument, clipped
from featurestore.join import JoinRequest, JoinResult, ViewOutcome
from featurestore.model import DType
from featurestore.push import PushRequest

# The request bodies as the decoder takes them; the OpenAPI request schemas are
# generated from these structs (``docs.py``), so the documented shape is the decoded one.
# Column values are typed down to scalars: a value nested deeper than the data model
# allows (a 10,000-deep array) is refused at its first level instead of being decoded.
_Scalar = int | float | str | bool | None
_Name = Annotated[str, msgspec.Meta(min_length=1)]
_EntityColumn = list[int | str]
_RequestColumn = list[_Scalar]
_PushColumn = list[_Scalar | list[_Scalar]]  # a float32 vector is a list


class _JoinBody(msgspec.Struct, forbid_unknown_fields=True):
    """A join: entity key columns and the features to read for each row."""

    entities: Annotated[
        dict[str, _EntityColumn],
        msgspec.Meta(
            description="Entity key columns of equal length; row i is the i-th value of every column. "
            "int64 entities take integers, string entities strings.",
            examples=[{"user_id": [17, 4242]}],
            min_length=1,
        ),
    ]
    features: Annotated[
        list[_Name],
        msgspec.Meta(
            description="Feature references 'view:feature'. Give this or feature_service.",
            examples=[["user_profile:age", "user_activity:ctr_30d"]],
        ),
    ] = []
    feature_service: Annotated[_Name | None, msgspec.Meta(description="A feature service name.")] = None
    full_feature_names: Annotated[bool, msgspec.Meta(description="Name output columns 'view__feature'.")] = (
        False
    )
    request_data: Annotated[
        dict[str, _RequestColumn],
        msgspec.Meta(
            description="Request fields of derived features, one value per entity row, declared in the "
            "derived view's request_schema (checked per field against it). Every field must be an "
            "array of scalars, even one no requested feature needs.",
            examples=[{"item_price": [5.0, 75.0]}],
        ),
    ] = {}


# A whole row of the demo's user_profile (a push carries every feature of its view).
_PUSH_EXAMPLE = {
    "user_id": [17], "age": [33], "tenure_days": [400], "num_devices": [2], "country": ["DE"],
    "plan_tier": ["pro"], "preferred_language": ["de"], "lifetime_value": [120.5], "credit_score": [0.71],
    "event_timestamp": ["2024-05-01T10:00:00Z"],
}  # fmt: skip


class _PushBody(msgspec.Struct, forbid_unknown_fields=True):
    """A push: rows of one feature view, as columns."""

    feature_view: Annotated[_Name, msgspec.Meta(examples=["user_profile"])]
    rows: Annotated[
        dict[str, _PushColumn],  # types are checked against the view
        msgspec.Meta(
            description="Columns of equal length: the view's entity keys, every feature, and optionally "
            "event_timestamp (ISO 8601; default now). Timestamp features take ISO 8601 strings, "
            "float32 vectors arrays of numbers.",
            examples=[_PUSH_EXAMPLE],
            min_length=2,  # every view has an entity key and a feature
        ),
    ]


def request_schemas() -> tuple[dict[str, Any], dict[str, Any]]:
    """The JSON Schemas of the join and push bodies, generated from the structs the
    decoder uses (``docs.py`` puts them in the OpenAPI document)."""
    _, components = msgspec.json.schema_components([_JoinBody, _PushBody])
    return components[_JoinBody.__name__], components[_PushBody.__name__]


_Body = TypeVar("_Body", _JoinBody, _PushBody)
_decoder = msgspec.json.Decoder(_JoinBody)
_push_decoder = msgspec.json.Decoder(_PushBody)
_encoder = msgspec.json.Encoder()
dumps, Fragment = orjson.dumps, orjson.Fragment  # the join response's encoder (module docstring)
# A derived float64 feature may come as a float64 ndarray, NaN for null
# (derived.evaluate.ARRAY_ROWS): orjson writes it as it writes a list of those floats,
# null for NaN, byte for byte (tests/unit/test_json_response.py).
_NUMPY = orjson.OPT_SERIALIZE_NUMPY


def decode_join(body: bytes) -> JoinRequest:
    b = _decode(_decoder, body, "join")
    return JoinRequest(
        entities=b.entities,
        features=tuple(b.features),
        feature_service=b.feature_service,
        full_feature_names=b.full_feature_names,
        request_data=b.request_data,
    )


def decode_push(body: bytes) -> PushRequest:
    b = _decode(_push_decoder, body, "push")
    return PushRequest(view=b.feature_view, columns=b.rows)


def _decode(decoder: msgspec.json.Decoder[_Body], body: bytes, what: str) -> _Body:
    """The decoded body, or InvalidArgument naming the bad value or the JSON fault."""
    try:
        return decoder.decode(body)
    except msgspec.ValidationError as e:
        message, field = _locate(_clip_unknown_field(str(e)), body)
        details = [{"request_data": field}] if field is not None else None
        raise InvalidArgument(f"invalid {what} request: {message}", details=details) from None
    except msgspec.DecodeError as e:
        reason = "empty body" if not body.strip() else f"malformed JSON: {_fault(str(e), body)}"
        raise InvalidArgument(f"invalid {what} request: {reason}") from None
    except UnicodeDecodeError:  # msgspec checks UTF-8 only inside strings; so does the message
        raise InvalidArgument(f"invalid {what} request: {_bad_utf8(body)}") from None
    except RecursionError:  # only where a field is typed Any; none is today
        raise InvalidArgument(f"invalid {what} request: JSON nested too deeply") from None


# msgspec's message for a field the body's top level has and the struct has not.
_UNKNOWN_FIELD = re.compile(r"(unknown field `)(.*)(`(?: - at `[^`]*`)?)\Z", re.S)


def _clip_unknown_field(message: str) -> str:
    """msgspec names an unknown field whole (a 4 MB name made a 4 MB error): clipped, as
    every name the request carries (docs/api.md, "Errors"; review s56)."""
    m = _UNKNOWN_FIELD.search(message)
    if m is None or len(m.group(2)) <= SHOWN_CHARS:
        return message
    name = m.group(2)
    return f"{message[: m.start(2)]}{clipped(name)}{m.group(3)} ({len(name)} characters)"


# A \uD800-\uDBFF escape not followed by its low half's escape.
_HIGH_SURROGATE = re.compile(rb"\\u[dD][89abAB][0-9a-fA-F]{2}(?!\\u[dD][c-fC-F][0-9a-fA-F]{2})")


def _fault(message: str, body: bytes) -> str:
    """msgspec's message, but for an unpaired high surrogate escape in a body's last 12
    bytes: msgspec reads 6 bytes past it for the low half and calls a body that ends
    there truncated; earlier in a body it names the escape, as this does."""
    if (
        message == "Input data was truncated"
        and body.rstrip().endswith(b"}")
        and (m := _HIGH_SURROGATE.search(body, max(0, len(body) - 12)))
    ):
        return f"JSON is malformed: unexpected end of escaped utf-16 surrogate pair (byte {m.end()})"
    return message


def _bad_utf8(body: bytes) -> str:
    try:
        body.decode("utf-8")
    except UnicodeDecodeError as e:
        return f"the body is not valid UTF-8 (byte 0x{body[e.start]:02x} at offset {e.start})"
    return "the body is not valid UTF-8"


class _Columns(msgspec.Struct):
    entities: dict[str, msgspec.Raw] = {}
    rows: dict[str, msgspec.Raw] = {}
    request_data: dict[str, msgspec.Raw] = {}


_columns_decoder = msgspec.json.Decoder(_Columns)
_column_decoders: dict[str, msgspec.json.Decoder[Any]] = {
    "entities": msgspec.json.Decoder(_EntityColumn),
    "rows": msgspec.json.Decoder(_PushColumn),
    "request_data": msgspec.json.Decoder(_RequestColumn),
}


def _locate(message: str, body: bytes) -> tuple[str, str | None]:
    """msgspec names a column ``[...]`` (``$.entities[...][3]``): put the column's name
    there, found by decoding the body again column by column (error path only). With
    it, the name of a bad ``request_data`` field (for the error's details), else None."""
    for field, decoder in _column_decoders.items():
        where = f"$.{field}[...]"
        if where not in message:
            continue
        try:
            columns: dict[str, msgspec.Raw] = getattr(_columns_decoder.decode(body), field)
        except (msgspec.MsgspecError, ValueError, RecursionError):  # a fault after the first one
            return message, None
        for name, raw in columns.items():
            try:
                decoder.decode(raw)
            except msgspec.ValidationError:
                located = message.replace(where, f"$.{field}.{clipped(name)}", 1)
                return located, clipped(name) if field == "request_data" else None
            except (msgspec.MsgspecError, ValueError):
                return message, None
    return message, None


# From this many rows on, a view's statuses and timestamps are encoded once and spliced
# into each of its columns (orjson.Fragment). encode_join on 64 demo ranker_v1 results
# (16 features of 2 views) per row count, spliced against inline, best of 7 (a one-off
# run, 2026-12-02): 63.8 against 74.8 µs at 100 rows, 16.3 against 17.6 at 16, even from
# 4 to 8, 9.8 against 8.8 at 1 (the extra encode calls cost more than they save).
_SHARED_RENDER_ROWS = 8


def encode_join(result: JoinResult, trace_id: str) -> bytes:
    """The JSON join response (docs/api.md); one row's from fragments (json_row.py)."""
    if result.rows == 1 and result.columns:
        return encode_row(result, trace_id)
    return encode_document(result, trace_id)


def encode_document(result: JoinResult, trace_id: str) -> bytes:
    """The JSON join response of any number of rows, as one document for orjson."""
    n = result.rows
    rendered: dict[int, tuple[Any, Any]] = {}
    entity_statuses: Any = [PRESENT_NAME] * n
    entity_ts: Any = [None] * n
    if n >= _SHARED_RENDER_ROWS:
        entity_statuses, entity_ts = Fragment(dumps(entity_statuses)), Fragment(dumps(entity_ts))
    results: list[dict[str, Any]] = []
    for col in result.columns:
        values: Any = col.values
        if col.dtype is DType.TIMESTAMP:
            values = Fragment(iso_json(values)) if n >= _SHARED_RENDER_ROWS else iso_list(values)
        outcome = col.outcome
        if outcome is None:
            statuses, ts = entity_statuses, entity_ts
        else:
            pair = rendered.get(id(outcome))
            if pair is None:
                pair = rendered[id(outcome)] = _render(outcome, n)
            statuses, ts = pair
        results.append({"values": values, "statuses": statuses, "event_timestamps": ts})
    return dumps(
        {
            "metadata": {
                "feature_names": [c.name for c in result.columns],
                "dtypes": dtype_names(result.columns),
                "registry_version": result.registry_version,
                "trace_id": trace_id,
                "partial": result.partial,
            },
            "results": results,
        },
        option=_NUMPY,
    )


def _render(outcome: ViewOutcome, n: int) -> tuple[Any, Any]:
    if outcome.all_present:
        statuses = [PRESENT_NAME] * n
    else:
        names = JSON_NAME_BY_VALUE
        statuses = [names[s] for s in outcome.statuses]
    if n >= _SHARED_RENDER_ROWS:
        return Fragment(dumps(statuses)), Fragment(iso_json(outcome.event_ts_us))
    return statuses, iso_list(outcome.event_ts_us)


def encode_error(err: dict[str, Any]) -> bytes:
    return _encoder.encode({"error": err})


def encode(doc: Any) -> bytes:
    return _encoder.encode(doc)
