"""Reads the cache is unlikely to answer in full go past it (featurestore/bypass.py)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import pyarrow as pa
import pytest
from prometheus_client import REGISTRY

from featurestore import metrics
from featurestore.bypass import CONSULT, DECISIONS, SKIP, TRIAL, CacheBypass
from featurestore.cache import CachedSource, LRUCache, uncached
from featurestore.config import load_config
from featurestore.errors import InvalidArgument
from featurestore.factories import with_cache
from featurestore.model import DType, Entity, Feature, FeatureView
from featurestore.rows import view_schema
from featurestore.runtime import Runtime
from featurestore.sources.base import ViewQuery, ViewRead
from featurestore.sources.memory import MemorySource
from featurestore.store_config import StoreConfig

U = Entity("user_id", DType.INT64)
V = FeatureView("bypass_v", (U,), (Feature("a", DType.INT64),))
W = FeatureView("bypass_w", (U,), (Feature("a", DType.INT64),))


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


class Counting(MemorySource):
    def __init__(self) -> None:
        super().__init__("remote")
        self.keys_read: list[list[object]] = []
        self.fail: Exception | None = None
        self.fail_views: set[str] = set()  # views whose read fails alone (the others answered)
        self.short = False  # answers one view fewer than asked (a store breaking the contract)

    async def read(self, queries: Sequence[ViewQuery]) -> list[ViewRead | BaseException]:
        if self.fail is not None:
            raise self.fail
        self.keys_read += [list(q.keys) for q in queries]
        got = await super().read(queries)
        got = [
            ConnectionError("down") if q.view.name in self.fail_views else r
            for q, r in zip(queries, got, strict=True)
        ]
        return got[:-1] if self.short else got


async def source(bypass: CacheBypass, clock: Clock | None = None) -> tuple[CachedSource, Counting]:
    """Both views hold users 0-299 (a = 10 x user) behind a 10,000-row cache, TTL 30 s."""
    rows, inner = 300, Counting()
    src = CachedSource(inner, LRUCache(10_000, 30, clock=clock or Clock()), bypass)
    await src.prepare([V, W])
    schema = view_schema(V)
    for view in (V, W):
        table = {
            "user_id": list(range(rows)),
            "a": [k * 10 for k in range(rows)],
            "event_timestamp": [1] * rows,
        }
        await src.write(view, pa.table(table, schema=schema), 1)
    inner.keys_read.clear()
    return src, inner


def q(keys: Sequence[int], view: FeatureView = V) -> ViewQuery:
    return ViewQuery(view, list(keys), [0], 1)


def values(read: ViewRead | BaseException) -> list[object]:
    assert isinstance(read, ViewRead)
    return read.columns[0]


def bypassed(view: str) -> float:
    metrics.flush()
    return REGISTRY.get_sample_value("featurestore_cache_bypassed_total", {"view": view}) or 0.0


def hits_and_misses(view: str) -> tuple[float, float]:
    metrics.flush()
    hits = REGISTRY.get_sample_value("featurestore_cache_hits_total", {"view": view})
    misses = REGISTRY.get_sample_value("featurestore_cache_misses_total", {"view": view})
    return hits or 0.0, misses or 0.0


def failures(view: str) -> float:
    metrics.flush()
    labels = {"view": view, "store": "remote", "reason": "error"}
    return REGISTRY.get_sample_value("featurestore_view_read_failures_total", labels) or 0.0


def test_a_read_consults_while_its_chance_of_a_full_hit_pays_for_its_expected_fills() -> None:
    b = CacheBypass(30, unmeasured=0.99)  # (its prior weighs 64 keys at 0.99: the rate stays 0.99)
    b.observe("bypass_v", 99, 100, True)
    b.observe("bypass_w", 99, 100)
    assert b.hit_rate("bypass_v") == pytest.approx(0.99)
    assert b.consults([q(range(100)), q(range(100), W)])  # 0.99 ** 200 x 30 = 4.0 >= 2.0 misses
    assert not b.consults([q(range(150)), q(range(150), W)])  # 0.99 ** 300 x 30 = 1.5 < 3.0


def test_a_large_read_of_views_whose_every_key_hits_consults_the_cache() -> None:
    b = CacheBypass(30)
    b.observe("bypass_v", 100, 100, True)
    assert b.consults([q(range(10_000))])


def test_a_batch_1_read_follows_the_rule_like_any_other() -> None:
    b = CacheBypass(0.5, unmeasured=0.8)
    b.observe("bypass_v", 80, 100, True)
    b.observe("bypass_w", 80, 100)
    assert not b.consults([q([1]), q([1], W)])  # 0.8 ** 2 x 0.5 = 0.32 < 0.4 expected misses
    b.observe("bypass_v", 2_000, 2_000, True)
    b.observe("bypass_w", 2_000, 2_000)
    assert b.consults([q([1]), q([1], W)]) == CONSULT  # ~0.97: 0.47 >= 0.06


@pytest.mark.parametrize(("kind", "figure"), [("redis", 0.5), ("clickhouse", 50.0)])
def test_a_served_stores_figure_is_its_kinds_unless_the_config_names_one(kind: str, figure: float) -> None:
    class Store(Counting):
        pass

    Store.kind = kind
    store = with_cache(Store(), StoreConfig(kind="redis"), load_config())
    assert isinstance(store, CachedSource) and store.bypass.fills_per_round_trip == figure
    named = load_config(overrides={("cache", "fills_per_round_trip"): 2.5})
    store = with_cache(Store(), StoreConfig(kind="redis"), named)
    assert isinstance(store, CachedSource) and store.bypass.fills_per_round_trip == 2.5


def test_a_view_never_read_through_the_cache_is_consulted_until_measured() -> None:
    b = CacheBypass(30)
    assert b.hit_rate("new") == 1.0 and b.consults([q(range(1_000))])


def test_a_views_hit_rate_weighs_its_last_two_thousand_keys() -> None:
    b = CacheBypass(30)
    for _ in range(100):
        b.observe("v", 100, 100)
    for _ in range(10):  # 1,000 keys missed: the 10,000 hits before weigh e^-0.5
        b.observe("v", 0, 100)
    assert b.hit_rate("v") == pytest.approx(math.exp(-0.5), abs=0.01)


def test_zero_fills_per_round_trip_consults_the_cache_for_every_read() -> None:
    b = CacheBypass(0)
    b.observe("bypass_v", 0, 100, True)
    assert all(b.consults([q(range(1_000))]) for _ in range(10))


def measured_cold() -> tuple[Clock, CacheBypass]:
    """A bypass on a fake clock at t=0 (trials every 30 s) whose view v hit none of 100 keys."""
    clock = Clock()
    b = CacheBypass(30, trial_every=30, clock=clock)
    b.observe("bypass_v", 0, 100, True)
    return clock, b


def on_trial() -> tuple[Clock, CacheBypass]:
    """``measured_cold``'s bypass at t=30, its view's trial just begun."""
    clock, b = measured_cold()
    b.consults([q(range(100))])
    clock.t = 30.0
    b.consults([q(range(100))])
    return clock, b


def loaded_trial() -> tuple[Clock, CacheBypass]:
    """``measured_cold``'s bypass at t=30, its view on a trial whose first window loaded."""
    clock, b = measured_cold()
    b.consults([q(range(100))])
    clock.t = 30.0
    assert b.consults([q(range(100))])
    b.observe("bypass_v", 0, 2_000, True)  # loaded
    return clock, b


