"""Quiet views (featurestore/bypass.py): a read of views whose rate alone sends it past
the cache skips without the rule, and decides exactly as the rule would."""

from __future__ import annotations

import random
from typing import Any

import pytest

from featurestore.bypass import CONSULT, SKIP, TRIAL, CacheBypass
from featurestore.model import DType, Entity, Feature, FeatureView
from featurestore.sources.base import ViewQuery
from tests.unit.test_cache_bypass import Clock

U = Entity("user_id", DType.INT64)
VIEWS = [FeatureView(f"quiet_{n}", (U,), (Feature("a", DType.INT64),)) for n in "abc"]


class RuleEveryTime(CacheBypass):
    """The bypass as it was before quiet views: every read runs the rule."""

    __slots__ = ()

    def consults(self, queries: list[ViewQuery]) -> int:  # type: ignore[override]
        self._quiet.clear()
        self._quiet_reads.clear()
        return super().consults(queries)


def quiet_views(b: CacheBypass) -> dict[str, float]:
    return b._quiet


def timed() -> tuple[Clock, CacheBypass]:
    """The default figure on Redis and a 30 s TTL, on a clock of the test's."""
    clock = Clock()
    return clock, CacheBypass(0.5, trial_every=30, clock=clock)


def one(view: FeatureView, keys: list[int] | None = None) -> ViewQuery:
    """A query of ``view`` for ``keys`` (user 1 by default)."""
    return ViewQuery(view, [1] if keys is None else keys, [0], 1)


class RuleCounted(CacheBypass):
    """The bypass as it serves, counting the reads its rule's trial check ran for."""

    __slots__ = ("rule_runs",)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.rule_runs = 0

    def _trial(self, queries: Any) -> tuple[int, float]:
        self.rule_runs += 1
        return super()._trial(queries)


def history(seed: int) -> tuple[int, int, float]:
    """A random history of reads, hit rates, time, dropped views and figures, decided by
    the bypass and by the rule every time: every verdict and the state after must agree.
    Returns how many reads each fast path decided without the rule's trial check (quiet
    views; a read shape the rule skipped), and the figure at the end."""
    rng = random.Random(seed)
    figure = [0.5, 2.0, 50.0][seed % 3]
    clocks = Clock(), Clock()
    fast = RuleCounted(figure, trial_every=30, clock=clocks[0])
    rule = RuleEveryTime(figure, trial_every=30, clock=clocks[1])
    skipped_quietly = skipped_by_shape = 0
    hit_chance = {v.name: 0.0 for v in VIEWS}  # per view, in phases: cold, lukewarm, hot
    for step in range(6_000):
        if rng.random() < 0.002:
            hit_chance[rng.choice(VIEWS).name] = rng.choice([0.0, 0.2, 0.6, 0.95])
        dt = rng.choice([0.0, 0.0, 0.01, 0.5, 3.0, 17.0])
        for c in clocks:
            c.t += dt
        if rng.random() < 0.001:  # a registry change drops a view, or a new figure
            kept = {v.name for v in rng.sample(VIEWS, 2)}
            for b in (fast, rule):
                b.keep_only(kept)
        if rng.random() < 0.001:
            figure = rng.choice([0.5, 2.0, 50.0])
            fast.fills_per_round_trip = rule.fills_per_round_trip = figure
        views = rng.sample(VIEWS, rng.randint(1, 3))
        keys = [list(range(rng.choice([0, 1, 1, 2, 10, 100]))) for _ in views]
        read = [ViewQuery(v, k, [0], 1) for v, k in zip(views, keys, strict=True)]
        was_quiet = all(quiet_views(fast).get(v.name, 0.0) > clocks[0].t for v in views) and all(keys)
        runs = fast.rule_runs
        verdicts = fast.consults(read), rule.consults(read)
        assert verdicts[0] == verdicts[1], f"step {step}"
        if fast.rule_runs == runs:  # decided without the rule's trial check (or consulted)
            skipped_quietly += was_quiet
            skipped_by_shape += not was_quiet and verdicts[0] == SKIP
        # what a read then reports: a consulted read its hits; a trial's its sample's
        for v, k in zip(views, keys, strict=True):
            if not k:
                continue
            hits = sum(rng.random() < hit_chance[v.name] for _ in k)
            for b in (fast, rule):
                if verdicts[0] == SKIP:
                    continue
                b.observe(v.name, hits, len(k), sampled=b._trials.get(v.name) is not None)
    for table in ("_rate", "_skipping_since", "_backoff", "_warming", "_consulting_since"):
        assert getattr(fast, table) == getattr(rule, table)
    assert fast._trials.keys() == rule._trials.keys()
    assert (fast.skipped, fast.tried) == (rule.skipped, rule.tried)
    return skipped_quietly, skipped_by_shape, figure


