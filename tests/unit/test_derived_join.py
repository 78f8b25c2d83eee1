"""Derived features inside the join engine: which views are read, statuses and event
timestamps, request data checks, derived features of derived features, output shapes."""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from featurestore import metrics
from featurestore.definitions.parser import parse_definitions
from featurestore.definitions.snapshot import new_snapshot
from featurestore.derived import compiler, request
from featurestore.errors import DeadlineExceeded, InvalidArgument, NotFound
from featurestore.join import JoinEngine, JoinRequest, Limits
from featurestore.model import Definitions, DType, Status
from featurestore.plan import ServingState
from featurestore.rows import view_schema
from featurestore.sources.base import SourceState, ViewQuery, ViewRead
from featurestore.sources.memory import MemorySource

NOW_US = int(time.time() * 1e6)
HOUR_US = 3600 * 10**6

DOC: dict[str, Any] = {
    "project": "p",
    "entities": [{"name": "user_id", "dtype": "int64"}],
    "feature_views": [
        {
            "name": "fresh",
            "entities": ["user_id"],
            "ttl": "1h",
            "features": [{"name": "a", "dtype": "float64"}, {"name": "unused", "dtype": "float64"}],
        },
        {"name": "other", "entities": ["user_id"], "features": [{"name": "b", "dtype": "float64"}]},
        {"name": "text", "entities": ["user_id"], "features": [{"name": "country", "dtype": "string"}]},
        {
            "name": "down",
            "entities": ["user_id"],
            "online_store": "broken",
            "features": [{"name": "c", "dtype": "float64"}],
        },
    ],
    "derived_views": [
        {
            "name": "d",
            "inputs": ["fresh:a", "other:b", "down:c", "text:country"],
            "request_schema": [
                {"name": "price", "dtype": "float64"},
                {"name": "qty", "dtype": "int64"},
                {"name": "promo", "dtype": "bool"},
                {"name": "market", "dtype": "string"},
            ],
            "features": [
                {"name": "only_a", "dtype": "float64", "expression": "a * 2"},
                {"name": "a_and_b", "dtype": "float64", "expression": "coalesce(a, 0) + coalesce(b, 0)"},
                {"name": "with_down", "dtype": "float64", "expression": "a + c"},
                {"name": "request_only", "dtype": "float64", "expression": "price * qty"},
                {"name": "is_promo", "dtype": "bool", "expression": "promo and price > 10"},
                {"name": "units", "dtype": "int64", "expression": "qty * 2.7"},
                {"name": "home", "dtype": "float64", "expression": "where(country == market, 1, 0)"},
                {"name": "from_own", "dtype": "float64", "expression": "only_a + 1"},
            ],
        },
        {
            "name": "d2",
            "inputs": {"x": "d:from_own", "p": "d:request_only"},
            "features": [
                {"name": "chained", "dtype": "float64", "expression": "x * 10"},
                {"name": "by_request", "dtype": "float64", "expression": "p + 1"},
            ],
        },
    ],
    "feature_services": [{"name": "svc", "features": ["other:b", "d2:chained", "d:only_a"]}],
}


class RecordingMemory(MemorySource):
    def __init__(self) -> None:
        super().__init__("default")
        self.read_views: list[list[str]] = []

    async def read(self, queries: Sequence[ViewQuery]) -> list[ViewRead | BaseException]:
        self.read_views.append(sorted(q.view.name for q in queries))
        return await super().read(queries)


class BrokenSource(MemorySource):
    async def read(self, queries: Sequence[ViewQuery]) -> list[ViewRead | BaseException]:
        raise ConnectionError("store is down")

    def state(self) -> SourceState:
        return SourceState.DOWN


@pytest.fixture(scope="module")
def defs() -> Definitions:
    return parse_definitions(DOC, source="j.yaml")


@pytest.fixture(scope="module")
def kernels(defs: Definitions, tmp_path_factory: pytest.TempPathFactory) -> dict[str, compiler.Kernel]:
    return asyncio.run(compiler.kernels_for(defs, tmp_path_factory.mktemp("kernels")))


