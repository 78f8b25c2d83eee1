"""The drift tests' statistics against scipy's on fixed (seeded) samples."""

from __future__ import annotations

import numpy as np
import pytest

from featurestore.quality.stats import (
    MIN_EXPECTED,
    binomial_upper_tail,
    chi2_sf,
    chi_square,
    chi_square_buckets,
    ks_2samp,
    ks_statistic,
    null_share_test,
    psi,
)

ss = pytest.importorskip("scipy.stats")


@pytest.mark.parametrize("seed", range(20))
def test_the_ks_statistic_equals_scipys_and_the_p_value_is_within_0_005_of_its_exact_one(seed: int) -> None:
    rng = np.random.default_rng(seed)
    window = rng.normal(rng.uniform(0, 0.15), 1, 1000)
    reference = rng.normal(0, 1, 5000)
    ours = ks_2samp(window, reference)
    theirs = ss.ks_2samp(window, reference)
    assert ours.statistic == pytest.approx(theirs.statistic, abs=1e-12)
    assert ours.pvalue == pytest.approx(theirs.pvalue, abs=0.005)


def test_the_ks_statistic_handles_ties_as_scipy_does() -> None:
    rng = np.random.default_rng(7)
    window = rng.integers(0, 20, 1000).astype(float)
    reference = rng.integers(0, 20, 5000).astype(float)
    assert ks_statistic(window, reference) == pytest.approx(
        ss.ks_2samp(window, reference).statistic, abs=1e-12
    )
    assert ks_2samp(window, reference).pvalue == pytest.approx(
        ss.ks_2samp(window, reference).pvalue, abs=0.005
    )


def test_a_shifted_window_has_a_tiny_ks_p_value_like_scipys() -> None:
    rng = np.random.default_rng(3)
    window, reference = rng.normal(0.5, 1, 1000), rng.normal(0, 1, 5000)
    assert ks_2samp(window, reference).pvalue < 1e-10
    assert ss.ks_2samp(window, reference).pvalue < 1e-10


@pytest.mark.parametrize("df", [1, 2, 3, 7, 30, 200])
@pytest.mark.parametrize("x", [0.01, 0.7, 3.0, 12.5, 60.0, 400.0])
def test_the_chi_square_survival_function_matches_scipys(df: int, x: float) -> None:
    assert chi2_sf(x, df) == pytest.approx(ss.chi2.sf(x, df), rel=1e-9, abs=1e-15)


def test_the_categorical_test_matches_scipys_chisquare_when_no_category_is_pooled() -> None:
    reference = {"DE": 4000, "US": 3000, "FR": 2000, "JP": 1000}
    window = {"DE": 380, "US": 330, "FR": 190, "JP": 100}
    ours = chi_square(window, reference)
    f_exp = [1000 * reference[c] / 10_000 for c in reference]
    theirs = ss.chisquare([window[c] for c in reference], f_exp)
    assert ours.statistic == pytest.approx(theirs.statistic, rel=1e-12)
    assert ours.pvalue == pytest.approx(theirs.pvalue, rel=1e-9)


def test_rare_and_unseen_categories_are_pooled_into_one_bucket() -> None:
    reference = {"a": 5000, "b": 4990, "c": 5, "d": 5}  # c and d expected 0.5 times each in 1,000
    window = {"a": 500, "b": 490, "c": 4, "z": 6}  # z: never in the reference
    ours = chi_square(window, reference)
    f_exp = np.array([500.0, 499.0, 1.0])
    theirs = ss.chisquare([500, 490, 10], f_exp)
    assert ours.statistic == pytest.approx(theirs.statistic, rel=1e-12)
    assert ours.pvalue == pytest.approx(theirs.pvalue, rel=1e-9)


def test_a_new_category_is_a_large_finite_statistic() -> None:
    result = chi_square({"a": 900, "new": 100}, {"a": 10_000})
    assert np.isfinite(result.statistic) and result.pvalue < 1e-10