@pytest.mark.parametrize("seed", range(12))
def test_reads_decide_as_the_rule_would_whatever_the_history_of_rates_trials_and_time(seed: int) -> None:
    skipped_quietly, _, figure = history(seed)
    if figure < 50:  # (at 50 a view is cold only below a 2% hit rate: rarely here)
        assert skipped_quietly > 100, skipped_quietly  # the fast path was taken, and agreed each time


def test_random_histories_take_the_read_shape_path_too() -> None:
    """Reads of views none of which is quiet alone, skipped by their shape without the
    rule (each agreeing with it: ``history`` checks every verdict)."""
    assert sum(history(seed)[1] for seed in range(6)) > 100


def test_a_quiet_views_next_trial_starts_on_time_and_is_decided_at_once_until_it_ends() -> None:
    clock, b = timed()
    read = [one(VIEWS[0])]
    b.observe(VIEWS[0].name, 0, 100)  # a cold view: every read of it skips
    assert b.consults(read) == SKIP
    assert quiet_views(b) == {VIEWS[0].name: 30.0}
    clock.t = 29.9
    assert b.consults(read) == SKIP
    clock.t = 30.0
    assert b.consults(read) == TRIAL  # its trial, which ends by two periods from now
    assert quiet_views(b) == {VIEWS[0].name: 90.0}
    clock.t = 89.9
    assert b.consults(read) == TRIAL
    for _ in range(3):  # loads, then windows of no hits: the second ends the trial
        b.observe(VIEWS[0].name, 0, 10_000, sampled=True)
    assert quiet_views(b) == {}


def test_a_view_whose_trial_measured_it_cold_is_quiet_from_its_next_read() -> None:
    clock, b = timed()
    read = [one(VIEWS[0])]
    b.observe(VIEWS[0].name, 0, 100)
    assert b.consults(read) == SKIP
    clock.t = 30.0
    assert b.consults(read) == TRIAL
    clock.t = 61.0
    for _ in range(3):  # loads, then windows of no hits: the second ends the trial, cold
        b.observe(VIEWS[0].name, 0, 10_000, sampled=True)
    assert VIEWS[0].name not in b._warming  # (no read of it consults: nothing to warm)
    clock.t = 62.0
    assert b.consults(read) == SKIP
    # quiet until its next trial, a doubled wait (60 s) after this one ended; a trial's
    # verdict held for a TTL sent every read of it through the rule until 91 s
    assert quiet_views(b) == {VIEWS[0].name: 121.0}


def test_a_view_becomes_quiet_only_when_its_rate_alone_decides() -> None:
    _, b = timed()
    b.observe(VIEWS[0].name, 70, 100)  # 0.7 x 0.5 >= 0.3: a read of one key would consult
    b.observe(VIEWS[1].name, 0, 100)
    assert b.consults([one(VIEWS[0], [1, 2, 3])]) == SKIP  # three keys: skip
    assert quiet_views(b) == {}  # a read of one key would not
    assert b.consults([one(VIEWS[1])]) == SKIP
    assert quiet_views(b) == {VIEWS[1].name: 30.0}


@pytest.mark.parametrize("name", ["trial_every", "unmeasured"])
def test_the_figures_a_view_was_judged_quiet_by_cannot_change_under_it(name: str) -> None:
    b = CacheBypass(0.5)
    with pytest.raises(AttributeError):
        setattr(b, name, 1.0)


def test_a_new_fills_per_round_trip_judges_every_quiet_view_again() -> None:
    _, b = timed()
    b.observe(VIEWS[0].name, 12_000, 20_000)  # 0.6 x 0.5 < 0.4: cold (the prior long decayed)
    read = [one(VIEWS[0])]
    assert b.consults(read) == SKIP
    assert quiet_views(b)
    b.fills_per_round_trip = 2.0  # 0.6 x 2 >= 0.4: a read of one key pays
    assert quiet_views(b) == {}
    assert b.consults(read) == CONSULT
    with pytest.raises(ValueError, match="fills_per_round_trip"):
        b.fills_per_round_trip = -1


