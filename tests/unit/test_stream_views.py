"""Stream views: definitions (errors with their path, snapshots), events decoding, and
serving through the join from the memory tile store (windows move with the clock,
NOT_FOUND, OUTSIDE_MAX_AGE, event timestamps, lineage source, derived features)."""

from __future__ import annotations

import asyncio
import copy
import time
from pathlib import Path
from typing import Any

import pytest

from featurestore.definitions.parser import parse_definitions
from featurestore.definitions.snapshot import (
    definitions_from_dict,
    definitions_to_dict,
    fingerprint,
    new_snapshot,
)
from featurestore.derived import compiler
from featurestore.errors import DefinitionError, FailedPrecondition
from featurestore.join import JoinEngine, JoinRequest, Limits
from featurestore.model import Definitions, DType, Status
from featurestore.plan import ServingState
from featurestore.streaming.decode import Event, EventDecoder, Malformed
from featurestore.streaming.serving import StreamSource
from featurestore.streaming.store import MemoryTileStore, PartitionMark, TileBatch
from featurestore.streaming.tiles import TileAccumulator, view_layout

MIN_US = 60_000_000
DOC: dict[str, Any] = {
    "project": "p",
    "entities": [{"name": "user_id", "dtype": "int64"}, {"name": "item", "dtype": "string"}],
    "stream_views": [
        {
            "name": "clicks",
            "entities": ["user_id"],
            "ttl": "10m",
            "tile": "1m",
            "allowed_lateness": "30s",
            "source": {
                "topic": "clicks",
                "key_fields": ["user"],
                "timestamp_field": "ts",
                "filter": {"kind": "c"},
            },
            "aggregations": [
                {"name": "n_5m", "function": "count", "window": "5m"},
                {"name": "spend_1h", "function": "sum", "column": "amount", "window": "1h"},
                {"name": "avg_1h", "function": "avg", "column": "amount", "window": "1h"},
                {"name": "lo_1h", "function": "min", "column": "amount", "window": "1h"},
                {"name": "hi_1h", "function": "max", "column": "amount", "window": "1h"},
                {"name": "last_1h", "function": "last", "column": "amount", "window": "1h"},
            ],
        }
    ],
    "derived_views": [
        {
            "name": "ratios",
            "inputs": {"n": "clicks:n_5m", "spend": "clicks:spend_1h"},
            "features": [{"name": "spend_per_click", "dtype": "float64", "expression": "spend / (n + 1)"}],
        }
    ],
    "feature_services": [{"name": "ranker", "features": ["clicks", "ratios:spend_per_click"]}],
}


def parse(doc: dict[str, Any]) -> Definitions:
    return parse_definitions(doc, source="f.yaml")


def broken(path: str, value: Any) -> dict[str, Any]:
    doc = copy.deepcopy(DOC)
    target: Any = doc["stream_views"][0]
    *parents, last = path.split(".")
    for p in parents:
        target = target[int(p)] if p.isdigit() else target[p]
    if value is None:
        del target[int(last) if last.isdigit() else last]
    else:
        target[int(last) if last.isdigit() else last] = value
    return doc


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (
            "aggregations.0.function",
            "median",
            "stream_views[clicks].aggregations[n_5m].function: unknown function 'median'",
        ),
        (
            "aggregations.0.window",
            "90s",
            "stream_views[clicks].aggregations[n_5m].window: 90s is not a multiple of the tile size (60s)",
        ),
        (
            "aggregations.1.column",
            None,
            "stream_views[clicks].aggregations[spend_1h].column: is required for sum",
        ),
        ("source.topic", None, "stream_views[clicks].source.topic: is required"),
        ("source.format", "avro", "stream_views[clicks].source.format: unknown value format 'avro'"),
        ("source.timestamp_unit", "ns", "stream_views[clicks].source.timestamp_unit: unknown unit 'ns'"),
        (
            "source.key_fields",
            ["a", "b"],
            "stream_views[clicks].source.key_fields: names 2 fields for 1 entities",
        ),
        ("entities", ["nobody"], "stream_views[clicks].entities: unknown entity 'nobody'"),
        ("tile", "7x", "stream_views[clicks].tile: invalid duration '7x'"),
        (
            "aggregations.2.window",
            "30d",
            "stream_views[clicks].aggregations[avg_1h].window: spans 43200 tiles",
        ),
        ("windows", 3, "stream_views[clicks].windows: unknown field"),
        # review 53: checked as a feature view's store; each duration's own lower bound
        ("online_store", "bad name", "stream_views[clicks].online_store: invalid store name 'bad name'"),
        ("aggregations.0.window", 0, "stream_views[clicks].aggregations[n_5m].window: must be at least 1s"),
        ("tile", "0s", "stream_views[clicks].tile: must be at least 1s"),
        ("allowed_lateness", -5, "stream_views[clicks].allowed_lateness: must be 0 or more"),
        (
            "aggregations.0.name",
            "event_timestamp",
            "stream_views[clicks].aggregations[event_timestamp]: 'event_timestamp' is a reserved column name",
        ),
        # an aggregated column is a number in every event (review round 20: events were
        # dead-lettered and still counted)
        (
            "aggregations.5.column",
            "ts",
            "stream_views[clicks].aggregations[last_1h].column: 'ts' is the source's timestamp field",
        ),
        (
            "aggregations.3.column",
            "user",
            "stream_views[clicks].aggregations[lo_1h].column: 'user' is a key field of the source",
        ),
        (
            "aggregations.1.column",
            "kind",
            "stream_views[clicks].aggregations[spend_1h].column: 'kind' is filtered on 'c', not a number",
        ),
    ],
)
def test_definition_errors_name_the_stream_view_field(path: str, value: Any, message: str) -> None:
    with pytest.raises(DefinitionError) as info:
        parse(broken(path, value))
    assert f"f.yaml: {message}" in str(info.value)


