"""The tests drift detection runs, in numpy (no scipy at run time: it would add
~100 MB to the image for two functions; tests check these against scipy).

* ``ks_2samp``: two-sample Kolmogorov-Smirnov, two-sided. The statistic is exact (ties
  handled as scipy does); the p-value is the asymptotic Kolmogorov distribution with
  Stephens' small-sample correction, ``Q_KS((sqrt(ne) + 0.12 + 0.11/sqrt(ne)) * D)``,
  ``ne = n*m/(n+m)``. At the window sizes used (1,000 against 5,000) it is within 0.005
  of scipy's exact p-value (tests/unit/test_quality_stats.py).
* ``chi_square``: Pearson's goodness of fit of a window's category counts against the
  reference frequencies. Categories expected fewer than 5 times in the window are pooled
  (the usual validity rule) into consecutive groups each expected at least 5 times
  (``chi_square_buckets``), and categories the reference never saw join the rarest
  group (or, when the reference kept only its most frequent categories, the window's
  values outside them count as its ``OTHER`` bucket: they are the long tail it summed,
  not new). A bucket of new values alone (no category is rare) is
  expected at least ``MIN_POOL_EXPECTED`` (half a value) in the window, so a brand-new
  category is a finite statistic that grows with the share of the window it takes, not
  with the size of the table: half a *reference* count (as before) made one new value in
  a 1,000-value window score 2 * rows / 1,000 (1,998 on a 1M-row table: certain drift).
  p-value: the chi-square survival function (regularized upper incomplete gamma, series /
  continued fraction).
* ``null_share_test``: did the share of nulls in a window rise above the reference's
  (plus ``NULL_MARGIN``, or half the gap to 1 when that is less), or fall below
  ``null_share_floor`` (only a reference of no value at all has one: any value served is
  drift there)? Exact binomial tails, the smaller one the p-value.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import NamedTuple

import numpy as np

MIN_EXPECTED = 5.0
MIN_POOL_EXPECTED = 0.5  # values of the window: the pooled bucket's least expected count
# null_share_test: a rise of the null share under this is not drift. The windows hold the
# rows the view had a value for (the sampler leaves out NOT_FOUND and the other statuses,
# sampler.ABSENT), so what is tested is the share of stored nulls among the rows served,
# against the table's: they differ by the traffic's mix of keys only (a caveat the value
# tests share). A window of 1,000 rows whose null share is 0.10 against a reference of 0
# rejects at alpha 0.05 every time (2,000 of 2,000 simulated windows; at a share of 0.05,
# on the bound, 4.3%); 0.2 was needed while unknown keys counted as nulls.
NULL_MARGIN = 0.05
OTHER = "__other__"  # profile.OTHER: the categories beyond a profile's MAX_CATEGORIES


class TestResult(NamedTuple):
    statistic: float
    pvalue: float


def ks_statistic(a: np.ndarray, b: np.ndarray) -> float:
    """sup |F_a - F_b| over the pooled sample (both empirical CDFs right-continuous)."""
    a, b = np.sort(a), np.sort(b)
    pooled = np.concatenate([a, b])
    fa = np.searchsorted(a, pooled, side="right") / len(a)
    fb = np.searchsorted(b, pooled, side="right") / len(b)
    return float(np.max(np.abs(fa - fb)))


def kolmogorov_sf(x: float) -> float:
    """P(K > x) for the Kolmogorov distribution (the limit of sqrt(n) * D_n)."""
    if x <= 0:
        return 1.0
    if x < 1.18:  # the alternating series converges slowly here: use the theta form
        y = math.exp(-(math.pi**2) / (8 * x * x))
        s = sum(y ** ((2 * k - 1) ** 2) for k in range(1, 6))
        return max(0.0, min(1.0, 1.0 - math.sqrt(2 * math.pi) / x * s))
    s = 0.0
    for j in range(1, 101):
        term = (-1) ** (j - 1) * math.exp(-2.0 * j * j * x * x)
        s += term
        if abs(term) < 1e-16:
            break
    return max(0.0, min(1.0, 2.0 * s))


def ks_2samp(a: np.ndarray, b: np.ndarray) -> TestResult:
    """Two-sided two-sample KS test of ``a`` against ``b`` (NaNs must be dropped)."""
    n, m = len(a), len(b)
    if n == 0 or m == 0:
        raise ValueError("both samples need values")
    d = ks_statistic(a, b)
    en = math.sqrt(n * m / (n + m))
    return TestResult(d, kolmogorov_sf((en + 0.12 + 0.11 / en) * d))


def chi2_sf(x: float, df: int) -> float:
    """P(X > x) for a chi-square variable with ``df`` degrees of freedom."""
    if df < 1:
        raise ValueError("df must be >= 1")
    if x <= 0:
        return 1.0
    return _gammaincc(df / 2.0, x / 2.0)


def _gammaincc(a: float, x: float) -> float:
    """Regularized upper incomplete gamma Q(a, x)."""
    lead = math.exp(-x + a * math.log(x) - math.lgamma(a))
    if x < a + 1.0:  # series for P(a, x)
        term = total = 1.0 / a
        ap = a
        for _ in range(10_000):
            ap += 1.0
            term *= x / ap
            total += term
            if abs(term) < abs(total) * 1e-15:
                break
        return max(0.0, min(1.0, 1.0 - total * lead))
    # Lentz's continued fraction for Q(a, x)
    tiny = 1e-300
    b = x + 1.0 - a
    c = 1.0 / tiny
    d = 1.0 / b
    h = d
    for i in range(1, 10_000):
        an = -i * (i - a)
        b += 2.0
        d = an * d + b
        d = tiny if abs(d) < tiny else d
        c = b + an / c
        c = tiny if abs(c) < tiny else c
        d = 1.0 / d
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-15:
            break
    return max(0.0, min(1.0, lead * h))


def pearson(observed: np.ndarray, expected: np.ndarray) -> TestResult:
    """Pearson's chi-square of observed counts against expected counts (same total)."""
    stat = float(np.sum((observed - expected) ** 2 / expected))
    df = len(observed) - 1
    return TestResult(stat, chi2_sf(stat, df) if df >= 1 else 1.0)


