"""The HTTP join response of one entity row, written from fragments.

A batch-1 join is the commonest request and its response the smallest: one value per
column, each column wrapped in the same three-list object, with statuses and timestamps
shared per view. ``json_codec.encode_document`` builds that document as Python dicts and
lists for orjson to walk; for one row the building and the walk cost more than the
values. Here each value is written by orjson on its own (the same float, string and
null rules: a non-finite float is null), each view's statuses-and-timestamps tail once,
and the pieces are joined: byte for byte the document ``encode_document`` writes
(tests/unit/test_json_row.py holds the two to that on every dtype and status).

Why: a ranker_v1 response (16 features of 2 views) at one row in 7.5 against 9.3 µs as a
document, ranker_v2 (+ 4 derived) 8.8 against 11.0, 3 stored inputs + 4 derived 4.1
against 5.0 (``python -m benchmarks.json_encoding``, benchmarks/RESULTS.md, 2026-12-07
01:20). A batch-1 join costs the serving process 120-170 µs of CPU under load on that
host, so 1-2%.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Final

import orjson

from featurestore.api.statuses import JSON_NAME_BY_VALUE, PRESENT_NAME
from featurestore.api.timestamps import iso_list
from featurestore.model import DType

if TYPE_CHECKING:
    from featurestore.join import JoinResult, ResultColumn

_dumps = orjson.dumps
_NUMPY: Final = orjson.OPT_SERIALIZE_NUMPY  # as json_codec: a numpy scalar or vector value
_TIMESTAMP: Final = DType.TIMESTAMP
_OPEN: Final = b',"results":[{"values":['
_NEXT: Final = b']},{"values":['  # between one column's tail and the next column's value
_CLOSE: Final = b"]}]}"
_STATUS: Final = tuple(map(_dumps, JSON_NAME_BY_VALUE))  # by Status value, as JSON strings
_PRESENT: Final = _dumps(PRESENT_NAME)
# The tail of an entity column: always PRESENT, no event timestamp.
_ENTITY_TAIL: Final = b'],"statuses":[' + _PRESENT + b'],"event_timestamps":[null' + _NEXT


def dtype_names(columns: Sequence[ResultColumn]) -> list[str]:
    """Each column's dtype as ``metadata.dtypes`` names it (``int64``, ``float64``, ...):
    JSON values alone cannot tell a column of nulls, or a timestamp from a string. (Each
    enum member's ``_value_``, the attribute its ``value`` property returns: 0.5 µs for 20
    columns against 3.0 through the property.)"""
    return [c.dtype._value_ for c in columns]


def encode_row(result: JoinResult, trace_id: str) -> bytes:
    """The JSON join response of ``result``, a join of one entity row with at least one
    column (what ``json_codec.encode_document`` writes for it)."""
    columns = result.columns
    parts = [
        b'{"metadata":{"feature_names":',
        _dumps([c.name for c in columns]),
        b',"dtypes":',
        _dumps(dtype_names(columns)),
        b',"registry_version":',
        _dumps(result.registry_version),
        b',"trace_id":',
        _dumps(trace_id),
        b',"partial":true}' if result.partial else b',"partial":false}',
        _OPEN,
    ]
    tails: dict[int, bytes] = {}  # per view outcome: its columns' shared tail
    for col in columns:
        values: Any = col.values
        parts.append(_dumps(iso_list(values)[0] if col.dtype is _TIMESTAMP else values[0], option=_NUMPY))
        outcome = col.outcome
        if outcome is None:
            parts.append(_ENTITY_TAIL)
            continue
        tail = tails.get(id(outcome))
        if tail is None:
            ts = outcome.event_ts_us[0]
            tail = tails[id(outcome)] = b"".join((
                b'],"statuses":[',
                _PRESENT if outcome.all_present else _STATUS[outcome.statuses[0]],  # (as the document)
                b'],"event_timestamps":[',
                b"null" if ts is None else _dumps(iso_list(outcome.event_ts_us)[0]),
                _NEXT,
            ))  # fmt: skip
        parts.append(tail)
    parts.append(parts.pop()[: -len(_NEXT)] + _CLOSE)
    return b"".join(parts)