def test_a_view_skipped_for_a_trial_period_is_consulted_until_a_trial_loads_and_measures_it() -> None:
    clock, b = measured_cold()
    assert not b.consults([q(range(100))]) and b.skipped == 1  # skipping since t=0
    clock.t = 29.9
    assert not b.consults([q(range(100))])
    clock.t = 30.0  # skipped for a period: a trial starts
    assert b.consults([q(range(100))])
    b.observe("bypass_v", 0, 2_000, True)  # the loading window: its misses are not measured
    assert b.consults([q(range(100))])
    b.observe("bypass_v", 1_999, 2_000, True)  # a window before its rows can expire: not yet
    assert "bypass_v" in b._trials
    clock.t = 60.0  # a TTL after it began
    b.observe("bypass_v", 1_999, 2_000, True)  # no longer rising: the trial is over
    assert "bypass_v" not in b._trials
    assert b.hit_rate("bypass_v") == pytest.approx(0.9995)
    assert b.consults([q(range(100))]) == CONSULT  # and its rate says consulting pays
    assert (b.skipped, b.tried) == (2, 2)  # the reads past the cache: skipped, then on trial


def test_a_trial_decides_by_a_window_measured_after_its_first_rows_could_expire() -> None:
    clock, b = loaded_trial()
    for hits in (1_700, 1_720, 1_700):  # 85-86%: a warm-up curve, before any loaded row expired
        b.observe("bypass_v", hits, 2_000, True)
        assert "bypass_v" in b._trials
    clock.t = 60.0  # rows loaded at 30 expire from here: the rate settles lower
    b.observe("bypass_v", 1_340, 2_000, True)  # 67%, below the window before: decided
    assert "bypass_v" not in b._trials and b.hit_rate("bypass_v") == pytest.approx(0.67)


def test_a_trial_that_measures_a_low_hit_rate_is_followed_by_skipping_for_two_periods() -> None:
    clock, b = measured_cold()
    b.consults([q(range(100))])
    clock.t = 30.0
    assert b.consults([q(range(100))])  # trial
    b.observe("bypass_v", 0, 2_000, True)
    b.observe("bypass_v", 1_000, 2_000, True)
    clock.t = 60.0
    b.observe("bypass_v", 1_000, 2_000, True)  # measured: 50%, no longer rising
    clock.t = 61.0
    assert not b.consults([q(range(100))])
    clock.t = 119.9
    assert not b.consults([q(range(100))])
    clock.t = 120.0  # two periods after the trial ended: a trial that ends skipping doubles the wait
    assert b.consults([q(range(100))])