def test_a_lateness_of_zero_in_any_unit_is_none_and_a_stored_view_keeps_its_store_name() -> None:
    for zero in (0, "0", "0s", "0m"):  # "0m" was "must be positive" while "0s" passed
        spec = parse(broken("allowed_lateness", zero)).views["clicks"].stream
        assert spec is not None and spec.allowed_lateness_seconds == 0
    stored = parse_definitions(broken("online_store", "bad name"), source="snapshot", check_functions=False)
    assert stored.views["clicks"].online_store == "bad name"  # applied before 2026-12-07: still loads


def test_a_stream_view_is_a_view_whose_features_are_its_aggregations() -> None:
    view = parse(DOC).views["clicks"]
    assert [(f.name, f.dtype) for f in view.features][:2] == [
        ("n_5m", DType.INT64),
        ("spend_1h", DType.FLOAT64),
    ]
    assert view.stream is not None and view.stream.tile_seconds == 60
    assert view.stream.allowed_lateness_seconds == 30 and view.ttl_seconds == 600
    assert view.serving_store == "stream:default" and view.upstream == ("kafka://clicks",)


def test_a_stream_view_survives_the_snapshot_round_trip_with_its_fingerprint() -> None:
    defs = parse(DOC)
    again = definitions_from_dict(definitions_to_dict(defs))
    assert again.views["clicks"] == defs.views["clicks"] and fingerprint(again) == fingerprint(defs)
    assert "stream_views" in definitions_to_dict(defs)
    assert "stream_views" not in definitions_to_dict(parse({"project": "p"}))


def test_a_stored_snapshot_applied_before_the_column_checks_still_loads() -> None:
    """A view aggregating its (numeric) timestamp field was applied before 2026-12-05 and
    worked: its stored snapshot loads; validate and apply refuse it from now on."""
    stored = definitions_to_dict(parse(DOC))
    stored["stream_views"][0]["aggregations"][5]["column"] = "ts"  # last_1h: the last event time
    again = definitions_from_dict(stored)
    assert again.views["clicks"].stream is not None
    assert again.views["clicks"].stream.aggregations[5].column == "ts"
    with pytest.raises(DefinitionError, match="'ts' is the source's timestamp field"):
        parse(broken("aggregations.5.column", "ts"))


def test_a_stream_view_may_not_share_a_feature_views_name() -> None:
    doc = copy.deepcopy(DOC)
    doc["feature_views"] = [
        {"name": "clicks", "entities": ["user_id"], "features": [{"name": "x", "dtype": "int64"}]}
    ]
    with pytest.raises(DefinitionError, match=r"stream_views\[clicks\]: a feature view has the same name"):
        parse(doc)