async def write(mem: MemorySource, defs: Definitions, view: str, rows: dict[str, list[Any]]) -> None:
    schema = view_schema(defs.views[view])
    await mem.write(
        defs.views[view], pa.table({f.name: pa.array(rows[f.name], f.type) for f in schema}, schema=schema), 0
    )


@pytest.fixture
async def setup(defs: Definitions, kernels: dict[str, compiler.Kernel]) -> tuple[JoinEngine, RecordingMemory]:
    mem = RecordingMemory()
    broken = BrokenSource("broken")
    await mem.prepare([v for v in defs.views.values() if v.online_store == "default"])
    await broken.prepare([defs.views["down"]])
    # user 1: everything fresh; 2: fresh is stale (outside 1h); 3: only in `other`
    await write(mem, defs, "fresh", {"user_id": [1, 2], "a": [1.5, 2.0], "unused": [0.0, 0.0],
                                     "event_timestamp": [NOW_US - 10, NOW_US - 2 * HOUR_US]})  # fmt: skip
    await write(mem, defs, "other", {"user_id": [1, 2, 3], "b": [10.0, None, 30.0],
                                     "event_timestamp": [NOW_US - 20, NOW_US - 5, NOW_US - 30]})  # fmt: skip
    await write(
        mem, defs, "text", {"user_id": [1, 2], "country": ["DE", None], "event_timestamp": [NOW_US] * 2}
    )
    state = ServingState(new_snapshot(defs, 1), kernels=kernels)
    return JoinEngine({"default": mem, "broken": broken}, state, Limits(max_rows=100)), mem


def columns(result: Any) -> dict[str, Any]:
    return {c.name: c for c in result.columns}


def deadline() -> float:
    return time.monotonic() + 5


async def test_a_join_reads_only_the_stored_views_its_derived_features_need(setup: Any) -> None:
    engine, mem = setup
    stored, derived = metrics.feature_values("fresh", "PRESENT"), metrics.feature_values("d", "PRESENT")
    before = (stored.n, derived.n)
    result = await engine.join(JoinRequest({"user_id": [1]}, ("d:only_a",)), deadline())
    assert mem.read_views == [["fresh"]]
    assert [c.name for c in result.columns] == ["user_id", "only_a"]  # inputs read, not returned
    assert columns(result)["only_a"].values == [3.0]
    # values served, not values read: the stored view counts one per row, the statuses the
    # derived features inherit (FeatureStoreViewExpired watches it), not its three columns
    assert (stored.n - before[0], derived.n - before[1]) == (1, 1)


async def test_derived_features_of_derived_features_across_views(setup: Any) -> None:
    engine, mem = setup
    result = await engine.join(JoinRequest({"user_id": [1, 3]}, ("d2:chained",)), deadline())
    assert mem.read_views == [["fresh"]]
    c = columns(result)["chained"]
    assert c.values == [40.0, None]  # (1.5 * 2 + 1) * 10; user 3 has no `fresh` row
    assert c.outcome.statuses == [Status.PRESENT, Status.NOT_FOUND]


async def test_the_most_severe_input_status_wins_and_the_value_is_null(setup: Any) -> None:
    engine, _ = setup
    result = await engine.join(
        JoinRequest({"user_id": [1, 2, 3, 4]}, ("d:a_and_b", "d:with_down")), deadline()
    )
    both = columns(result)["a_and_b"]
    # 2: fresh is OUTSIDE_MAX_AGE (its b is a PRESENT null); 3: fresh NOT_FOUND; 4: neither found
    assert both.outcome.statuses == [
        Status.PRESENT,
        Status.OUTSIDE_MAX_AGE,
        Status.NOT_FOUND,
        Status.NOT_FOUND,
    ]
    assert both.values == [11.5, None, None, None], "coalesce handles null values, never missing rows"
    down = columns(result)["with_down"]
    assert set(down.outcome.statuses) == {Status.UNAVAILABLE}
    assert down.values == [None] * 4
    assert result.partial


