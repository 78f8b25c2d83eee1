"""``featurestore.v1.JoinResponse`` assembled as protobuf wire bytes.

Building the response through the generated classes cost a Python -> C call per field
set or list extended, ~70 of them for a batch-1 response of 17 columns: 40 µs to build
and serialize, 234 µs at batch 100, against 10 and 72 µs for the JSON encoding of the
same result (msgspec), so gRPC lost to HTTP on encoding alone. Here each value list is
one C call (doubles: one ``struct.pack``; other lists of 8+ values: a list message
constructed and serialized, upb encoding the packed values; shorter ones framed in
Python), and the frames around it (tags, lengths, names) are joined as bytes: 27 µs at
batch 1 and 100 µs at batch 100 when it came (2026-12-02); for what it costs now, against
the JSON answer's encoder, see ``python -m benchmarks.proto_encoding``
(benchmarks/RESULTS.md, "The gRPC Join response's encoding"). Statuses are their
own bytes (``Status`` values are the proto numbers, all < 128), a packed int64 list is
re-tagged for the column's event_timestamps and null_rows, and a view's statuses and
timestamps are encoded once and shared by its columns, as in the JSON codec. The bytes
are those the generated classes write (``tests/unit/test_proto_wire.py`` compares both
on random results, byte for byte).

The schema is ``proto/featurestore/v1/featurestore.proto``; the field numbers are below.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from featurestore.model import DType, Status
from featurestore.outcomes import ViewOutcome
from featurestore.v1 import featurestore_pb2 as pb

# Tags, (field << 3) | 2 (length-delimited): every field used here is below 16, one byte.
_METADATA, _RESULT = b"\x0a", b"\x12"  # JoinResponse.metadata, .results
_NAME, _STATUSES, _EVENT_TS, _NULL_ROWS = b"\x0a", b"\x42", b"\x4a", b"\x52"  # FeatureColumn
_VALUE_TAG = {  # FeatureColumn's `values` oneof, by dtype
    DType.INT64: b"\x12",
    DType.FLOAT64: b"\x1a",
    DType.STRING: b"\x22",
    DType.BOOL: b"\x2a",
    DType.TIMESTAMP: b"\x32",
    DType.FLOAT32_VECTOR: b"\x3a",
}
_ONE_BYTE = [bytes((i,)) for i in range(128)]
_PRESENT = bytes((Status.PRESENT,))
_names: dict[str, bytes] = {}  # column name -> its encoded name field (names come from definitions)
_MAX_NAMES = 4096


def varint(n: int) -> bytes:
    """A non-negative integer (a length, or an int64 as its 64-bit two's complement)."""
    if 0 <= n < 128:
        return _ONE_BYTE[n]
    if 0 < n < 16_384:
        return bytes(((n & 0x7F) | 0x80, n >> 7))
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _delimited(tag: bytes, payload: bytes) -> bytes:
    return tag + varint(len(payload)) + payload


def _retag(tag: bytes, list_message: bytes) -> bytes:
    """A packed list message (``Int64List``: field 1, length-delimited) as another
    length-delimited field: only the one-byte tag differs."""
    return tag + list_message[1:] if list_message else b""


_SMALL = 8  # below this many values, Python framing beats a list message's construction (1.4 µs)
_doubles: dict[int, Callable[..., bytes]] = {}  # row count -> struct packer of that many doubles


def _int64s(values: list[Any], nulls: bool) -> bytes:
    if nulls:
        values = [0 if v is None else v for v in values]
    if len(values) >= _SMALL:
        return pb.Int64List(values=values).SerializeToString()
    payload = b"".join([varint(v & 0xFFFF_FFFF_FFFF_FFFF) for v in values])  # int64: two's complement
    return _delimited(b"\x0a", payload) if payload else b""


def _float64s(values: list[Any] | np.ndarray, nulls: bool) -> bytes:
    n = len(values)
    if not n:
        return b""
    if type(values) is np.ndarray:  # packed doubles are the array's bytes (nulls zeroed by encode_join)
        return b"\x0a" + varint(8 * n) + values.astype("<f8", copy=False).tobytes()
    pack = _doubles.get(n)
    if pack is None:
        if len(_doubles) >= _MAX_NAMES:
            _doubles.clear()
        pack = _doubles[n] = struct.Struct(f"<{n}d").pack
    if nulls:
        values = [0.0 if v is None else v for v in values]
    return b"\x0a" + varint(8 * n) + pack(*values)


def _strings(values: list[Any], nulls: bool) -> bytes:
    if nulls:
        values = ["" if v is None else v for v in values]
    if len(values) >= _SMALL:
        return pb.StringList(values=values).SerializeToString()
    return b"".join([_delimited(b"\x0a", str.encode(v)) for v in values])  # (None: a TypeError)


def _bools(values: list[Any], nulls: bool) -> bytes:
    return _delimited(b"\x0a", bytes([1 if v else 0 for v in values])) if values else b""


def _vectors(values: list[Any], nulls: bool) -> bytes:
    try:
        return pb.FloatVectorList(values=[pb.FloatVector(values=x or ()) for x in values]).SerializeToString()
    except TypeError:
        # A null element: a FloatVector cannot hold one. Writes refuse them (rows.conform),
        # but a row stored before that rule, or written into the store by another tool,
        # may have one: it is served as NaN (HTTP's JSON writes null for both), never an
        # error for the whole join. Only the call that met one pays for the second pass.
        return pb.FloatVectorList(
            values=[pb.FloatVector(values=[_NAN if e is None else e for e in x] if x else ()) for x in values]
        ).SerializeToString()


_NAN = float("nan")
_LIST: dict[DType, Callable[[list[Any], bool], bytes]] = {
    DType.INT64: _int64s,
    DType.FLOAT64: _float64s,
    DType.STRING: _strings,
    DType.BOOL: _bools,
    DType.TIMESTAMP: _int64s,
    DType.FLOAT32_VECTOR: _vectors,
}


# By the member's id: an Enum member hashes in Python (0.3 µs), and a response looks
# up every column's dtype; members are singletons, so their ids are fixed. With each:
# whether its encoder, told a list has no null, refuses one (upb and struct raise on
# None: TypeError, struct.error), so a list is encoded without first being scanned for a
# null (``None in values`` compares every value with None: ~1.3 µs per 100 values).
# ranker_v1 responses, rows all found: batch 100 89.3 -> 66.1 µs, batch 1 24.1 -> 23.1;
# a tenth of the users unknown, batch 100 (``encode_join`` fills their rows first):
# 142.9 -> 85.6 (``python -m benchmarks.proto_encoding``, 2026-12-06 01:29; the demo has no
# stored nulls: one in a PRESENT row pays a copy and a refused encode before the null path).
# bool and vector encoders would write a null as False / an empty vector: scanned first
# (a view with a row not PRESENT: written with its null rows listed, unscanned).
_REFUSING = (DType.INT64, DType.FLOAT64, DType.STRING, DType.TIMESTAMP)
_BY_ID = {id(d): (_VALUE_TAG[d], _LIST[d], d in _REFUSING) for d in DType}
_NULL_REFUSED = (TypeError, struct.error)
_PRESENT_STATUS = Status.PRESENT
# What a null is written as, by dtype (as the encoders' own null paths write it), for the
# dtypes whose encoders refuse a null.
_NULL_VALUE: dict[int, Any] = {
    id(DType.INT64): 0,
    id(DType.TIMESTAMP): 0,
    id(DType.FLOAT64): 0.0,
    id(DType.STRING): "",
}


def _filled(values: list[Any], absent: list[int], dtype_id: int) -> list[Any]:
    """``values`` with the null of each row in ``absent`` written as its dtype's null value."""
    zero = _NULL_VALUE[dtype_id]
    out = list(values)
    for i in absent:
        if out[i] is None:
            out[i] = zero
    return out


def _name(name: str) -> bytes:
    field = _names.get(name)
    if field is None:
        if len(_names) >= _MAX_NAMES:
            _names.clear()
        field = _names[name] = _delimited(_NAME, name.encode()) if name else b""
    return field


def _outcome_fields(outcome: ViewOutcome) -> bytes:
    """statuses and event_timestamps (0 where none) of a view's columns."""
    n = len(outcome.statuses)
    if not n:
        return b""
    statuses = _STATUSES + varint(n) + bytes(outcome.statuses)
    ts = outcome.event_ts_us
    if not outcome.all_present:  # a row not found has no timestamp: scanned
        packed = _int64s(ts, None in ts)
    else:
        try:
            packed = _int64s(ts, False)
        except _NULL_REFUSED:  # (a derived view reading only request fields has none)
            packed = _int64s(ts, True)  # (no null in it: raises the same error again)
    return statuses + _retag(_EVENT_TS, packed)


def _null_rows(values: list[Any], outcome: ViewOutcome, nan_rows: list[int] | None = None) -> bytes:
    """Rows PRESENT but null (a typed column cannot hold null); ``nan_rows``: an array
    column's null rows, found by encode_join."""
    statuses = outcome.statuses
    if nan_rows is not None:
        rows = [i for i in nan_rows if statuses[i] is Status.PRESENT]
    else:
        rows = [i for i, v in enumerate(values) if v is None and statuses[i] is Status.PRESENT]
    return _retag(_NULL_ROWS, _int64s(rows, False))  # uint32 varints alike


def encode_join(
    columns: Sequence[Any], rows: int, registry_version: int, trace_id: str, partial: bool
) -> bytes:
    """``columns``: ``join.ResultColumn``s (name, dtype, values, outcome or None)."""
    metadata = pb.JoinMetadata(
        feature_names=[c.name for c in columns],
        registry_version=registry_version,
        trace_id=trace_id,
        partial=partial,
    ).SerializeToString()
    parts = [_delimited(_METADATA, metadata) if metadata else b""]
    entity = (
        (_STATUSES + varint(rows) + _PRESENT * rows + _EVENT_TS + varint(rows) + bytes(rows)) if rows else b""
    )
    shared: dict[int, bytes] = {}
    absent_rows: dict[int, list[int]] = {}  # per view outcome not all PRESENT: its rows not PRESENT
    for c in columns:
        values = c.values
        nan_rows: list[int] | None = None
        if type(values) is np.ndarray:  # a derived float64 feature, NaN = null (derived.evaluate.ARRAY_ROWS)
            nan = np.isnan(values)
            nulls = bool(nan.any())
            if nulls:  # written as 0.0 and listed in null_rows, as a list's None is
                nan_rows = np.flatnonzero(nan).tolist()
                values = np.where(nan, 0.0, values)
            tag, encode, _ = _BY_ID[id(c.dtype)]
            payload = encode(values, nulls)
        else:
            tag, encode, refusing = _BY_ID[id(c.dtype)]
            outcome = c.outcome
            if outcome is not None and not outcome.all_present and refusing:
                # A row not PRESENT holds None (join._merge): those rows take the null's
                # value, and the list is encoded as having no other null (the encoder
                # refusing one: a stored null in a PRESENT row, written with its nulls).
                # Filling instead of listing null rows value by value saved ~3.5 µs a column
                # of 100 (57 µs over 16 columns: the numbers above _REFUSING).
                absent = absent_rows.get(id(outcome))
                if absent is None:
                    absent = absent_rows[id(outcome)] = [
                        i for i, s in enumerate(outcome.statuses) if s is not _PRESENT_STATUS
                    ]
                try:
                    payload, nulls = encode(_filled(values, absent, id(c.dtype)), False), False
                except _NULL_REFUSED:
                    payload, nulls = encode(values, True), True
            elif outcome is not None and not outcome.all_present:  # bool, vector: a null row listed
                nulls = True
                payload = encode(values, True)
            elif refusing:
                try:
                    payload, nulls = encode(values, False), False
                except _NULL_REFUSED:  # a stored null in a PRESENT row (or a bad value: raises again)
                    payload, nulls = encode(values, True), True
            else:
                nulls = None in values
                payload = encode(values, nulls)
        body = _name(c.name) + _delimited(tag, payload)
        outcome = c.outcome
        if outcome is None:
            body += entity
        else:
            fields = shared.get(id(outcome))
            if fields is None:
                fields = shared[id(outcome)] = _outcome_fields(outcome)
            body += fields + _null_rows(values, outcome, nan_rows) if nulls else fields
        parts.append(_RESULT + varint(len(body)) + body)
    return b"".join(parts)