def test_a_view_whose_trial_said_consult_is_never_quiet_while_the_trials_rate_decides() -> None:
    clock, b = timed()
    a, cold = VIEWS[0], VIEWS[1]
    b.observe(a.name, 0, 100)
    b.observe(cold.name, 0, 100)
    b.consults([one(a)])
    clock.t = 30.0
    assert b.consults([one(a)]) == TRIAL
    b.observe(a.name, 0, 10_000, sampled=True)  # loads
    clock.t = 61.0  # its rows may expire: two windows of all hits end it, saying consult
    for _ in range(2):
        b.observe(a.name, 10_000, 10_000, sampled=True)
    assert b.consults([one(a)]) == CONSULT
    b.observe(a.name, 0, 10_000)  # its consulted reads then miss: its own rate is cold
    read_both = [one(a), one(cold)]
    assert b.consults(read_both) == SKIP  # (the cold view decides)
    assert a.name not in quiet_views(b)
    assert b.consults([one(a)]) == CONSULT  # the trial's rate, for its period


def test_a_quiet_view_read_for_none_of_its_keys_in_a_consulting_read_is_no_longer_quiet() -> None:
    clock, b = timed()
    quiet, hot = VIEWS[0], VIEWS[1]
    b.observe(quiet.name, 0, 100)
    b.observe(hot.name, 100, 100)
    assert b.consults([one(quiet)]) == SKIP
    assert quiet.name in quiet_views(b)
    clock.t = 10.0
    assert b.consults([one(quiet, []), one(hot)]) == CONSULT
    assert quiet.name not in quiet_views(b)  # its skipping time starts again at its next read


def test_a_read_of_no_views_consults_as_the_rule_says_even_beside_quiet_views() -> None:
    b = CacheBypass(0.5)
    b.observe(VIEWS[0].name, 0, 100)
    assert b.consults([one(VIEWS[0])]) == SKIP
    assert quiet_views(b)
    assert b.consults([]) == CONSULT


def test_a_read_of_two_lukewarm_views_is_skipped_by_its_shape_until_one_views_next_trial() -> None:
    """Neither view is quiet (a one-key read of either alone consults), but a read of both
    always skips: its verdict holds, without the rule, until the sooner next trial."""
    clock = Clock()
    b = RuleCounted(0.5, trial_every=30, clock=clock)
    a, c = VIEWS[0], VIEWS[1]
    b.observe(a.name, 7_500, 10_000)  # 0.75 x 0.5 >= 0.25: alone, a one-key read consults
    b.observe(c.name, 8_000, 10_000)
    both = [one(a), one(c)]
    assert b.consults([one(a)]) == CONSULT
    assert b.consults(both) == SKIP  # 0.75 x 0.8 x 0.5 = 0.3 < 0.45 misses
    assert quiet_views(b) == {}
    assert b._quiet_reads == {((a.name, 1), (c.name, 1)): 30.0}
    runs = b.rule_runs
    clock.t = 29.9
    assert b.consults(both) == SKIP
    assert b.rule_runs == runs  # decided by its shape
    clock.t = 30.0
    assert b.consults(both) == TRIAL  # the trials start on time
    assert b.rule_runs == runs + 1


def test_a_changed_rate_of_one_of_its_views_ends_a_quiet_read_and_another_views_does_not() -> None:
    _, b = timed()
    a, c, hot = VIEWS
    b.observe(a.name, 7_500, 10_000)
    b.observe(c.name, 8_000, 10_000)
    b.observe(hot.name, 10_000, 10_000)
    both = [one(a), one(c)]
    assert b.consults(both) == SKIP
    assert b._quiet_reads
    assert b.consults([one(hot)]) == CONSULT  # a consulted read of another view, and its hits
    b.observe(hot.name, 1, 1)
    assert b._quiet_reads
    b.observe(a.name, 10_000, 10_000)  # a's consulted reads now hit: the read may pay
    assert b._quiet_reads == {}
    assert b.consults(both) == CONSULT