def chi_square(window: Mapping[str, int], reference: Mapping[str, int]) -> TestResult:
    """Goodness of fit of a window's category counts to the reference's frequencies."""
    return pearson(*chi_square_buckets(window, reference))


def chi_square_buckets(
    window: Mapping[str, int], reference: Mapping[str, int]
) -> tuple[np.ndarray, np.ndarray]:
    """The observed and expected counts the chi-square test compares (same total).

    A category expected ``MIN_EXPECTED`` times or more is a bucket of its own. The rarer
    ones, sorted by reference count (then name), are cut into consecutive groups that
    are each expected at least ``MIN_EXPECTED`` times (a short remainder joins the last
    group). One pool of them all (as before, review s54) left a feature of 200+ similar
    categories a single bucket: df 0, p = 1 whatever the window held. Values the
    reference never saw join the group of the rarest categories (or, when no category is
    rare, a bucket of their own, expected at least ``MIN_POOL_EXPECTED``). A reference
    whose rare categories together are expected under ``MIN_EXPECTED`` times keeps them
    as one such bucket (at least ``MIN_POOL_EXPECTED``)."""
    n = sum(window.values())
    ref_total = sum(reference.values())
    if n == 0 or ref_total == 0:
        raise ValueError("both the window and the reference need values")
    unseen = sum(c for cat, c in window.items() if cat not in reference)
    if OTHER in reference:  # the profile's long tail: a served value not among the kept
        window = {**window, OTHER: window.get(OTHER, 0) + unseen}  # top categories is in it
        unseen = 0
    observed: list[float] = []
    expected: list[float] = []
    rare: list[tuple[int, str]] = []
    for cat, ref_count in reference.items():
        e = n * ref_count / ref_total
        if e >= MIN_EXPECTED:
            observed.append(window.get(cat, 0))
            expected.append(e)
        else:
            rare.append((ref_count, cat))
    groups: list[list[float]] = []  # [observed, reference count] per group of rare categories
    o = r = 0.0
    for ref_count, cat in sorted(rare):
        o, r = o + window.get(cat, 0), r + ref_count
        if n * r / ref_total >= MIN_EXPECTED:
            groups.append([o, r])
            o = r = 0.0
    if groups:
        groups[-1][0] += o  # the remainder, expected under MIN_EXPECTED: with the last group
        groups[-1][1] += r
        groups[0][0] += unseen
    elif o or r or unseen:
        groups.append([o + unseen, r])
    for o, r in groups:
        observed.append(o)
        expected.append(max(n * r / ref_total, MIN_POOL_EXPECTED))
    exp = np.asarray(expected)
    exp *= n / exp.sum()  # the least expected count above: keep the totals equal
    return np.asarray(observed, dtype=np.float64), exp


