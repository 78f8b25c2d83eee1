"""Arrow IPC stream rendering of a join result (``Accept: application/vnd.apache.arrow.stream``).

The table holds, per result column, the typed values (null where not PRESENT), then
``<name>__status`` (dictionary-encoded string) and ``<name>__event_timestamp``
(timestamp[us, UTC]). Response metadata travels as schema metadata.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from featurestore.api.statuses import ARROW_CODE_BY_VALUE, ARROW_DICTIONARY, PRESENT_ARROW_CODE
from featurestore.errors import InvalidArgument, clipped
from featurestore.join import JoinResult
from featurestore.model import DType
from featurestore.rows import ARROW_TYPES

MEDIA_TYPE = "application/vnd.apache.arrow.stream"
_MEDIA_TYPE = MEDIA_TYPE.encode()
_JSON_RANGES = (b"application/json", b"application/*", b"*/*")  # the most specific first


def wants_arrow(accept: bytes | None) -> bool:
    """Whether an ``Accept`` header asks for Arrow rather than JSON (RFC 9110 12.5.1:
    media types without regard to case; ``q=0`` is "not acceptable"; the most specific
    range that matches a type gives its q): Arrow when a range names it with q > 0 and
    JSON's q is not higher (a tie is Arrow: the type asked for by name). A header that
    does not name Arrow (``*/*``, the bundled client's HTTP library's default) is JSON
    without parsing (one lowering and one search: ~0.1 µs)."""
    if accept is None:
        return False
    if accept == _MEDIA_TYPE:
        return True
    lowered = accept.lower()
    if b"arrow" not in lowered:
        return False
    arrow = -1.0
    json: dict[bytes, float] = {}
    for part in lowered.split(b","):
        media, _, params = part.partition(b";")
        media = media.strip()
        q = 1.0
        for param in params.split(b";"):
            name, _, value = param.partition(b"=")
            if name.strip() == b"q":
                try:
                    q = float(value.strip())
                except ValueError:
                    q = 0.0  # (a q that is not a number: not acceptable)
        if media == _MEDIA_TYPE:
            arrow = max(arrow, q)
        elif media in _JSON_RANGES:
            json[media] = max(json.get(media, q), q)
    json_q = next((json[r] for r in _JSON_RANGES if r in json), -1.0)
    return arrow > 0 and arrow >= json_q


_STATUS_NAMES = pa.array(ARROW_DICTIONARY)
_TS = pa.timestamp("us", tz="UTC")


def encode_join_arrow(result: JoinResult, trace_id: str) -> bytes:
    n = result.rows
    arrays: list[pa.Array] = []
    names: list[str] = []
    present = pa.DictionaryArray.from_arrays(pa.array([PRESENT_ARROW_CODE] * n, pa.int8()), _STATUS_NAMES)
    no_ts = pa.nulls(n, _TS)
    rendered: dict[int, tuple[pa.Array, pa.Array]] = {}
    for col in result.columns:
        outcome = col.outcome
        if col.dtype is DType.TIMESTAMP:
            values = pa.array(col.values, type=pa.int64()).cast(_TS)
        else:  # an ndarray (a derived float64 feature: derived.evaluate.ARRAY_ROWS) holds NaN for null
            values = pa.array(
                col.values, type=ARROW_TYPES[col.dtype], from_pandas=type(col.values) is np.ndarray
            )
        if outcome is None:
            status, ts = present, no_ts
        else:
            pair = rendered.get(id(outcome))
            if pair is None:
                by_value = ARROW_CODE_BY_VALUE
                codes = pa.array([by_value[s] for s in outcome.statuses], pa.int8())
                pair = (
                    pa.DictionaryArray.from_arrays(codes, _STATUS_NAMES),
                    pa.array(outcome.event_ts_us, type=pa.int64()).cast(_TS),
                )
                rendered[id(outcome)] = pair
            status, ts = pair
        arrays += [values, status, ts]
        names += [col.name, f"{col.name}__status", f"{col.name}__event_timestamp"]
    if len(set(names)) != len(names):  # (~0.5 µs for 20 columns; the table is ~100x that)
        raise _clash(names)
    metadata = {
        "registry_version": str(result.registry_version),
        "trace_id": trace_id,
        "partial": "true" if result.partial else "false",
    }
    table = pa.Table.from_arrays(arrays, names=names, metadata=metadata)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()  # type: ignore[no-any-return]


def _clash(names: list[str]) -> InvalidArgument:
    """The refusal of an answer with two columns of one name: an output column named as
    another's status or event time column (``x`` and a feature ``x__status``; an entity
    ``user`` and, with full_feature_names, view ``user``'s feature ``status``).
    Definitions refuse neither (a refusal there stopped deployments holding such a name
    from starting: docs/api.md)."""
    seen: dict[str, str] = {}
    for i, name in enumerate(names):
        what = ("column ", "the statuses of column ", "the event times of column ")[i % 3]
        what += repr(clipped(names[i - i % 3]))
        if name in seen:
            message = (
                f"the Arrow answer would have two columns named {clipped(name)!r}: {seen[name]} "
                f"and {what}; rename one (full_feature_names may), or ask for JSON"
            )
            return InvalidArgument(message, details=[{"column": clipped(name)}])
        seen[name] = what
    raise AssertionError("no two names alike")