def test_a_consulting_stretch_is_not_followed_by_a_needless_trial() -> None:
    clock, b = measured_cold()
    assert not b.consults([q(range(100))])  # skipping since t=0
    clock.t = 20.0
    b.observe("bypass_v", 100_000, 100_000, True)  # (small reads kept measuring it) all hits
    assert b.consults([q(range(100))]) == CONSULT  # consulting by the rule: no longer skipping
    b.observe("bypass_v", 0, 4_000, True)  # then the rate falls
    clock.t = 31.0  # a period after the first skip, but skipping only since now
    assert not b.consults([q(range(100))])
    clock.t = 60.9
    assert not b.consults([q(range(100))]) and b.skipped == 3
    clock.t = 61.0
    assert b.consults([q(range(100))])


def trial_ending_skipping_from_here(clock: Clock, b: CacheBypass) -> None:
    """The trial of bypass_v under way ends measuring 0% hits, a TTL on."""
    b.observe("bypass_v", 0, 2_000, True)
    b.observe("bypass_v", 0, 2_000, True)
    clock.t += 30.0
    b.observe("bypass_v", 0, 2_000, True)
    assert "bypass_v" not in b._trials


def trial_ending_skipping(clock: Clock, b: CacheBypass) -> None:
    """Runs a trial of bypass_v from now that measures 0% hits; the clock ends a TTL later."""
    assert b.consults([q(range(100))]) and "bypass_v" in b._trials
    b.observe("bypass_v", 0, 2_000, True)
    b.observe("bypass_v", 0, 2_000, True)
    clock.t += 30.0
    b.observe("bypass_v", 0, 2_000, True)
    assert "bypass_v" not in b._trials


def test_a_trial_that_ends_without_a_whole_window_lets_the_rule_consult_the_view_for_a_period() -> None:
    clock, b = measured_cold()
    b.consults([q(range(100))])
    clock.t = 30.0
    trial_ending_skipping(clock, b)  # ends at 60: the next trial waits two periods, from 60
    clock.t = 180.0
    assert b.consults([q(range(100))]) == TRIAL
    b.observe("bypass_v", 0, 100, True)  # far from a window: too few of its keys come
    clock.t = 239.0
    assert b.consults([q(range(100))]) == TRIAL  # still on trial (two TTLs at most)
    clock.t = 240.0  # it gave up: the rule consults the view for a period, as at rate 1
    assert b.consults([q(range(1))]) == SKIP  # (the read that ends it goes past the cache)
    assert "bypass_v" not in b._trials and b.hit_rate("bypass_v") == 1.0
    assert b._backoff == {"bypass_v": 2}  # kept: only the rule consulting for a period ends it
    assert b.consults([q(range(100))]) == CONSULT
    for _ in range(20):  # consulting fills its keys: they hit from their second read
        b.observe("bypass_v", 100, 100)
    clock.t = 270.0  # a period on: its own rate decides, and it still consults
    assert b.consults([q(range(100))]) == CONSULT and b.hit_rate("bypass_v") > 0.9
    b.observe("bypass_v", 0, 4_000)  # its keys stop hitting: past the cache again
    assert b.consults([q(range(100))]) == SKIP  # skipping from 270
    clock.t = 389.9  # the next trial waits four periods (its backoff), not one
    assert b.consults([q(range(100))]) == SKIP
    clock.t = 390.0
    assert b.consults([q(range(100))]) == TRIAL


def test_a_view_whose_trials_give_up_and_whose_keys_miss_waits_longer_each_round() -> None:
    clock, b = measured_cold()
    waits = []
    last = 0.0
    for _ in range(5):  # trial (no whole window) -> a period consulting, every key missing -> skipping
        while b.consults([q(range(100))]) != TRIAL and clock.t < 10_000:
            clock.t += 1.0
        waits.append(clock.t - last)
        clock.t += 60.0  # it ends without a window
        assert b.consults([q(range(100))]) == SKIP and b.hit_rate("bypass_v") == 1.0
        assert b.consults([q(range(100))]) == CONSULT
        b.observe("bypass_v", 0, 100)
        clock.t += 30.0  # the period over: its own rate sends it past the cache
        assert b.consults([q(range(100))]) == SKIP
        last = clock.t
    assert waits[1:] == [60.0, 120.0, 240.0, 480.0]  # two periods, doubling, up to 16


def test_a_view_on_a_trial_past_its_end_that_the_rule_consults_is_measured_by_those_reads() -> None:
    # A trial ends on a read the rule would skip; were only reads it consults to follow,
    # the view stayed on trial for ever, its rate frozen, consulting while every key missed
    clock = Clock()
    b = CacheBypass(2, trial_every=30, clock=clock)
    b.observe("bypass_v", 1_200, 2_000)  # ~0.6: a batch-1 read consults, a batch-10 one skips
    assert b.consults([q(range(10))]) == SKIP
    clock.t = 30.0
    assert b.consults([q(range(10))]) == TRIAL
    clock.t = 91.0  # past its end, and from now only batch-1 reads, every key missing
    for _ in range(2_000):
        assert b.consults([q([1])]) in (CONSULT, SKIP)
        b.observe("bypass_v", 0, 1)
    assert "bypass_v" not in b._trials and b.consults([q([1])]) != CONSULT


