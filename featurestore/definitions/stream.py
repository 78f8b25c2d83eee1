"""``stream_views`` in a definitions file: windowed aggregations over a Kafka topic.

A stream view is a feature view whose features are aggregations (``count``, ``sum``,
``avg``, ``min``, ``max``, ``last``) of event fields over sliding windows, kept as
partial aggregates per time tile (docs/streaming.md). It parses into a
:class:`~featurestore.model.FeatureView` with ``stream`` set, so plans, services,
derived views and lineage treat it like any view. Every error names the file, the
object and the field, e.g.
``features.yaml: stream_views[clicks].aggregations[clicks_5m].window: ...``.
The snapshot stores stream views in this same form, so loading one reuses this code.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from featurestore.model import (
    AGGREGATION_FUNCTIONS,
    Aggregation,
    DType,
    Entity,
    Feature,
    FeatureView,
    StreamSource,
    StreamSpec,
)

if TYPE_CHECKING:
    from featurestore.definitions.parser import _Parser

TIMESTAMP_UNITS = {"s": 1_000_000, "ms": 1_000, "us": 1}
VALUE_FORMATS = ("json",)
DEFAULT_TILE_SECONDS = 60
# Tiles a window may span: a read sums every tile of the longest window of each key, so
# this bounds a key's value in the store (tiles x slots x 8 bytes) and the read's work.
MAX_TILES_PER_WINDOW = 10_080  # 7 days of 1-minute tiles


def dtype_of(function: str) -> DType:
    return DType.INT64 if function == "count" else DType.FLOAT64


def parse_stream_views(p: _Parser, raw: list[Any], entities: Mapping[str, Entity]) -> list[FeatureView]:
    return [_view(p, obj, i, entities) for i, obj in enumerate(raw)]


def _view(p: _Parser, obj: Any, i: int, entities: Mapping[str, Entity]) -> FeatureView:
    where = f"stream_views[{i}]"
    allowed = {
        "name", "entities", "online_store", "ttl", "tile", "allowed_lateness", "source",
        "aggregations", "tags", "owner", "description",
    }  # fmt: skip
    m = p.mapping(obj, where, allowed, {"name", "entities", "source", "aggregations"})
    name = p.name(m, where)
    where = f"stream_views[{name}]"
    keys = p.entity_keys(m, where, entities, "a stream view")
    tile = p.duration(m.get("tile", DEFAULT_TILE_SECONDS), f"{where}.tile", short="must be at least 1s")
    assert tile is not None
    lateness = p.duration(m.get("allowed_lateness"), f"{where}.allowed_lateness", 0, "must be 0 or more") or 0
    source = _source(p, m["source"], f"{where}.source", keys)
    aggs = _aggregations(p, m["aggregations"], f"{where}.aggregations", tile, keys, source)
    # checked as a feature view's since 2026-12-07: a snapshot applied before loads as it did
    store = p.store_name(m, where) if p.authoring else p.string(m, "online_store", where, "default")
    return FeatureView(
        name=name,
        entities=tuple(entities[k] for k in keys),
        features=tuple(Feature(a.name, dtype_of(a.function)) for a in aggs),
        online_store=store,
        ttl_seconds=p.duration(m.get("ttl"), f"{where}.ttl"),
        upstream=(source.uri,),
        tags=p.tags(m, where),
        owner=p.string(m, "owner", where),
        description=p.string(m, "description", where),
        stream=StreamSpec(source, tuple(aggs), tile, lateness),
    )


def _source(p: _Parser, obj: Any, where: str, keys: list[str]) -> StreamSource:
    allowed = {"kind", "topic", "format", "key_fields", "timestamp_field", "timestamp_unit", "filter"}
    m = p.mapping(obj, where, allowed, {"topic"})
    kind = p.string(m, "kind", where, "kafka")
    if kind != "kafka":
        raise p.fail(f"{where}.kind", f"unknown source kind {kind!r}; only kafka is supported")
    topic = p.string(m, "topic", where)
    if not topic:
        raise p.fail(f"{where}.topic", "must not be empty")
    fmt = p.string(m, "format", where, "json")
    if fmt not in VALUE_FORMATS:
        raise p.fail(f"{where}.format", f"unknown value format {fmt!r}; use {', '.join(VALUE_FORMATS)}")
    key_fields = p.str_list(m, "key_fields", where) or list(keys)
    if len(key_fields) != len(keys):
        raise p.fail(f"{where}.key_fields", f"names {len(key_fields)} fields for {len(keys)} entities")
    unit = p.string(m, "timestamp_unit", where, "ms")
    if unit not in TIMESTAMP_UNITS:
        raise p.fail(f"{where}.timestamp_unit", f"unknown unit {unit!r}; use s, ms or us")
    raw_filter = m.get("filter") or {}
    if not isinstance(raw_filter, dict):
        raise p.fail(f"{where}.filter", "expected a mapping of event field to the value it must equal")
    for k, v in raw_filter.items():
        if not isinstance(v, (str, int, float, bool)):
            raise p.fail(f"{where}.filter.{k}", "expected a string, number or boolean")
    return StreamSource(
        topic=topic,
        key_fields=tuple(key_fields),
        timestamp_field=p.string(m, "timestamp_field", where, "event_timestamp"),
        timestamp_unit=unit,
        value_format=fmt,
        filter=tuple(sorted((str(k), v) for k, v in raw_filter.items())),
    )


def _aggregations(
    p: _Parser, raw: Any, where: str, tile: int, keys: list[str], source: StreamSource
) -> list[Aggregation]:
    if not isinstance(raw, list) or not raw:
        raise p.fail(where, "expected a non-empty list of aggregations")
    out: list[Aggregation] = []
    seen: set[str] = set()
    for j, obj in enumerate(raw):
        at = f"{where}[{j}]"
        m = p.mapping(obj, at, {"name", "function", "column", "window"}, {"name", "function", "window"})
        name = p.name(m, at)
        at = f"{where}[{name}]"
        p.not_reserved(name, at)
        if name in seen:
            raise p.fail(at, "defined twice")
        if name in keys:
            raise p.fail(at, "has the name of an entity key of the view")
        seen.add(name)
        function = p.string(m, "function", at)
        if function not in AGGREGATION_FUNCTIONS:
            raise p.fail(
                f"{at}.function", f"unknown function {function!r}; use {', '.join(AGGREGATION_FUNCTIONS)}"
            )
        column = p.string(m, "column", at)
        if not column and function != "count":
            raise p.fail(f"{at}.column", f"is required for {function}")
        if p.authoring:
            _numeric_column(p, column, f"{at}.column", source)
        window = p.duration(m.get("window"), f"{at}.window", short="must be at least 1s")
        assert window is not None
        if window % tile:
            raise p.fail(f"{at}.window", f"{window}s is not a multiple of the tile size ({tile}s)")
        if window // tile > MAX_TILES_PER_WINDOW:
            raise p.fail(
                f"{at}.window",
                f"spans {window // tile} tiles of {tile}s; at most {MAX_TILES_PER_WINDOW}: use a larger tile",
            )
        out.append(Aggregation(name, function, column, window))
    return out


def _numeric_column(p: _Parser, column: str, where: str, source: StreamSource) -> None:
    """An aggregated column is a number in every event: not a field the source reads as
    something else (an event field is decoded as one type), nor one its filter wants a
    string or a boolean of (every event would be malformed)."""
    if not column:
        return
    if column in source.key_fields:
        raise p.fail(where, f"{column!r} is a key field of the source: aggregate a numeric event field")
    if column == source.timestamp_field:
        raise p.fail(
            where,
            f"{column!r} is the source's timestamp field: aggregate a numeric event field "
            "(a copy of the time, in a field of its own, for 'last seen')",
        )
    wanted = dict(source.filter).get(column)
    if isinstance(wanted, (str, bool)):
        raise p.fail(
            where, f"{column!r} is filtered on {wanted!r}, not a number: every event would be malformed"
        )


def stream_to_dict(v: FeatureView) -> dict[str, Any]:
    """The snapshot form: the YAML form, normalized (durations in seconds)."""
    s = v.stream
    assert s is not None
    src = s.source
    return {
        "name": v.name,
        "entities": list(v.join_keys),
        "online_store": v.online_store,
        "ttl": v.ttl_seconds,
        "tile": s.tile_seconds,
        "allowed_lateness": s.allowed_lateness_seconds,
        "source": {
            "kind": "kafka",
            "topic": src.topic,
            "format": src.value_format,
            "key_fields": list(src.key_fields),
            "timestamp_field": src.timestamp_field,
            "timestamp_unit": src.timestamp_unit,
            "filter": dict(src.filter),
        },
        "aggregations": [
            {"name": a.name, "function": a.function, "column": a.column, "window": a.window_seconds}
            for a in s.aggregations
        ],
        "tags": dict(sorted(v.tags.items())),
        "owner": v.owner,
        "description": v.description,
    }