def test_events_decode_to_key_time_and_values_or_a_reason() -> None:
    dec = EventDecoder(parse(DOC).views["clicks"])
    [amount] = dec.column_attrs
    got = dec.decode(b'{"user": 7, "ts": 1500, "kind": "c", "amount": 2.5, "other": [1]}')
    assert isinstance(got, Event) and (got.key, got.ts_us, getattr(got.values, amount)) == (
        "7",
        1_500_000,
        2.5,
    )
    got = dec.decode(b'{"user": 7, "ts": "2026-01-01T00:00:01Z", "kind": "c", "amount": 3}')
    assert isinstance(got, Event) and (got.ts_us, getattr(got.values, amount)) == (1767225601000000, 3.0)
    got = dec.decode(b'{"user": 7, "ts": 1.5, "kind": "c"}')
    assert isinstance(got, Event) and (got.ts_us, getattr(got.values, amount)) == (1500, None)
    assert dec.decode(b'{"user": 7, "ts": 1, "kind": "v"}') is None  # filtered out
    for raw, reason in [
        (b"{", "not valid JSON"),
        (b"", "empty message"),
        (b"[1]", "Expected `object`, got `array`"),
        (b'{"ts": 1, "kind": "c"}', "Object missing required field `user`"),
        (b'{"user": "7", "ts": 1, "kind": "c"}', "Expected `int`, got `str` - at `$.user`"),
        (b'{"user": 7.0, "ts": 1, "kind": "c"}', "Expected `int`, got `float` - at `$.user`"),
        (b'{"user": 7, "kind": "c"}', "Object missing required field `ts`"),
        (b'{"user": 7, "ts": true, "kind": "c"}', "got `bool` - at `$.ts`"),
        (b'{"user": 7, "ts": "soon", "kind": "c"}', "timestamp field 'ts': not ISO-8601"),
        (
            b'{"user": 7, "ts": 1, "kind": "c", "amount": "2"}',
            "Expected `int | float | null`, got `str` - at `$.amount`",
        ),
        (b'{"user": 7, "ts": 1, "kind": "c", "amount": true}', "got `bool` - at `$.amount`"),
        (b'{"user": 7, "ts": "2026-01-01T00:00:01\xe9", "kind": "c"}', "a string field is not valid UTF-8"),
        (b'{"user": 7, "ts": 1, "kind": "\xff"}', "a string field is not valid UTF-8"),
        (b'{"user": 7, "ts": 1, "x": ' + b"[" * 5000 + b"]" * 5000 + b"}", "nested too deeply"),
    ]:
        got = dec.decode(raw)
        assert isinstance(got, Malformed) and reason in got.reason, raw


@pytest.fixture(scope="module")
def defs() -> Definitions:
    return parse(DOC)


@pytest.fixture(scope="module")
def kernels(defs: Definitions, tmp_path_factory: pytest.TempPathFactory) -> dict[str, compiler.Kernel]:
    return asyncio.run(compiler.kernels_for(defs, tmp_path_factory.mktemp("kernels")))


def write(store: MemoryTileStore, defs: Definitions, events: list[tuple[str, int, float | None]]) -> None:
    view = defs.views["clicks"]
    acc = TileAccumulator(view_layout(view))
    for key, ts, amount in events:
        acc.add(key, ts, {} if amount is None else {"amount": amount})
    marks = store.marks(view, "clicks")
    expected = marks.get(0, PartitionMark(-1, 0)).offset
    batch = TileBatch(
        "clicks",
        {0: (expected, PartitionMark(expected + len(events), 0))},
        acc.records,
        time.time_ns() // 1000 // MIN_US,
    )
    assert store.apply(view, batch) is None


async def join(
    defs: Definitions,
    kernels: Any,
    store: MemoryTileStore,
    now_us: int,
    keys: list[int],
    features: tuple[str, ...],
) -> dict[str, Any]:
    source = StreamSource("default", store, clock=lambda: now_us)
    engine = JoinEngine({source.name: source}, ServingState(new_snapshot(defs, 1), kernels=kernels), Limits())
    result = await engine.join(JoinRequest({"user_id": keys}, features), time.monotonic() + 5)
    return {c.name: c for c in result.columns}


