"""Derived features in a join: the plan of what to compute (built once per snapshot and
request shape by ``resolve``, cached with the join plan) and the per-request step that
computes it.

A plan runs one kernel per derived view it needs, views after the views they read.
Each kernel gets a float64 matrix whose rows are the columns the join already has
(stored values, request fields, earlier kernels' outputs; NaN for what the request
does not need) and fills one row per feature, flagging the rows that hold a null. From
``ARRAY_ROWS`` rows on, a float64 feature leaves as its row of that matrix (a float64
ndarray, NaN = null, which every codec writes as null); below, as a list holding None
(only the rows the kernel flagged are scanned for NaN). One entity row skips the
matrices: each kernel's scalar entry takes the row's values and returns its features.
Statuses come from the stored views a feature reads, transitively: the most severe
wins, the value is then null, and the event timestamp is the oldest of theirs (a
derived value is as stale as its stalest input). Request fields count as PRESENT; a
feature reading only request fields has no event timestamp.
"""

from __future__ import annotations

import math
import struct
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from featurestore import metrics, tracing
from featurestore.derived.codegen import NULL_BITS
from featurestore.derived.compiler import Kernel
from featurestore.derived.request import Needed, check_fields
from featurestore.model import DType, FeatureRef, Status
from featurestore.outcomes import ViewOutcome

STORED, REQUEST, DERIVED, MISSING, STRCMP = range(5)
PRESENT = Status.PRESENT
FLOAT64 = DType.FLOAT64

# From this many rows on, a float64 derived feature is served as its row of the kernel's
# output matrix (a float64 ndarray, NaN = null) instead of a list of Python floats: the
# encoders read the doubles where the kernel wrote them, and (batch 100, four features)
# 400 float objects are neither made by ``tolist`` nor freed. ranker_v2's CPU per
# request in the serving path, arrays against lists (``python -m
# benchmarks.derived_arrays``, benchmarks/RESULTS.md, 2026-12-05 23:10): 12.4 µs (3.4%)
# less at batch 100, 0.4-1.0 µs less at 12-32 and even at 8 (within the harness's ~1 µs
# noise), 0.2-0.9 µs more at 2-4 (numpy's and orjson's set-up per array; one row takes
# neither path: ``_run_row``).
ARRAY_ROWS = 8


class Source(NamedTuple):
    """Where one kernel input row comes from in a request."""

    kind: int  # STORED | REQUEST | DERIVED | MISSING | STRCMP
    a: int = 0  # view slot | request field index | step index
    b: int = 0  # column slot | output row of the step
    test: StrTest | None = None


class StrTest(NamedTuple):
    equal: bool  # == or !=
    a: Source | str  # a column, or a string constant
    b: Source | str


@dataclass(frozen=True, slots=True)
class Step:
    view: str
    kernel: Kernel
    sources: tuple[Source, ...]  # one per kernel input row
    timer: Any = None  # the view's kernel-duration histogram (looked up once, with the plan)
    width: int = 0  # output rows: the view's features

    def __post_init__(self) -> None:
        object.__setattr__(self, "timer", metrics.derived_kernel_duration(self.view))
        object.__setattr__(self, "width", len(self.kernel.spec.features))


@dataclass(frozen=True, slots=True)
class Output:
    step: int
    row: int
    dtype: DType
    group: int  # index into DerivedPlan.groups: outputs reading the same stored views share an outcome
    bit: int = 0  # its row's bit in the null mask the kernel returns (codegen.NULL_BITS)

    def __post_init__(self) -> None:
        object.__setattr__(self, "bit", 1 << min(self.row, NULL_BITS - 1))


@dataclass(frozen=True, slots=True)
class Group:
    """Outputs of one derived view reading the same stored views: one outcome per request."""

    view: str
    deps: tuple[int, ...]  # view slots of the stored views read, transitively
    columns: int  # how many outputs share it (value counts)
    present: Any = None  # the view's PRESENT value counter (looked up once, with the plan)

    def __post_init__(self) -> None:
        object.__setattr__(self, "present", metrics.feature_values(self.view, "PRESENT"))


ColumnOf = Callable[[FeatureRef], tuple[int, int]]  # stored ref -> (view slot, column slot)