def binomial_upper_tail(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p), summed exactly in log space (n is a window)."""
    if k <= 0 or p >= 1.0:
        return 1.0
    if k > n or p <= 0.0:
        return 0.0
    j = np.arange(1, n + 1, dtype=np.float64)
    log_choose = np.concatenate([[0.0], np.cumsum(np.log(n - j + 1) - np.log(j))])
    i = np.arange(k, n + 1, dtype=np.float64)
    log_pmf = log_choose[k:] + i * math.log(p) + (n - i) * math.log1p(-p)
    top = float(log_pmf.max())
    return min(1.0, math.exp(top) * float(np.exp(log_pmf - top).sum()))


def null_share_test(nulls: int, n: int, reference_share: float, margin: float = NULL_MARGIN) -> TestResult:
    """Did the share of nulls move? Exact binomial tests of ``nulls`` in ``n`` against H0:
    the share is at most ``null_share_bound`` (a rise) and at least ``null_share_floor``
    (a fall); the p-value is the smaller tail (not doubled: at the reference's own share
    the other side's chance is nil, docs/quality.md). The statistic is the window's null
    share. The margin keeps a share that rose a little with the mix of keys served
    (``NULL_MARGIN``) from rejecting for good; a feature turning null rejects, and so
    does a feature null throughout its reference that is served values."""
    if n <= 0:
        raise ValueError("the window needs values")
    rise = binomial_upper_tail(nulls, n, null_share_bound(reference_share, margin))
    # P(X <= nulls | floor) = P(n - X >= n - nulls | 1 - floor): the values' upper tail
    fall = binomial_upper_tail(n - nulls, n, 1.0 - null_share_floor(reference_share))
    return TestResult(nulls / n, min(rise, fall))


def null_share_bound(reference_share: float, margin: float = NULL_MARGIN) -> float:
    """The null share H0 allows: the reference's plus ``margin``, or plus half its gap to
    1 when that is less. An absolute margin alone reached 1 for a feature 95% null in its
    reference (0.8 at the old 0.2), so that feature going wholly null was never drift
    (review 2, s54); halving the gap keeps it testable: at 0.98 the bound is 0.99, and a
    1,000-row window of nulls only has p = 0.99^1000 = 4e-5."""
    r = min(1.0, max(0.0, reference_share))
    return r + min(margin, (1.0 - r) / 2)


def null_share_floor(reference_share: float) -> float:
    """The least null share H0 allows: 1 for a reference of no value at all (share 1), 0
    otherwise. Such a feature (a column not yet backfilled, a pipeline writing nulls) was
    "not drifted" whatever it was served (p = 1: the bound above is 1; review s57): no row
    of its data version holds a value, so no mix of keys explains one, and no value test
    can run (the reference has no values). A fall of the share from below 1 is not tested:
    callers ask for active keys more than the table holds them, and those have fewer
    nulls, so the fall is the mix of keys as often as not, and it would be drift for good."""
    return 1.0 if reference_share >= 1.0 else 0.0


def psi(window: Mapping[str, int], reference: Mapping[str, int], floor: float = 1e-4) -> float:
    """Population stability index of the window against the reference (reported beside
    the chi-square test; 0.1 / 0.25 are the usual "watch" / "act" levels)."""
    n, ref_total = sum(window.values()), sum(reference.values())
    cats = set(window) | set(reference)
    out = 0.0
    for cat in cats:
        p = max(reference.get(cat, 0) / ref_total, floor)
        q = max(window.get(cat, 0) / n, floor)
        out += (q - p) * math.log(q / p)
    return out