def test_a_trial_keeps_measuring_while_the_hit_rate_rises_and_decides_at_its_plateau() -> None:
    clock, b = loaded_trial()
    clock.t = 60.0  # (settled)
    for hits in (600, 1_200, 1_500, 1_700):  # a warming cache: 30%, 60%, 75%, 85%
        b.observe("bypass_v", hits, 2_000, True)
        assert "bypass_v" in b._trials and b.consults([q(range(100))])
    b.observe("bypass_v", 1_690, 2_000, True)  # 84.5%: the plateau
    assert "bypass_v" not in b._trials and b.hit_rate("bypass_v") == pytest.approx(0.845)


def test_a_trial_still_rising_when_its_time_is_up_decides_by_its_last_whole_window() -> None:
    clock, b = measured_cold()
    b.consults([q(range(100))])
    clock.t = 30.0
    assert b.consults([q(range(100))])
    b.observe("bypass_v", 0, 2_000, True)
    b.observe("bypass_v", 400, 2_000, True)
    b.observe("bypass_v", 800, 2_000, True)  # 40% and rising
    b.observe("bypass_v", 100, 200, True)  # part of a window
    clock.t = 90.0  # two TTLs after it began
    assert not b.consults([q(range(100))])  # decided by the 40% window: skip
    assert b.hit_rate("bypass_v") == pytest.approx(0.4)


def test_trials_that_end_skipping_wait_twice_as_long_each_time_up_to_sixteen_periods() -> None:
    clock, b = measured_cold()
    b.consults([q(range(100))])
    starts = []
    while clock.t < 2_000:
        clock.t += 1.0
        trial = b._trials.get("bypass_v")
        if b.consults([q(range(100))]):
            if trial is None:
                starts.append(clock.t)
            b.observe("bypass_v", 0, 2_000, True)  # loading, then windows of no hits
    assert starts[:6] == [30.0, 120.0, 270.0, 540.0, 1_050.0, 1_560.0]


def test_a_backoff_ends_only_once_the_rule_has_kept_consulting_for_a_period() -> None:
    clock, b = measured_cold()
    b.consults([q(range(100))])
    clock.t = 30.0
    trial_ending_skipping(clock, b)  # backoff: the next trial two periods after 60
    clock.t = 90.0  # the trial's rate held for a period
    b.observe("bypass_v", 2_000, 2_000, True)  # a burst of hits: the rule consults for a moment
    assert b.consults([q([1])])
    b.observe("bypass_v", 0, 20_000, True)  # and skips again
    clock.t = 91.0
    assert not b.consults([q([1])])
    clock.t = 150.9
    assert not b.consults([q([1])])  # still the doubled wait, from 91
    clock.t = 151.0
    assert b.consults([q([1])])


def test_a_backoff_ends_once_the_rule_has_consulted_for_a_period() -> None:
    clock, b = measured_cold()
    b.consults([q(range(100))])
    clock.t = 30.0
    trial_ending_skipping(clock, b)
    clock.t = 90.0
    b.observe("bypass_v", 20_000, 20_000, True)
    for t in (91.0, 110.0, 121.0):
        clock.t = t
        assert b.consults([q([1])])
    assert "bypass_v" not in b._backoff  # consulted from 91 to 121


def test_a_trials_verdict_holds_for_a_period_while_the_views_own_rate_measures_the_cache_filling() -> None:
    clock, b = measured_cold()
    b.consults([q(range(100))])
    clock.t = 30.0
    assert b.consults([q(range(100))]) == TRIAL
    b.observe("bypass_v", 500, 500, True)  # loaded
    clock.t = 60.0
    b.observe("bypass_v", 500, 500, True)
    b.observe("bypass_v", 500, 500, True)  # settled at 100%
    assert "bypass_v" not in b._trials and b.consults([q(range(100))]) == CONSULT
    b.observe("bypass_v", 7, 100)  # consulting every key: the unsampled ones miss at first
    assert b.hit_rate("bypass_v") < 1.0 and b.consults([q(range(100))]) == CONSULT  # the verdict holds
    for _ in range(40):
        b.observe("bypass_v", 6, 100)  # the cache holds what a trial sampled (a thirty-second) only
    clock.t = 90.0  # a period on: the view's own rate decides, and the backoff was kept
    assert b.consults([q(range(100))]) == SKIP and b._backoff["bypass_v"] == 1


def test_reads_the_rule_lets_consult_every_key_do_not_count_in_a_trials_windows() -> None:
    clock, b = measured_cold()
    b.consults([q(range(100))])
    clock.t = 30.0
    assert b.consults([q(range(100))]) == TRIAL
    b.observe("bypass_v", 0, 500, True)  # loaded
    b.observe("bypass_v", 500, 500)  # a full consult: not the trial's
    assert b._trials["bypass_v"].left == 500


def test_views_no_longer_served_lose_their_trials_and_skipping_time() -> None:
    clock = Clock()
    b = CacheBypass(30, trial_every=30, clock=clock, unmeasured=0.0)
    assert not b.consults([q(range(100))])  # skipping since t=0
    clock.t = 30.0
    assert b.consults([q(range(100), W)]) == SKIP  # w: skipping since t=30
    b.keep_only({"bypass_w"})
    assert not b.consults([q(range(100))])  # v starts over: skipping since t=30, no trial
    clock.t = 60.0
    assert b.consults([q(range(100))]) and b.consults([q(range(100), W)])  # both trials now
    b.keep_only(set())
    assert not b._trials and not b._skipping_since and not b._backoff and not b._consulting_since