@dataclass(frozen=True, slots=True, eq=False)
class DerivedPlan:
    steps: tuple[Step, ...]
    outputs: tuple[Output, ...]  # the requested derived features, in request order
    request: tuple[Needed, ...]  # needed fields, each with a feature needing it
    groups: tuple[Group, ...] = ()

    def check_request(self, data: Mapping[str, Sequence[Any]] | None, n: int) -> list[Sequence[Any]]:
        """The request fields the plan needs, checked (before any store is read)."""
        return check_fields(self.request, data, n)

    def run(
        self,
        request_cols: list[Sequence[Any]],
        outcomes: list[ViewOutcome],
        gathered: list[list[list[Any]]],
        n: int,
        span: Any = None,
    ) -> None:
        """Compute the derived outputs; append one slot each to outcomes and gathered.
        A child span ``derived`` records the step when the request's span is sampled."""
        child = None
        if span is not None and span.is_recording():
            child = tracing.tracer.start_span(
                "derived",
                context=tracing.child_context(span),
                attributes={"featurestore.derived_views": [s.view for s in self.steps]},
            )
        try:
            if n == 1:
                self._run_row(request_cols, outcomes, gathered)
            else:
                self._run(request_cols, outcomes, gathered, n)
        finally:
            if child is not None:
                child.end()

    def _run(
        self,
        request_cols: list[Sequence[Any]],
        outcomes: list[ViewOutcome],
        gathered: list[list[list[Any]]],
        n: int,
    ) -> None:
        arrays = n >= ARRAY_ROWS
        # per step: its output matrix (array path) or its rows as lists (one tolist for all)
        lists: list[Any] = []
        nulls: list[int] = []  # and the mask of its rows holding a null
        # Inputs the request does not need (only features it did not ask for read them)
        # share one NaN row: a row of None sends np.array down its object path. Demo
        # kernel, 2 of its 4 inputs unneeded, conversion + kernel + tolist: 4.4 -> 2.3 µs
        # at batch 1 (measured when batch 1 came here), 28.6 -> 17.9 at 100, 373 -> 188 at
        # 1,000 (a loaded 2-core VM).
        # A kernel computes every feature of its view even when one is asked for: one
        # kernel (and one dispatch) per view instead of one per requested subset; on
        # NaN inputs the unasked features cost 0.3 µs at batch 100, 15 µs at 1,000 and
        # 110 µs at 10,000 (kernel alone: 1.0 -> 1.3, 13 -> 28, 77 -> 189 µs).
        nan_row: list[float] | None = None
        for step in self.steps:
            t0 = time.perf_counter()
            rows: list[Any] = []  # lists, and ndarray rows of earlier kernels (array path)
            for kind, a, b, test in step.sources:  # inline: a call per row costs more than the kernel
                if kind == STORED:
                    rows.append(gathered[a][b])
                elif kind == REQUEST:
                    rows.append(request_cols[a])
                elif kind == DERIVED:
                    rows.append(lists[a][b])  # (array path: an ndarray row, copied as one)
                elif test is not None:
                    rows.append(_strcmp(test, request_cols, gathered, n))
                else:
                    if nan_row is None:
                        nan_row = [math.nan] * n
                    rows.append(nan_row)
            inp = _matrix(rows, n)
            matrix = np.empty((step.width, n))
            nulls.append(step.kernel.into(inp, matrix))
            lists.append(matrix if arrays else matrix.tolist())
            step.timer.observe(time.perf_counter() - t0)
        shared = self._shared(outcomes, n)
        masks: dict[int, np.ndarray] = {}  # per group whose rows are not all PRESENT (array path)
        for out in self.outputs:
            outcome = shared[out.group]
            values: Any = lists[out.step][out.row]
            if arrays and out.dtype is FLOAT64:
                if not outcome.all_present:  # null where an input is not PRESENT
                    mask = masks.get(out.group)
                    if mask is None:
                        mask = masks[out.group] = _present(outcome.statuses, n)
                    values = np.where(mask, values, math.nan)
            else:
                if out.dtype is not FLOAT64:
                    values = _values(values.tolist() if arrays else values, out.dtype)
                elif nulls[out.step] & out.bit:
                    # Only a row the kernel flagged is scanned (a Python sum per row, the NaN
                    # test before: 2 µs of the demo's 4 rows at batch 1 when batch 1 came
                    # here, 4.6 at batch 100).
                    values = [None if v != v else v for v in values]
                if not outcome.all_present:
                    values = [
                        v if s is PRESENT else None for v, s in zip(values, outcome.statuses, strict=True)
                    ]
            outcomes.append(outcome)
            gathered.append([values])

    def _run_row(
        self, request_cols: list[Sequence[Any]], outcomes: list[ViewOutcome], gathered: list[list[list[Any]]]
    ) -> None:
        """``_run`` for one entity row: each kernel's ``row`` entry called on the row's
        values, no matrix in or out (the demo's kernel, conversion + call + values out,
        1.28 -> 0.29 µs a request; ``Kernel.row``)."""
        results: list[tuple[float, ...]] = []  # per step: its features
        for step in self.steps:
            t0 = time.perf_counter()
            args: list[Any] = []
            for kind, a, b, test in step.sources:
                if kind == STORED:
                    args.append(gathered[a][b][0])
                elif kind == REQUEST:
                    args.append(request_cols[a][0])
                elif kind == DERIVED:
                    args.append(results[a][b])
                elif test is not None:
                    args.append(_strcmp(test, request_cols, gathered, 1)[0])
                else:
                    args.append(math.nan)
            if None in args:  # a null: NaN to the kernel (numba refuses None, at ~14 µs a refusal)
                args = [math.nan if v is None else v for v in args]
            results.append(step.kernel.row(*args))
            step.timer.observe(time.perf_counter() - t0)
        shared = self._shared(outcomes, 1)
        for out in self.outputs:
            outcome = shared[out.group]
            v: Any = results[out.step][out.row]
            if v != v or outcome.statuses[0] is not PRESENT:  # NaN, or an input not PRESENT
                v = None
            elif out.dtype is not FLOAT64:
                v = v != 0.0 if out.dtype is DType.BOOL else int(v)
            outcomes.append(outcome)
            gathered.append([[v]])

    def _shared(self, outcomes: list[ViewOutcome], n: int) -> list[ViewOutcome]:
        """Per group: its outcome, counted here (one stored view's outcome taken without a
        call or a list: 317 -> 121 ns per group)."""
        shared: list[ViewOutcome] = []
        for g in self.groups:
            deps = g.deps
            outcome = (
                outcomes[deps[0]] if len(deps) == 1 else _combine(g.view, [outcomes[s] for s in deps], n)
            )
            shared.append(outcome)
            _count(g, outcome)
        return shared