async def test_a_join_of_one_row_serves_what_the_same_row_of_a_batch_serves(
    setup: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One entity row takes the kernels' one-row entry (Kernel.row), more rows their
    matrix loop (Kernel.into): values of the same types, statuses and timestamps alike,
    through chained views, outcomes combined across views and int64 / bool features."""
    engine, _ = setup
    calls: list[str] = []

    def spied(entry: str, fn: Any) -> Any:
        def call(*args: Any) -> Any:
            calls.append(entry)
            return fn(*args)

        return call

    kernels = {
        name: replace(k, row=spied("row", k.row), into=spied("into", k.into))
        for name, k in engine.state.kernels.items()
    }
    monkeypatch.setattr(engine, "state", ServingState(engine.state.snapshot, kernels=kernels))
    features = ("d:a_and_b", "d:with_down", "d:only_a", "d2:chained", "d:is_promo", "d:units")
    users, prices, qty = [1, 2, 3, 4], [12.5, None, 3.0, 20.0], [4, 3, 2, 1]
    promo = [True, True, False, None]
    batch_req = JoinRequest(
        {"user_id": users}, features, request_data={"price": prices, "qty": qty, "promo": promo}
    )
    batch = columns(await engine.join(batch_req, deadline()))
    assert calls == ["into", "into"]  # d, then d2 reading it
    for i, user in enumerate(users):
        calls.clear()
        data: dict[str, list[Any]] = {"price": [prices[i]], "qty": [qty[i]], "promo": [promo[i]]}
        one = columns(
            await engine.join(JoinRequest({"user_id": [user]}, features, request_data=data), deadline())
        )
        assert calls == ["row", "row"], user
        for name in ("a_and_b", "with_down", "only_a", "chained", "is_promo", "units"):
            got, want = one[name].values[0], batch[name].values[i]
            assert (type(got), got) == (type(want), want), (name, user)
            assert one[name].outcome.statuses == [batch[name].outcome.statuses[i]], (name, user)
            assert one[name].outcome.event_ts_us == [batch[name].outcome.event_ts_us[i]], (name, user)
    assert batch["units"].values == [10, 8, 5, 2] and batch["is_promo"].values == [True, None, False, None]


async def test_the_event_timestamp_is_the_oldest_input_timestamp(setup: Any) -> None:
    engine, _ = setup
    result = await engine.join(JoinRequest({"user_id": [1, 2, 3, 4]}, ("d:a_and_b", "d:only_a")), deadline())
    # the oldest of the rows read: 2's stale `fresh` row; 3 has no `fresh` row, only `other`'s
    assert columns(result)["a_and_b"].outcome.event_ts_us == [
        NOW_US - 20,
        NOW_US - 2 * HOUR_US,
        NOW_US - 30,
        None,
    ]
    assert columns(result)["only_a"].outcome.event_ts_us == [NOW_US - 10, NOW_US - 2 * HOUR_US, None, None]
    # docs/api.md: a derived value that is not PRESENT keeps the timestamp of the rows found
    assert columns(result)["a_and_b"].outcome.statuses[2:] == [Status.NOT_FOUND, Status.NOT_FOUND]


async def test_request_fields_count_as_present_and_have_no_event_timestamp(setup: Any) -> None:
    engine, mem = setup
    req = JoinRequest(
        {"user_id": [1, 2]},
        ("d:request_only", "d:is_promo", "d:units"),
        request_data={"price": [2.5, None], "qty": [4, 3], "promo": [True, True]},
    )
    result = await engine.join(req, deadline())
    assert mem.read_views == []  # nothing stored to read
    c = columns(result)
    assert c["request_only"].values == [10.0, None]
    assert c["request_only"].outcome.statuses == [Status.PRESENT, Status.PRESENT]
    assert c["request_only"].outcome.event_ts_us == [None, None]
    assert c["is_promo"].values == [False, None]
    assert c["units"].values == [10, 8]  # int64: toward zero
    assert c["units"].dtype is DType.INT64


async def test_a_join_of_request_fields_only_is_deadline_exceeded_once_its_deadline_passed(
    setup: Any,
) -> None:
    """docs/api.md: a join whose deadline has passed is a 504 before any store is read;
    one that reads no store at all too, not a 200 computed after its deadline."""
    engine, mem = setup
    req = JoinRequest({"user_id": [1]}, ("d:is_promo",), request_data={"price": [20.0], "promo": [True]})
    with pytest.raises(DeadlineExceeded, match="deadline passed"):
        await engine.join(req, time.monotonic() - 1)
    assert mem.read_views == []
    result = await engine.join(req, deadline())
    assert columns(result)["is_promo"].values == [True]


async def test_string_inputs_compare_with_request_strings(setup: Any) -> None:
    engine, _ = setup
    req = JoinRequest({"user_id": [1, 2]}, ("d:home",), request_data={"market": ["DE", "DE"]})
    assert columns(await engine.join(req, deadline()))["home"].values == [1.0, None]


async def test_a_service_with_derived_features_returns_them_in_its_order(setup: Any) -> None:
    engine, _ = setup
    result = await engine.join(JoinRequest({"user_id": [1]}, feature_service="svc"), deadline())
    assert [(c.name, c.values) for c in result.columns] == [
        ("user_id", [1]),
        ("b", [10.0]),
        ("chained", [40.0]),
        ("only_a", [3.0]),
    ]


async def test_full_feature_names_apply_to_derived_features(setup: Any) -> None:
    engine, _ = setup
    result = await engine.join(
        JoinRequest({"user_id": [1]}, ("d:only_a",), full_feature_names=True), deadline()
    )
    assert [c.name for c in result.columns] == ["user_id", "d__only_a"]


@pytest.mark.parametrize(
    ("request_data", "message"),
    [
        (None, "request_data.price is missing: d:request_only needs it (one float64 per entity row)"),
        ({"qty": [1, 2]}, "request_data.price is missing"),
        ({"price": [1.0], "qty": [1, 2]}, "request_data.price has 1 values for 2 entity rows"),
        ({"price": [1.0, "2"], "qty": [1, 2]}, "request_data.price[1]: expected float64, got str '2'"),
        ({"price": [1.0, True], "qty": [1, 2]}, "request_data.price[1]: expected float64, got bool True"),
        ({"price": [1.0, 2.0], "qty": [1, 2.5]}, "request_data.qty[1]: expected int64, got float 2.5"),
        (
            {"price": [1.0, 2.0], "qty": [1, 2**63]},
            "request_data.qty[1]: 9223372036854775808 is outside the int64 range",
        ),
        (
            {"price": [1.0, 2.0], "qty": [None, -(2**63) - 1]},
            "request_data.qty[1]: -9223372036854775809 is outside the int64 range",
        ),
        (
            {"price": [None, 10**400], "qty": [1, 2]},
            "request_data.price[1]: 1000000000000000000000... (401 digits) is outside the float64 range",
        ),
    ],
)
async def test_missing_or_mistyped_request_fields_are_refused_naming_the_field(
    setup: Any, request_data: Any, message: str
) -> None:
    engine, mem = setup
    req = JoinRequest({"user_id": [1, 2]}, ("d:request_only",), request_data=request_data)
    with pytest.raises(InvalidArgument) as e:
        await engine.join(req, deadline())
    assert message in e.value.message
    assert e.value.details[0]["request_data"] in ("price", "qty")
    assert mem.read_views == [], "refused before any store is read"


async def test_request_values_at_the_ends_of_their_range_are_accepted(setup: Any) -> None:
    engine, _ = setup
    qty = [-(2**63), 2**63 - 1, None]
    req = JoinRequest(
        {"user_id": [1, 1, 1]}, ("d:request_only",), request_data={"price": [1, 2.0, 3], "qty": qty}
    )
    assert columns(await engine.join(req, deadline()))["request_only"].values == [-(2.0**63), 2.0**64, None]


async def test_fields_a_request_does_not_need_are_not_checked(setup: Any) -> None:
    engine, _ = setup
    req = JoinRequest({"user_id": [1]}, ("d:only_a",), request_data={"price": ["not a number"], "extra": [1]})
    assert columns(await engine.join(req, deadline()))["only_a"].values == [3.0]


async def test_a_field_no_view_declares_is_ignored_and_logged_once_at_debug(
    setup: Any, caplog: pytest.LogCaptureFixture
) -> None:
    engine, _ = setup
    caplog.set_level(logging.DEBUG, logger="featurestore.derived.request")
    data: dict[str, list[Any]] = {"price": [1.0], "qty": [2], "undeclared_item_prize": [3.0]}
    for features in [("d:request_only",), ("d:request_only",), ("other:b",)]:
        await engine.join(JoinRequest({"user_id": [1]}, features, request_data=data), deadline())
    logged = [r.getMessage() for r in caplog.records if "request_data" in r.getMessage()]
    assert len(logged) == 1 and "undeclared_item_prize" in logged[0] and "price'" not in logged[0]


async def test_huge_undeclared_field_names_are_held_clipped_and_logged_clipped_once(
    setup: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A name may be as long as the body (4 MiB by default): what is kept to log each name
    once is bounded in bytes, not only in count."""
    engine, _ = setup
    caplog.set_level(logging.DEBUG, logger="featurestore.derived.request")
    huge = [f"huge{i:02d}-" + "\u00e9" * 1_000_000 for i in range(40)]  # 40 names of 1M chars
    for name in huge + huge[:5]:
        await engine.join(JoinRequest({"user_id": [1]}, ("other:b",), request_data={name: [1]}), deadline())
    held = [e for e in request._seen_fields if (e if isinstance(e, str) else e[0]).startswith("huge")]
    held_bytes = sum(
        sys.getsizeof(e) + sum(map(sys.getsizeof, e if isinstance(e, tuple) else ())) for e in held
    )
    assert len(held) == 40 and held_bytes < 40 * 1_000
    logged = [r.getMessage() for r in caplog.records if "'huge" in r.getMessage()]
    assert len(logged) == 40 and all(len(m) < 300 and "(1000007 characters)" in m for m in logged)


async def test_unknown_derived_features_are_not_found(setup: Any) -> None:
    engine, _ = setup
    with pytest.raises(NotFound, match="feature view 'd' has no feature 'nope'"):
        await engine.join(JoinRequest({"user_id": [1]}, ("d:nope",)), deadline())


async def test_a_state_without_compiled_kernels_refuses_instead_of_compiling(
    defs: Definitions, tmp_path: Path
) -> None:
    """Kernels come with the serving state (built before the swap), never from a request."""
    engine = JoinEngine({"default": MemorySource("default")}, ServingState(new_snapshot(defs, 1)), Limits())
    with pytest.raises(Exception, match="not compiled on this server"):
        await engine.join(JoinRequest({"user_id": [1]}, ("d:only_a",)), deadline())


async def test_a_sampled_request_records_the_derived_step_as_a_child_span(
    setup: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.sdk.trace.sampling import ALWAYS_ON

    from featurestore import tracing

    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=ALWAYS_ON)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(tracing, "tracer", provider.get_tracer("test"))
    engine, _ = setup
    span = tracing.tracer.start_span("join")
    await engine.join(JoinRequest({"user_id": [1]}, ("d2:chained",)), deadline(), span)
    span.end()
    derived = [s for s in exporter.get_finished_spans() if s.name == "derived"]
    assert len(derived) == 1 and derived[0].parent is not None
    assert derived[0].parent.span_id == span.get_span_context().span_id
    assert list(derived[0].attributes["featurestore.derived_views"]) == ["d", "d2"]  # type: ignore[index, arg-type]
    provider.shutdown()