def test_psi_is_zero_for_the_same_frequencies_and_grows_with_a_shift() -> None:
    ref = {"a": 500, "b": 500}
    assert psi({"a": 50, "b": 50}, ref) == pytest.approx(0.0)
    assert psi({"a": 80, "b": 20}, ref) > psi({"a": 60, "b": 40}, ref) > 0.0


@pytest.mark.parametrize("table_rows", [5_000, 1_000_000, 50_000_000])
def test_one_new_value_in_a_1000_value_window_is_not_drift_however_large_the_reference(
    table_rows: int,
) -> None:
    """The never-seen bucket is expected half a value of the window: the statistic does
    not grow with the table (half a reference count made it 2 * rows / 1,000)."""
    cities = [f"city{i}" for i in range(50)]
    reference = dict.fromkeys(cities, table_rows // 50)
    window = dict.fromkeys(cities, 20) | {"city0": 19, "cityNEW": 1}
    result = chi_square(window, reference)
    assert result.statistic == pytest.approx(0.550025, rel=1e-6) and result.pvalue > 0.5
    # a new category taking a twentieth of the window is drift at any table size
    shifted = dict.fromkeys(cities, 19) | {"cityNEW": 50}
    assert chi_square(shifted, reference).pvalue < 1e-12


def test_pooled_rare_categories_keep_the_false_alarm_rate_near_alpha() -> None:
    """Windows drawn from the reference's own population (a category expected once per
    window, and a long tail pooled): about alpha of them are drifted."""
    rng = np.random.default_rng(2)
    for cats, p in (
        (["a", "b", "rare"], np.array([0.5, 0.499, 0.001])),
        ([f"c{i}" for i in range(1000)], np.array([0.5] + [0.5 / 999] * 999)),
    ):
        reference = {c: round(x * 10_000_000) for c, x in zip(cats, p, strict=True)}
        drifted = 0
        for _ in range(1000):
            values, counts = np.unique(rng.choice(cats, size=1000, p=p), return_counts=True)
            drifted += (
                chi_square(dict(zip(values.tolist(), counts.tolist(), strict=True)), reference).pvalue < 0.05
            )
        assert 0.03 <= drifted / 1000 <= 0.07, (len(cats), drifted)


def _as_scipy(window: dict[str, int], reference: dict[str, int]) -> tuple[float, float]:
    observed, expected = chi_square_buckets(window, reference)
    theirs = ss.chisquare(observed, expected)
    return float(theirs.statistic), float(theirs.pvalue)


@pytest.mark.parametrize("categories", [300, 1000])
def test_a_feature_of_many_similar_categories_that_collapses_onto_one_is_drift(categories: int) -> None:
    """Every category expected under 5 times in a window of 1,000 went into one pool: df 0,
    p = 1 whatever the window held (review s54: 300 cities, all served as one)."""
    reference = {f"c{i}": 1000 for i in range(categories)}
    ours = chi_square({"c7": 1000}, reference)
    assert ours.pvalue < 1e-12
    assert (ours.statistic, ours.pvalue) == pytest.approx(_as_scipy({"c7": 1000}, reference), rel=1e-9)


def test_rare_categories_are_cut_into_groups_each_expected_at_least_5_times() -> None:
    reference = {f"c{i:03d}": 1000 for i in range(300)}  # each expected 3.3 times in 1,000
    window = {f"c{i:03d}": 3 + (i % 3 == 0) for i in range(300)}
    observed, expected = chi_square_buckets(window, reference)
    assert len(observed) == 150 and expected.min() >= MIN_EXPECTED
    assert observed.sum() == pytest.approx(expected.sum()) and observed.sum() == sum(window.values())
    # consecutive by reference count, then name: c000+c001, c002+c003, ...
    assert observed[0] == window["c000"] + window["c001"]


def test_a_long_tail_moving_onto_one_tail_category_is_drift_and_matches_scipy() -> None:
    head = {"a": 300_000, "b": 200_000, "c": 100_000, "d": 50_000, "e": 50_000}
    reference = head | {f"t{i}": 300 for i in range(995)}  # the tail: 30% of rows, 0.3 each
    total = sum(reference.values())
    window = {k: round(1000 * v / total) for k, v in head.items()} | {"t3": 299}
    ours = chi_square(window, reference)
    assert ours.pvalue < 1e-12
    assert (ours.statistic, ours.pvalue) == pytest.approx(_as_scipy(window, reference), rel=1e-9)
    # and a window drawn from the reference itself matches scipy and is not drift
    rng = np.random.default_rng(3)
    cats = list(reference)
    p = np.array([reference[c] for c in cats], dtype=np.float64) / total
    values, counts = np.unique(rng.choice(cats, size=1000, p=p), return_counts=True)
    window = dict(zip(values.tolist(), counts.tolist(), strict=True))
    ours = chi_square(window, reference)
    assert (ours.statistic, ours.pvalue) == pytest.approx(_as_scipy(window, reference), rel=1e-9)
    observed, expected = chi_square_buckets(window, reference)
    assert expected.min() >= MIN_EXPECTED and len(observed) > 50


def test_many_rare_categories_keep_the_false_alarm_rate_near_alpha() -> None:
    rng = np.random.default_rng(4)
    cats = [f"c{i}" for i in range(400)]  # each expected 2.5 times per window
    reference = dict.fromkeys(cats, 1000)
    drifted = 0
    for _ in range(600):
        values, counts = np.unique(rng.choice(cats, size=1000), return_counts=True)
        drifted += (
            chi_square(dict(zip(values.tolist(), counts.tolist(), strict=True)), reference).pvalue < 0.05
        )
    assert 0.025 <= drifted / 600 <= 0.08


@pytest.mark.parametrize(
    ("k", "n", "p"),
    [(1, 10, 0.3), (5, 10, 0.2), (300, 1000, 0.2), (1000, 1000, 0.2), (230, 1000, 0.2), (0, 5, 0.5)],
)
def test_the_binomial_upper_tail_matches_scipys(k: int, n: int, p: float) -> None:
    assert binomial_upper_tail(k, n, p) == pytest.approx(ss.binom.sf(k - 1, n, p), rel=1e-9, abs=1e-300)


def test_a_window_that_turned_mostly_or_wholly_null_fails_the_null_share_test() -> None:
    assert null_share_test(1000, 1000, 0.0).pvalue < 1e-12
    assert null_share_test(995, 1000, 0.0).pvalue < 1e-12
    assert null_share_test(995, 1000, 0.0).statistic == pytest.approx(0.995)
    # a few nulls more than the reference's share is not drift; a reference mostly null
    # itself accepts a mostly null window
    assert null_share_test(60, 1000, 0.02).pvalue > 0.5
    assert null_share_test(900, 1000, 0.85).pvalue > 0.5


@pytest.mark.parametrize("reference_share", [0.0, 0.5, 0.9, 0.98])
def test_a_feature_going_wholly_null_is_drift_whatever_its_reference_null_share(
    reference_share: float,
) -> None:
    """The margin was absolute (0.2): from a reference 80% null the bound was 1, so a
    sparse feature whose producer broke (every value null) had p = 1 (review 2, s54)."""
    bound = reference_share + min(0.05, (1 - reference_share) / 2)  # H0's bound: below 1
    result = null_share_test(1000, 1000, reference_share)
    assert result.pvalue == pytest.approx(ss.binom.sf(999, 1000, bound), rel=1e-9)
    assert result.pvalue < 1e-4  # 0.99^1000 = 4.3e-5 at 0.98, the hardest of these
    # simulated: windows of the reference's own null share reject at most alpha/10, and
    # windows of nulls only, every time
    rng = np.random.default_rng(int(reference_share * 100))
    at_reference = rng.binomial(1000, reference_share, 2000)
    rejected = sum(null_share_test(int(k), 1000, reference_share).pvalue < 0.05 for k in at_reference)
    assert rejected <= 0.005 * 2000