def _matrix(rows: list[Any], n: int) -> np.ndarray:
    """A kernel's input matrix from its rows: lists (None = null) or ndarray rows."""
    if n < 8 or not rows:  # a few values a row: numpy's conversion is quicker (1.0 µs, 1.2)
        return np.array(rows, dtype=np.float64) if rows else np.empty((0, n))
    inp = np.empty((len(rows), n))
    fmt = f"{n}d"
    for i, row in enumerate(rows):
        if type(row) is np.ndarray:  # an earlier kernel's output row
            inp[i] = row
            continue
        try:
            # struct reads each value as a C double (float, int, bool) straight into the
            # matrix, a row at a time: 4 rows of 100 floats in 3.7 µs against 7.5 for
            # np.array(rows).
            struct.pack_into(fmt, inp, i * n * 8, *row)  # type: ignore[arg-type]  # a buffer
        except struct.error:  # a null (None) in this row (numpy: NaN), or a short row
            inp[i] = np.array(row, dtype=np.float64)  # (4 rows of 100, one None: 6.7 µs)
    return inp


_PRESENT_CODE = np.uint8(PRESENT.value)


def _present(statuses: list[Status], n: int) -> np.ndarray:
    """Which rows are PRESENT, as a boolean array (statuses are small ints)."""
    present: np.ndarray = np.fromiter(statuses, np.uint8, n) == _PRESENT_CODE
    return present


def _strcmp(
    test: StrTest, request_cols: list[Sequence[Any]], gathered: list[list[list[Any]]], n: int
) -> list[float]:
    """A string comparison, row by row (strings never enter a kernel); null if either is."""

    def side(s: Source | str) -> Sequence[Any]:
        if isinstance(s, str):
            return [s] * n
        return request_cols[s.a] if s.kind == REQUEST else gathered[s.a][s.b]

    equal = test.equal
    return [
        math.nan if x is None or y is None else float((x == y) == equal)
        for x, y in zip(side(test.a), side(test.b), strict=True)
    ]


def _values(values: list[Any], dtype: DType) -> list[Any]:
    """A kernel output row of a bool or int64 feature as response values (NaN -> None)."""
    if dtype is DType.BOOL:
        return [None if v != v else v != 0.0 for v in values]
    # int64: the kernel truncated it and nulled what int64 cannot hold (ops.int64)
    return [None if v != v else int(v) for v in values]


def _combine(view: str, deps: list[ViewOutcome], n: int) -> ViewOutcome:
    """The outcome of outputs reading several stored views, or none (one view's outcome
    is shared as it is: encoders render it once)."""
    if not deps:
        return ViewOutcome(view, [PRESENT] * n, [None] * n, all_present=True)
    unavailable = any(d.unavailable for d in deps)
    if all(d.all_present for d in deps):
        ts = [None if None in t else min(t) for t in zip(*(d.event_ts_us for d in deps), strict=True)]
        return ViewOutcome(view, deps[0].statuses, ts, all_present=True, unavailable=unavailable)
    statuses = [max(s) for s in zip(*(d.statuses for d in deps), strict=True)]
    # the oldest of the rows read: a view without a row for this key has no timestamp
    ts = [
        min(t) if None not in t else min((v for v in t if v is not None), default=None)
        for t in zip(*(d.event_ts_us for d in deps), strict=True)
    ]
    return ViewOutcome(view, statuses, ts, all_present=False, unavailable=unavailable)


def _count(group: Group, outcome: ViewOutcome) -> None:
    view, columns = group.view, group.columns
    if outcome.all_present:
        group.present.inc(len(outcome.statuses) * columns)
        return
    for status in set(outcome.statuses):
        metrics.feature_values(view, status.name).inc(outcome.statuses.count(status) * columns)
