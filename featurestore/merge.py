"""A join's merge: one view's read (per distinct key) into its rows' statuses and values.

Statuses are worked out per distinct key (PRESENT, NOT_FOUND, OUTSIDE_MAX_AGE past the
view's TTL, UNAVAILABLE), values that are not PRESENT become null whatever the store
returned, and the columns are mapped back to the request's rows (``inverse``: row ->
distinct key, None when no key repeats). Drift sampling wants the columns before that
mapping (one row per key the join read): ``keep`` receives them, on sampled joins only,
for the views whose keys repeat (``distinct_keys`` puts them in place of those views'
rows; the other views' rows are their distinct keys already).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from featurestore import metrics
from featurestore.model import Status
from featurestore.outcomes import ViewOutcome
from featurestore.plan import ViewPlan
from featurestore.sources.base import ViewRead

PRESENT, NOT_FOUND, OUTSIDE_MAX_AGE, UNAVAILABLE = Status  # (its members, in value order)

# A sampled join's views whose keys repeat over its rows: (slot, outcome, columns) over
# their distinct keys, which ``merge`` holds before mapping them back to rows. Only those
# views: the others' rows are their distinct keys already (no list built for them).
Repeated = list[tuple[int, ViewOutcome, list[list[Any]]]]


def merge(
    vp: ViewPlan,
    read: ViewRead | BaseException,
    n_rows: int,
    inverse: list[int] | None,
    now_us: int,
    keep: Repeated | None = None,
    slot: int = 0,
) -> tuple[ViewOutcome, list[list[Any]]]:
    """Statuses per distinct key, nulls where not PRESENT, then map back to rows. ``keep``
    (a sampled join): appended ``slot``'s outcome and columns over its distinct keys when
    they repeat over rows (``inverse``), which the merge holds anyway (no copy)."""
    view = vp.view.name
    if isinstance(read, BaseException):
        if keep is not None and inverse is not None:  # (dedupe numbers the distinct keys 0..k-1)
            keep.append((slot, *_unavailable(view, max(inverse) + 1, len(vp.features))))
        return _unavailable(view, n_rows, len(vp.features))

    found, ts = read.found, read.event_ts_us
    ttl_seconds = vp.view.ttl_seconds
    cutoff = now_us - ttl_seconds * 1_000_000 if ttl_seconds is not None else None
    unavailable = read.unavailable
    if unavailable is None and all(found) and (cutoff is None or min(ts, default=cutoff) >= cutoff):
        statuses_u: list[Status] = [PRESENT] * len(found)
        ts_u: list[int | None] = list(ts)
        cols_u = read.columns
        all_present = True
    else:
        statuses_u = [
            (PRESENT if cutoff is None or t >= cutoff else OUTSIDE_MAX_AGE) if f else NOT_FOUND
            for f, t in zip(found, ts, strict=True)
        ]
        if unavailable is not None:  # the cache answered the other keys while the store failed these
            statuses_u = [UNAVAILABLE if u else s for s, u in zip(statuses_u, unavailable, strict=True)]
        ts_u = [t if f else None for f, t in zip(found, ts, strict=True)]
        cols_u = [
            [v if s is PRESENT else None for v, s in zip(col, statuses_u, strict=True)]
            for col in read.columns
        ]
        all_present = False

    partial = unavailable is not None
    if inverse is None:
        return ViewOutcome(view, statuses_u, ts_u, all_present, partial), cols_u
    if keep is not None:
        keep.append((slot, ViewOutcome(view, statuses_u, ts_u, all_present, partial), cols_u))
    return (
        ViewOutcome(view, [statuses_u[i] for i in inverse], [ts_u[i] for i in inverse], all_present, partial),
        [[col[i] for i in inverse] for col in cols_u],
    )


def distinct_keys(
    gathered: list[list[list[Any]]], outcomes: list[ViewOutcome], repeated: Repeated
) -> tuple[list[list[list[Any]]], list[ViewOutcome]]:
    """A sampled join's columns and outcomes over each view's distinct keys: the join's
    own (the same lists when no view's keys repeat), but for the views whose keys repeat
    (``merge``'s ``keep``)."""
    if not repeated:
        return gathered, outcomes
    columns, outs = list(gathered), list(outcomes)
    for slot, outcome, cols in repeated:
        columns[slot], outs[slot] = cols, outcome
    return columns, outs


def _unavailable(view: str, rows: int, n_features: int) -> tuple[ViewOutcome, list[list[Any]]]:
    nulls: list[Any] = [None] * rows
    outcome = ViewOutcome(view, [UNAVAILABLE] * rows, nulls, all_present=False, unavailable=True)
    return outcome, [nulls] * n_features


def count_values(outcome: ViewOutcome, n_features: int) -> None:
    """``featurestore_feature_values_total``: a view's rows by status, once per feature."""
    if outcome.all_present:
        metrics.feature_values(outcome.view, "PRESENT").inc(len(outcome.statuses) * n_features)
        return
    for status, count in Counter(outcome.statuses).items():
        metrics.feature_values(outcome.view, status.name).inc(count * n_features)