async def test_the_rates_of_views_a_store_no_longer_serves_are_forgotten() -> None:
    src, _ = await source(CacheBypass(30, unmeasured=0.5))
    src.bypass.observe("bypass_v", 20_000, 20_000)
    src.bypass.observe("bypass_w", 20_000, 20_000)
    src.serving({"bypass_w": 1})
    assert src.bypass.hit_rate("bypass_v") == 0.5
    assert src.bypass.hit_rate("bypass_w") == pytest.approx(1.0, abs=1e-3)


@pytest.mark.parametrize("args", [(-1,), (30, 0.0)])
def test_a_negative_figure_or_a_trial_of_no_time_is_refused(args: tuple[float, ...]) -> None:
    with pytest.raises(ValueError, match="must be"):
        CacheBypass(*args)  # type: ignore[arg-type]


def test_the_config_refuses_a_negative_fills_per_round_trip() -> None:
    with pytest.raises(InvalidArgument, match=r"cache\.fills_per_round_trip.*0 or a positive number"):
        load_config(overrides={("cache", "fills_per_round_trip"): -1})


class Remote(Counting):
    kind = "redis"  # what with_cache puts a cache in front of


def test_a_served_store_gets_the_configured_bypass_with_a_trial_every_ttl() -> None:
    config = load_config(overrides={("cache", "fills_per_round_trip"): 12, ("cache", "ttl_seconds"): 45})
    store = with_cache(Remote(), StoreConfig(kind="redis"), config)
    assert isinstance(store, CachedSource) and uncached(store) is store.inner
    assert store.bypass.fills_per_round_trip == 12 and store.bypass.trial_every == 45


async def test_a_read_unlikely_to_hit_in_full_reads_every_key_from_the_store_and_fills_nothing() -> None:
    src, inner = await source(CacheBypass(30))
    [first] = await src.read([q(range(40))])  # unmeasured: consults, misses all, fills
    assert values(first) == [k * 10 for k in range(40)] and inner.keys_read == [list(range(40))]
    # 40 misses against the prior's 64 keys at 1 (decayed by the 40): 62.7 / 102.7
    assert src.bypass.hit_rate("bypass_v") == pytest.approx(0.6106, abs=1e-4)
    before = bypassed("bypass_v")
    [second] = await src.read([q(range(20, 60))])  # 0.61 ** 40 x 30 < 40 x 0.39: past the cache
    assert values(second) == [k * 10 for k in range(20, 60)]
    assert inner.keys_read[-1] == list(range(20, 60))  # every key, the cached 20-39 too
    assert bypassed("bypass_v") - before == 40 and src.bypass.skipped == 1
    [third] = await src.read([q(range(40, 80))])
    assert inner.keys_read[-1] == list(range(40, 80))  # the second read filled nothing
    assert values(third) == [k * 10 for k in range(40, 80)]


def sample_of(src: CachedSource, view: str, keys: Sequence[int]) -> list[int]:
    sampled = src.bypass.sampler(view)
    assert sampled is not None
    return [k for k in keys if sampled(k)]


@pytest.mark.parametrize(
    ("figure", "views", "hot", "unmeasured"),
    [(50, 1, 10, 1.0), (50, 1, 10, 0.0), (0.5, 2, 30, 1.0), (0.5, 1, 200, 1.0)],
)
async def test_reads_of_a_hot_set_a_hundred_times_a_second_are_served_from_the_cache(
    figure: float, views: int, hot: int, unmeasured: float
) -> None:
    # 50: ClickHouse's figure, 0.5: Redis's. 0.0: a view taken as cold until measured,
    # which only a trial could measure: too few of its keys come to finish one (it gave
    # up, and the view stayed past the cache for ever). A hot set larger than the misses
    # a new view's prior allows (Redis: 14 a view at two views, 32 at one) fills while the
    # rule consults the view for a period after its trial gave up.
    clock = Clock()
    bypass = CacheBypass(figure, trial_every=30, clock=clock, unmeasured=unmeasured)
    src, inner = await source(bypass, clock)
    for i in range(30_000):  # five minutes
        clock.t = i / 100
        if i == 24_000:
            inner.keys_read.clear()
        key = i % hot
        got = await src.read([q([key]), q([key], W)][:views])
        assert [values(g) for g in got] == [[key * 10]] * views
    # the last minute: each hot key read from the store once a TTL or so, not 6,000 reads
    assert len(inner.keys_read) <= 4 * hot * views


