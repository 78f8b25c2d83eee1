"""request_data in a join: the fields a plan needs, checked against their
``request_schema`` dtype before any store is read (docs/api.md), and fields no derived
view declares, which are ignored."""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from featurestore.derived import language as lang
from featurestore.errors import SHOWN_CHARS, InvalidArgument, quoted
from featurestore.model import Definitions, DType, RequestField

log = logging.getLogger(__name__)

_INT_RANGE = {  # what a Python int in a request field may be: [lo, hi)
    DType.INT64: (-(2**63), 2**63),
    DType.FLOAT64: (-int(sys.float_info.max), int(sys.float_info.max) + 1),
}
_ACCEPTS: dict[DType, frozenset[type]] = {
    DType.FLOAT64: frozenset({float, int, type(None)}),
    DType.INT64: frozenset({int, type(None)}),
    DType.BOOL: frozenset({bool, type(None)}),
    DType.STRING: frozenset({str, type(None)}),
}


class Needed(NamedTuple):
    """A request field a plan needs, with a feature needing it (named in errors)."""

    field: RequestField
    needed_by: str
    accepts: frozenset[type]  # its dtype's _ACCEPTS, looked up once per plan (a DType key: 93 ns)


def needed(field: RequestField, needed_by: str) -> Needed:
    return Needed(field, needed_by, _ACCEPTS[field.dtype])


def check_fields(
    needs: Sequence[Needed], data: Mapping[str, Sequence[Any]] | None, n: int
) -> list[Sequence[Any]]:
    """The columns of the ``needs`` fields, checked."""
    cols: list[Sequence[Any]] = []
    for field, needed_by, accepts in needs:
        col = data.get(field.name) if data else None
        if col is None or type(col) not in (list, tuple) or len(col) != n:
            raise _bad_field(field, needed_by, col, n)
        types = set(map(type, col))
        if not accepts.issuperset(types):
            raise _bad_field(field, needed_by, col, n)
        if int in types and not _in_range(field.dtype, col, types):
            raise _out_of_range(field, needed_by, col)
        cols.append(col)
    return cols


def _bad_field(field: RequestField, needed_by: str, col: Any, n: int) -> InvalidArgument:
    where = f"request_data.{field.name}"
    details = [{"request_data": field.name, "feature": needed_by}]
    if col is None:
        message = f"{where} is missing: {needed_by} needs it (one {field.dtype.value} per entity row)"
    elif not isinstance(col, list | tuple) or len(col) != n:
        got = f"{len(col)} values" if isinstance(col, list | tuple) else type(col).__name__
        message = f"{where} has {got} for {n} entity rows"
    else:
        accepts = _ACCEPTS[field.dtype]
        i, bad = next((i, v) for i, v in enumerate(col) if type(v) not in accepts)
        message = f"{where}[{i}]: expected {field.dtype.value}, got {type(bad).__name__} {bad!r:.40}"
    return InvalidArgument(message, details=details)


# What note_undeclared has looked at, to log each name once. The count and each entry are
# bounded: a name comes from a caller and may be as long as the body (4 MiB by default, so
# 1,024 such names held about 4 GiB). A name longer than SHOWN_CHARS (100) is held as its
# first 100 characters, its length and its str hash (already computed and cached by the
# set lookup): at most 1,024 entries of about 600 bytes, under 1 MB in all.
_seen_fields: set[str | tuple[str, int, int]] = set()
_MAX_SEEN_FIELDS = 1024


def note_undeclared(data: Mapping[str, Any], defs: Definitions) -> None:
    """A request_data field no derived view declares is ignored (docs/api.md), like one
    the requested features do not need; a typo would go unnoticed, so log each such
    name once, at debug (a long one clipped). Per request: one set lookup per field."""
    for name in data:
        key = name if len(name) <= SHOWN_CHARS else (name[:SHOWN_CHARS], len(name), hash(name))
        if key in _seen_fields or len(_seen_fields) >= _MAX_SEEN_FIELDS:
            continue
        _seen_fields.add(key)
        if not any(r.name == name for v in defs.derived_views.values() for r in v.request_schema):
            log.debug("request_data field %s is not declared by any derived view: ignored", quoted(name))


def _in_range(dtype: DType, col: Sequence[Any], types: set[type]) -> bool:
    """Python ints are unbounded; int64 fields take [-2^63, 2^63), float64 fields ints
    within float64's range (a kernel sees float64)."""
    ints = col if len(types) == 1 else [v for v in col if type(v) is int]
    lo, hi = _INT_RANGE[dtype]
    return lo <= min(ints) and max(ints) < hi


def _out_of_range(field: RequestField, needed_by: str, col: Sequence[Any]) -> InvalidArgument:
    lo, hi = _INT_RANGE[field.dtype]
    i, bad = next((i, v) for i, v in enumerate(col) if type(v) is int and not lo <= v < hi)
    bounds = "[-2^63, 2^63)" if field.dtype is DType.INT64 else "(-1.8e308, 1.8e308)"
    return InvalidArgument(
        f"request_data.{field.name}[{i}]: {lang.abbreviate(bad)} is outside the {field.dtype.value} range {bounds}",
        details=[{"request_data": field.name, "feature": needed_by}],
    )
