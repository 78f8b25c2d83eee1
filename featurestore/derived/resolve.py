"""Resolving requested derived features into a ``DerivedPlan`` (once per snapshot and
request shape; the plan is cached with the join plan): which kernels run in which
order, where each kernel input row comes from, which request fields are needed and
which stored views each output's status depends on."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

from featurestore.dag import post_order
from featurestore.derived import language as lang
from featurestore.derived.compiler import Kernel
from featurestore.derived.evaluate import (
    DERIVED,
    MISSING,
    REQUEST,
    STORED,
    STRCMP,
    ColumnOf,
    DerivedPlan,
    Group,
    Output,
    Source,
    Step,
    StrTest,
)
from featurestore.derived.request import needed
from featurestore.model import REQUEST_PREFIX, Definitions, FeatureRef, RequestField


def plan_derived(
    defs: Definitions, kernels: Mapping[str, Kernel], refs: Sequence[FeatureRef], column_of: ColumnOf
) -> DerivedPlan:
    """What computing ``refs`` (derived features) takes; ``column_of`` reads a stored
    column into the join and says where it lands."""
    need = _Needs(defs)
    for ref in refs:
        need.visit(str(ref))
    order = need.view_order()
    slot_of = {view: i for i, view in enumerate(order)}
    steps = tuple(
        Step(view, kernels[view], _sources(defs, kernels[view], view, need, slot_of, column_of))
        for view in order
    )
    outputs = []
    groups: dict[tuple[str, tuple[int, ...]], int] = {}  # (view, deps) -> outputs sharing it
    for ref in refs:
        deps = tuple(sorted({column_of(r)[0] for r in defs.stored_inputs(ref)}))
        view = defs.derived_views[ref.view]
        row = view.feature_index(ref.feature)
        assert row is not None
        group = list(groups).index((ref.view, deps)) if (ref.view, deps) in groups else len(groups)
        groups[(ref.view, deps)] = groups.get((ref.view, deps), 0) + 1
        outputs.append(Output(slot_of[ref.view], row, view.features[row].dtype, group))
    shared = tuple(Group(view, deps, count) for (view, deps), count in groups.items())
    request = tuple(needed(field, by) for field, by in need.request.values())
    return DerivedPlan(steps, tuple(outputs), request, shared)


class _Needs:
    """The transitive closure of the requested derived features."""

    def __init__(self, defs: Definitions) -> None:
        self.defs = defs
        self.derived: dict[str, None] = {}  # feature ids
        self.stored: dict[str, None] = {}
        # request_data is one namespace: the parser keeps a field's dtype equal across views
        self.request: dict[str, tuple[RequestField, str]] = {}  # name -> (field, a feature needing it)

    def visit(self, fid: str) -> None:
        """Add ``fid`` and what it reads, depth first in the order of each feature's
        dependencies (request fields are checked, and named in errors, in that order);
        iterative (a chain may be thousands deep), each derived feature once however
        many paths reach it."""
        if fid in self.derived:
            return
        self.derived[fid] = None
        stack = [self._reads(fid)]
        while stack:
            for dep in stack[-1]:
                if dep not in self.derived:
                    self.derived[dep] = None
                    stack.append(self._reads(dep))
                    break
            else:
                stack.pop()

    def _reads(self, fid: str) -> Iterator[str]:
        """Record the request fields and stored features ``fid`` reads, as they come;
        yield the derived features it reads, for the walk to enter."""
        view_name, _, feature = fid.partition(":")
        view = self.defs.derived_views[view_name]
        i = view.feature_index(feature)
        assert i is not None
        for dep in view.features[i].depends_on:
            if dep.startswith(REQUEST_PREFIX):
                name = dep.removeprefix(REQUEST_PREFIX)
                field = next(r for r in view.request_schema if r.name == name)
                self.request.setdefault(name, (field, fid))
            elif dep.partition(":")[0] in self.defs.derived_views:
                yield dep
            else:
                self.stored[dep] = None

    def view_order(self) -> list[str]:
        views = {fid.partition(":")[0]: None for fid in self.derived}
        return [v for v in _topological(self.defs) if v in views]


def _topological(defs: Definitions) -> list[str]:
    """Derived views, each after the derived views it reads (the parser refused cycles)."""
    views = defs.derived_views
    return post_order(sorted(views), lambda name: [r.view for _, r in views[name].inputs if r.view in views])


def _sources(
    defs: Definitions,
    kernel: Kernel,
    view_name: str,
    need: _Needs,
    slot_of: Mapping[str, int],
    column_of: ColumnOf,
) -> tuple[Source, ...]:
    view = defs.derived_views[view_name]
    inputs = dict(view.inputs)
    fields = list(need.request)

    def named(name: str) -> Source:
        ref = inputs.get(name)
        if ref is None:  # a request field
            return Source(REQUEST, fields.index(name)) if name in need.request else Source(MISSING)
        if ref.view in defs.derived_views:
            if str(ref) not in need.derived:
                return Source(MISSING)
            row = defs.derived_views[ref.view].feature_index(ref.feature)
            assert row is not None
            return Source(DERIVED, slot_of[ref.view], row)
        if str(ref) not in need.stored:
            return Source(MISSING)
        return Source(STORED, *column_of(ref))

    def side(s: lang.Name | lang.StrConst) -> Source | str:
        return s.value if isinstance(s, lang.StrConst) else named(s.name)

    out = []
    for k in kernel.spec.inputs:
        if k.compare is None:
            out.append(named(k.name))
            continue
        a, b = side(k.compare.a), side(k.compare.b)
        if any(isinstance(s, Source) and s.kind == MISSING for s in (a, b)):
            out.append(Source(MISSING))
        else:
            out.append(Source(STRCMP, test=StrTest(k.compare.op == "==", a, b)))
    return tuple(out)