async def test_a_trial_loads_a_hot_set_that_a_skipping_cache_had_let_expire() -> None:
    clock = Clock()
    src, inner = await source(CacheBypass(30, trial_every=20, clock=clock), clock)
    hot = list(range(100))
    await src.read([q(hot), q(hot, W)])  # cold: every key missed, the rate drops to 0
    clock.t = 1.0
    await src.read([q(hot), q(hot, W)])
    assert src.bypass.skipped == 1 and len(inner.keys_read) == 4  # past the cache
    clock.t = 31.0  # the first fills (TTL 30 s) expired; a trial starts and refills the hot set's sample
    for _ in range(300):  # a window to load, two measured before it settles
        await src.read([q(hot), q(hot, W)])
        assert inner.keys_read[-2:] == [hot, hot]  # a trial reads every key from the store
    clock.t = 52.0  # settled (a trial period after it began): the next whole window decides
    for _ in range(150):  # decided (all sampled keys hit): then every key consults, the rest filled
        await src.read([q(hot), q(hot, W)])
    assert not src.bypass._trials and src.bypass.skipped == 1
    reads = len(inner.keys_read)
    for _ in range(10):
        [a, b] = await src.read([q(hot), q(hot, W)])
        assert values(a) == values(b) == [k * 10 for k in hot]
    assert len(inner.keys_read) == reads


async def test_a_trial_reads_every_key_from_the_store_and_looks_up_and_fills_its_sample_only() -> None:
    clock = Clock()
    src, inner = await source(CacheBypass(30, trial_every=30, clock=clock, unmeasured=0.0), clock)
    before = bypassed("bypass_v"), hits_and_misses("bypass_v")
    keys = list(range(300))
    await src.read([q(keys)])  # skipping since 0
    clock.t = 30.0
    [got] = await src.read([q(keys)])  # a trial: its sampled keys looked up, missed, filled
    sample = sample_of(src, "bypass_v", keys)
    assert 2 <= len(sample) <= 25  # ~1 in 32
    assert values(got) == [k * 10 for k in keys] and inner.keys_read[-1] == keys
    space = ("bypass_v", V.layout, 1)
    assert [k for k in keys if src.cache.get(space, k) is not None] == sample
    [got] = await src.read([q(keys)])
    assert values(got) == [k * 10 for k in keys] and inner.keys_read[-1] == keys
    trial = src.bypass._trials["bypass_v"]
    assert trial.load == 500 - 2 * len(sample)  # measured: the second read's sample all hit
    assert hits_and_misses("bypass_v") == before[1]  # served from the store: bypassed, all of them
    assert bypassed("bypass_v") - before[0] == 3 * 300


def test_a_trials_sample_is_not_a_residue_of_the_keys_and_changes_from_trial_to_trial() -> None:
    clock, b = on_trial()
    first = b.sampler("bypass_v")
    assert first is not None
    ids = range(0, 160_000, 16)  # every id a multiple of 16: all of them, or none, by residue
    n = sum(map(first, ids))
    assert 250 < n < 380  # ~1 in 32 of 10,000
    trial_ending_skipping_from_here(clock, b)
    clock.t += 60.0
    b.consults([q(range(100))])
    second = b.sampler("bypass_v")
    assert second is not None and [k for k in ids if first(k)] != [k for k in ids if second(k)]


def test_views_keyed_alike_on_trial_hash_their_shared_keys_once_and_each_keeps_its_own_sample() -> None:
    clock = Clock()
    b = CacheBypass(30, trial_every=30, clock=clock, unmeasured=0.0)
    keys = list(range(0, 64_000, 16))  # (the vector test: from 32 keys)
    b.consults([q(keys), q(keys, W)])
    clock.t = 30.0
    assert b.consults([q(keys), q(keys, W)]) == TRIAL
    shared = [q(keys), q(keys, W)]
    shared[1] = ViewQuery(W, shared[0].keys, [0], 1)  # one key list, as the join passes it
    got = b.samples(shared)
    by_view = {v: b.sampler(v) for v in ("bypass_v", "bypass_w")}
    assert got is not None and all(by_view.values())
    for qi, view in enumerate(("bypass_v", "bypass_w")):
        sampled = by_view[view]
        assert sampled is not None
        assert got[qi] == [i for i, k in enumerate(keys) if sampled(k)]
    assert got[0] != got[1]  # a salt per trial: the views' samples differ
    want = {qi: [i for i in got[qi] if i < 20] for qi in (0, 1)}  # the scalar test (< 32 keys): the same
    assert b.samples([q(keys[:20]), q(keys[:20], W)]) == ({qi: at for qi, at in want.items() if at} or None)


class _CountedHash(int):
    """An id whose hashes are counted (``hashes``)."""

    hashes = 0

    def __hash__(self) -> int:
        _CountedHash.hashes += 1
        return int.__hash__(self)


def test_views_on_trial_over_different_key_lists_each_get_their_own_sample_and_a_shared_list_is_hashed_once() -> (
    None
):
    clock = Clock()
    b = CacheBypass(30, trial_every=30, clock=clock, unmeasured=0.0)
    keys = [_CountedHash(k) for k in range(0, 64_000, 16)]
    other = [*keys[1:], _CountedHash(10**6)]  # another list (views keyed differently): its own hashes
    b.consults([q(keys), q(keys, W)])
    clock.t = 30.0
    assert b.consults([q(keys), q(keys, W)]) == TRIAL
    samplers = [s for s in (b.sampler("bypass_v"), b.sampler("bypass_w")) if s is not None]
    assert len(samplers) == 2
    for lists in ((keys, other), (other, keys)):
        got = b.samples([ViewQuery(V, lists[0], [0], 1), ViewQuery(W, lists[1], [0], 1)])
        assert got is not None
        assert [got.get(qi, []) for qi in (0, 1)] == [
            [i for i, k in enumerate(lst) if sampled(k)] for lst, sampled in zip(lists, samplers, strict=True)
        ]
    shared = ViewQuery(V, keys, [0], 1), ViewQuery(W, keys, [0], 1)
    _CountedHash.hashes = 0
    b.samples(shared)
    assert _CountedHash.hashes == len(keys)  # one hash per key for both views
    _CountedHash.hashes = 0
    b.samples([shared[0], ViewQuery(W, list(keys), [0], 1)])  # equal, not the same list
    assert _CountedHash.hashes == 2 * len(keys)