async def test_window_values_move_as_time_passes_without_new_events(defs: Definitions, kernels: Any) -> None:
    store = MemoryTileStore()
    t0 = (time.time_ns() // 1000 // MIN_US) * MIN_US  # the current tile's start
    write(store, defs, [("1", t0 - 3 * MIN_US, 10.0), ("1", t0 - 2 * MIN_US + 5, None), ("1", t0 + 1, 4.0)])
    feats = (
        "clicks:n_5m",
        "clicks:spend_1h",
        "clicks:avg_1h",
        "clicks:lo_1h",
        "clicks:hi_1h",
        "clicks:last_1h",
    )
    now = await join(defs, kernels, store, t0 + 2, [1], feats)
    assert [now[n].values[0] for n in ("n_5m", "spend_1h", "avg_1h", "lo_1h", "hi_1h", "last_1h")] == [
        3,
        14.0,
        7.0,
        4.0,
        10.0,
        4.0,
    ]
    assert now["n_5m"].outcome.event_ts_us == [t0 + 1]
    later = await join(
        defs, kernels, store, t0 + 2 * MIN_US, [1], feats
    )  # the first event (tile -3) left the 5m window (tiles -2 .. +2)
    assert later["n_5m"].values == [2] and later["spend_1h"].values == [14.0]
    assert later["n_5m"].outcome.statuses == [Status.PRESENT]


async def test_a_key_without_events_in_any_window_is_not_found(defs: Definitions, kernels: Any) -> None:
    store = MemoryTileStore()
    t0 = (time.time_ns() // 1000 // MIN_US) * MIN_US
    write(store, defs, [("1", t0, 1.0)])
    got = await join(defs, kernels, store, t0 + 1, [1, 2], ("clicks:n_5m",))
    assert got["n_5m"].outcome.statuses == [Status.PRESENT, Status.NOT_FOUND] and got["n_5m"].values == [
        1,
        None,
    ]
    gone = await join(defs, kernels, store, t0 + 61 * MIN_US, [1], ("clicks:n_5m",))  # past the 1h window
    assert gone["n_5m"].outcome.statuses == [Status.NOT_FOUND]


async def test_an_idle_key_past_the_views_ttl_is_outside_max_age(defs: Definitions, kernels: Any) -> None:
    store = MemoryTileStore()
    t0 = (time.time_ns() // 1000 // MIN_US) * MIN_US
    write(store, defs, [("1", t0 - 20 * MIN_US, 1.0), ("2", t0, 1.0)])  # ttl is 10m
    got = await join(defs, kernels, store, t0 + 1, [1, 2], ("clicks:spend_1h",))
    assert got["spend_1h"].outcome.statuses == [Status.OUTSIDE_MAX_AGE, Status.PRESENT]
    assert got["spend_1h"].values == [None, 1.0]


async def test_stream_features_are_inputs_of_derived_features(defs: Definitions, kernels: Any) -> None:
    store = MemoryTileStore()
    t0 = (time.time_ns() // 1000 // MIN_US) * MIN_US
    write(store, defs, [("1", t0, 9.0), ("1", t0 + 1, 3.0)])
    got = await join(defs, kernels, store, t0 + 2, [1], ("ratios:spend_per_click",))
    assert got["spend_per_click"].values == [4.0]  # 12 / (2 + 1)


async def test_lineage_names_the_topic_and_writes_are_refused(defs: Definitions) -> None:
    source = StreamSource("default", MemoryTileStore())
    view = defs.views["clicks"]
    assert source.table_uri(view) == "kafka://clicks"
    with pytest.raises(FailedPrecondition, match="stream view"):
        await source.write(view, None, 0)


def test_the_demo_stream_definitions_validate() -> None:
    from featurestore.definitions.parser import load_definitions

    defs = load_definitions(
        Path(__file__).resolve().parents[2] / "featurestore" / "demo" / "stream_features.yaml"
    )
    assert defs.views["user_clicks"].stream is not None


def test_a_changed_aggregation_shows_in_the_diff_as_a_compatible_change() -> None:
    from featurestore.definitions.diff import diff

    changed = copy.deepcopy(DOC)
    changed["stream_views"][0]["aggregations"][0]["window"] = "10m"
    [change] = [c for c in diff(parse(DOC), parse(changed)) if c.name == "clicks"]
    assert change.op == "~" and not change.incompatible
    assert any("stream view definition changed" in d for d in change.details)


async def test_a_tile_store_that_cannot_be_reached_makes_the_view_unavailable_not_an_error(
    defs: Definitions,
) -> None:
    from featurestore.streaming.redis_store import RedisTileStore
    from tests.support import free_port

    store = RedisTileStore("default", "p", f"redis://127.0.0.1:{free_port()}/0")  # nothing listens there
    source = StreamSource("default", store)
    engine = JoinEngine({source.name: source}, ServingState(new_snapshot(defs, 1)), Limits())
    try:
        result = await engine.join(JoinRequest({"user_id": [1, 2]}, ("clicks:n_5m",)), time.monotonic() + 2)
    finally:
        await source.close()
    col = {c.name: c for c in result.columns}["n_5m"]
    assert col.outcome is not None and col.outcome.statuses == [Status.UNAVAILABLE] * 2
    assert result.partial and col.values == [None, None]


def test_an_event_time_outside_1970_to_2255_or_a_key_outside_int64_is_malformed() -> None:
    """A far-future time would move its partition's watermark so far that every later
    event of the partition counted as late, for good (the watermark is stored)."""
    dec = EventDecoder(parse(DOC).views["clicks"])
    for raw, reason in [
        (
            b'{"user": 7, "ts": 100000000000000000000, "kind": "c"}',
            "timestamp field 'ts': outside 1970..2255",
        ),
        (b'{"user": 7, "ts": -1, "kind": "c"}', "timestamp field 'ts': outside 1970..2255"),
        (
            b'{"user": 7, "ts": "9999-12-31T00:00:00", "kind": "c"}',
            "timestamp field 'ts': outside 1970..2255",
        ),
        (b'{"user": 99999999999999999999, "ts": 1, "kind": "c"}', "Expected `int` <= 9223372036854775807"),
    ]:
        got = dec.decode(raw)
        assert isinstance(got, Malformed) and reason in got.reason, (raw, got)
    assert isinstance(dec.decode(b'{"user": 7, "ts": 9000000000000, "kind": "c"}'), Event)  # 2255-03


def test_the_demo_views_ttl_is_shorter_than_its_longest_window_so_an_idle_user_is_outside_max_age() -> None:
    """docs/streaming.md promises OUTSIDE_MAX_AGE after the ttl: past the longest window
    a key is NOT_FOUND, so a ttl as long as that window would never show it."""
    from featurestore.definitions.parser import load_definitions

    defs = load_definitions(
        Path(__file__).resolve().parents[2] / "featurestore" / "demo" / "stream_features.yaml"
    )
    view = defs.views["user_clicks"]
    assert view.stream is not None and view.ttl_seconds is not None
    assert view.ttl_seconds < view.stream.max_window_seconds - view.stream.tile_seconds


def test_an_integer_column_value_beyond_2_to_the_53_is_malformed_not_rounded() -> None:
    """Tiles hold float64: 9007199254740993 would be served as 9007199254740992 by `last`
    and `sum`. Within +-2^53 every integer is exact; a JSON float is the producer's own
    rounding and is taken as it is."""
    dec = EventDecoder(parse(DOC).views["clicks"])
    [amount] = dec.column_attrs
    for raw, reason in [
        (
            b'{"user": 7, "ts": 1, "kind": "c", "amount": 9007199254740993}',
            "Expected `int` <= 9007199254740992",
        ),
        (
            b'{"user": 7, "ts": 1, "kind": "c", "amount": -9007199254740993}',
            "Expected `int` >= -9007199254740992",
        ),
        (
            b'{"user": 7, "ts": 1, "kind": "c", "amount": 100000000000000000000}',
            "Expected `int` <= 9007199254740992",
        ),
    ]:
        got = dec.decode(raw)
        assert isinstance(got, Malformed) and got.reason == f"{reason} - at `$.amount`", (raw, got)
    for raw, value in [
        (b'{"user": 7, "ts": 1, "kind": "c", "amount": 9007199254740992}', 2**53),
        (b'{"user": 7, "ts": 1, "kind": "c", "amount": -9007199254740992}', -(2**53)),
        (b'{"user": 7, "ts": 1, "kind": "c", "amount": 1e292}', 1e292),  # the floats' bound (decode.py)
    ]:
        got = dec.decode(raw)
        assert isinstance(got, Event) and getattr(got.values, amount) == value, raw


def test_a_string_key_with_the_separator_is_malformed_even_in_an_event_the_filter_drops() -> None:
    """Events are checked before the filter applies (docs/streaming.md): a producer sending
    bad keys hears of it whatever the event's kind."""
    doc = copy.deepcopy(DOC)
    doc["stream_views"][0]["entities"] = ["item"]
    doc["stream_views"][0]["source"]["key_fields"] = ["sku"]
    doc["stream_views"][0]["ttl"] = None
    del doc["derived_views"], doc["feature_services"]
    dec = EventDecoder(parse(doc).views["clicks"])
    for kind in ("c", "v"):  # kept, dropped by the filter
        got = dec.decode(b'{"sku": "a|b", "ts": 1, "kind": "%s"}' % kind.encode())
        assert got == Malformed("a string key may not contain '|'"), kind
    assert dec.decode(b'{"sku": "a", "ts": 1, "kind": "v"}') is None