@pytest.mark.parametrize(
    "keys",
    [
        list(range(10)),  # below the vector path
        list(range(-50, 250)),  # ints, negative ones included
        [2**62, -(2**63), 2**63 - 1, 0, 1, *range(1000, 1020)],  # int64's edges
        [f"user-{i}" for i in range(200)],  # strings
        [(i, f"m{i}") for i in range(100)],  # composite keys
    ],
    ids=["few", "ints", "int64-edges", "strings", "tuples"],
)
def test_a_trials_positions_in_one_pass_are_the_keys_it_samples_one_by_one(keys: list[Any]) -> None:
    _, b = on_trial()
    sampled = b.sampler("bypass_v")
    assert sampled is not None
    expected = [i for i, k in enumerate(keys) if sampled(k)]
    read = [ViewQuery(W, keys, [0], 1), ViewQuery(V, keys, [0], 1)]  # W: not on trial
    assert b.samples(read) == ({1: expected} if expected else None)


async def test_a_store_failing_a_trials_read_is_answered_from_every_row_the_cache_holds() -> None:
    clock = Clock()
    src, inner = await source(CacheBypass(30, trial_every=30, clock=clock), clock)
    await src.read([q(range(50))])  # unmeasured: consults, fills 0-49; the rate drops to 0
    await src.read([q(range(50, 100))])  # skipping since 0
    clock.t = 30.0  # rows still live (TTL 30 s from 0: until 30)
    inner.fail = ConnectionError("redis down")
    assert src.bypass.consults([q(range(10))]) == TRIAL  # the trial starts
    [got] = await src.read([q(range(40, 60))])
    assert isinstance(got, ViewRead)
    assert values(got)[:10] == [k * 10 for k in range(40, 50)]  # cached: sampled or not
    assert got.unavailable == [False] * 10 + [True] * 10


X = FeatureView(
    "bypass_x", (U,), (Feature("a", DType.INT64), Feature("b", DType.STRING), Feature("c", DType.INT64))
)


async def test_a_store_failing_a_trials_read_answers_the_cached_keys_in_the_features_asked() -> None:
    clock = Clock()
    inner = Counting()
    src = CachedSource(inner, LRUCache(10_000, 30, clock=clock), CacheBypass(30, trial_every=30, clock=clock))
    await src.prepare([X])
    users = list(range(400))
    table = {"user_id": users, "a": users, "b": [f"s{k}" for k in users], "c": [k * 3 for k in users]}
    await src.write(X, pa.table({**table, "event_timestamp": [1] * 400}, schema=view_schema(X)), 1)
    await src.read([ViewQuery(X, users[:200], [0], 1)])  # unmeasured: consults, fills 0-199
    await src.read([ViewQuery(X, users[200:], [0], 1)])  # all missed: skipping since 0
    clock.t = 30.0  # rows still live; a trial starts, its sampled keys of 200-399 missing
    inner.fail = ConnectionError("redis down")
    for features, want in (
        ([2, 1], [[k * 3 for k in users[:200]], [f"s{k}" for k in users[:200]]]),
        ([2], None),
    ):
        [got] = await src.read([ViewQuery(X, users, features, 1)])
        assert src.bypass._trials  # (on trial: its sample looked up, whole rows asked of the store)
        assert isinstance(got, ViewRead) and got.unavailable == [False] * 200 + [True] * 200
        assert [col[:200] for col in got.columns] == (want or [[k * 3 for k in users[:200]]])


async def test_a_skipped_read_whose_one_view_fails_counts_the_other_as_bypassed_and_the_failed_one_as_hits_and_misses() -> (
    None
):
    src, inner = await source(CacheBypass(30))
    await src.read([q(range(30)), q(range(30), W)])  # cached, 100% measured
    for view in ("bypass_v", "bypass_w"):
        src.bypass.observe(view, 0, 2_000)  # then the rates fall: reads go past the cache
    inner.fail_views = {"bypass_w"}
    before = {v: (bypassed(v), hits_and_misses(v)) for v in ("bypass_v", "bypass_w")}
    [v, w] = await src.read([q(range(20, 40)), q(range(20, 40), W)])
    assert src.bypass.skipped == 1 and values(v) == [k * 10 for k in range(20, 40)]
    assert isinstance(w, ViewRead) and w.columns[0][:10] == [k * 10 for k in range(20, 30)]
    assert w.unavailable == [False] * 10 + [True] * 10  # the keys the cache did not hold
    assert (
        bypassed("bypass_v") - before["bypass_v"][0] == 20
        and hits_and_misses("bypass_v") == before["bypass_v"][1]
    )
    assert bypassed("bypass_w") == before["bypass_w"][0]  # each key counts once: as a hit or a miss
    hits, misses = hits_and_misses("bypass_w")
    assert (hits - before["bypass_w"][1][0], misses - before["bypass_w"][1][1]) == (10, 10)


async def test_a_store_answering_fewer_views_than_asked_fails_the_read_past_the_cache_not_the_join() -> None:
    src, inner = await source(CacheBypass(30))
    await src.read([q(range(30))])
    for view in ("bypass_v", "bypass_w"):
        src.bypass.observe(view, 0, 2_000)
    inner.short = True
    with pytest.raises(ValueError, match="shorter"):  # the join's store read: UNAVAILABLE, not a 500
        await src.read([q(range(5)), q(range(5), W)])


def reads(decision: str) -> float:
    metrics.flush()
    labels = {"store": "remote", "decision": decision}
    return REGISTRY.get_sample_value("featurestore_cache_reads_total", labels) or 0.0


async def test_every_read_of_a_cached_store_is_counted_by_what_the_bypass_decided() -> None:
    clock = Clock()
    src, _ = await source(CacheBypass(30, trial_every=30, clock=clock, unmeasured=0.0), clock)
    before = {d: reads(d) for d in DECISIONS}
    await src.read([q(range(300))])  # a view measured cold: skipped
    clock.t = 30.0
    await src.read([q(range(300))])  # skipped for a TTL: on trial
    src.bypass.fills_per_round_trip = 0  # every read consults
    await src.read([q(range(3))])
    assert {d: reads(d) - before[d] for d in DECISIONS} == {"skipped": 1, "trial": 1, "consulted": 1}


async def test_the_cache_entries_gauge_counts_the_rows_a_trial_fills() -> None:
    clock = Clock()
    src, _ = await source(CacheBypass(30, trial_every=30, clock=clock, unmeasured=0.0), clock)
    await src.read([q(range(300))])  # skipping since 0
    clock.t = 30.0
    await src.read([q(range(300))])  # a trial: ~1 in 32 of the keys looked up, missed and filled
    metrics.flush()
    entries = REGISTRY.get_sample_value("featurestore_cache_entries", {"store": "remote"})
    assert entries == len(src.cache) > 0


async def test_a_batch_one_read_of_a_well_hit_view_is_answered_from_the_cache() -> None:
    src, inner = await source(CacheBypass(0.5))
    for view in ("bypass_v", "bypass_w"):
        src.bypass.observe(view, 2_000, 2_000)
    await src.read([q([7]), q([7], W)])  # a miss of a view hit ~100%: consulted, filled
    for _ in range(20):
        [a, b] = await src.read([q([7]), q([7], W)])
        assert values(a) == values(b) == [70]
    assert inner.keys_read == [[7], [7]]  # the first read only


async def test_a_failed_store_read_past_the_cache_is_answered_from_the_rows_the_cache_holds() -> None:
    src, inner = await source(CacheBypass(30))
    await src.read([q(range(30))])  # cached, 100% measured
    src.bypass.observe("bypass_v", 0, 2_000)  # then the rate falls: reads go past the cache
    inner.fail = ConnectionError("redis down")
    before = failures("bypass_v"), hits_and_misses("bypass_v"), bypassed("bypass_v")
    [got] = await src.read([q(range(20, 40))])
    assert isinstance(got, ViewRead) and src.bypass.skipped == 1
    assert got.columns[0][:10] == [k * 10 for k in range(20, 30)]  # the cached ones
    assert got.unavailable == [False] * 10 + [True] * 10  # only what the store owed
    assert failures("bypass_v") - before[0] == 1
    (hits, misses), (hits_before, misses_before) = hits_and_misses("bypass_v"), before[1]
    # the cache answered: each key counts once, as a hit or a miss, not as bypassed
    assert (hits - hits_before, misses - misses_before, bypassed("bypass_v") - before[2]) == (10, 10, 0)


async def test_a_failed_store_read_past_the_cache_fails_its_views_with_the_error() -> None:
    src, inner = await source(CacheBypass(30, unmeasured=0.0))
    inner.fail = ConnectionError("redis down")
    before = bypassed("bypass_v"), hits_and_misses("bypass_v")[1]
    got = await src.read([q(range(40)), q(range(40), W)])
    assert len(got) == 2 and all(isinstance(r, ConnectionError) for r in got)
    # looked up in the cache once the store failed: misses (each key counts once)
    assert (bypassed("bypass_v") - before[0], hits_and_misses("bypass_v")[1] - before[1]) == (0, 40)


def test_consistency_checks_read_the_stores_past_their_row_cache() -> None:
    inner, plain = Counting(), MemorySource("plain")
    cached = CachedSource(inner, LRUCache(10, 30))
    rt = Runtime(config=load_config(), registry=None, stores={"a": cached, "b": plain}, engine=None)  # type: ignore[arg-type]
    assert rt.checked_stores() == {"a": inner, "b": plain}
