"""Join plans: which views to read, which feature columns, and the output order.

Resolving feature references against a snapshot is the only place a request's
feature list is interpreted. Plans are cached per snapshot (``ServingState``), so a
steady stream of identical requests resolves nothing after the first.
"""

from __future__ import annotations

import sys
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, NamedTuple

from featurestore.definitions.snapshot import RegistrySnapshot
from featurestore.derived.compiler import Kernel
from featurestore.derived.evaluate import DerivedPlan
from featurestore.derived.resolve import plan_derived
from featurestore.errors import InvalidArgument, NotFound, Unavailable, clipped, quoted
from featurestore.model import Definitions, DerivedView, DType, FeatureRef, FeatureView, parse_feature_ref
from featurestore.streaming.tiles import max_read_keys


@dataclass(frozen=True, slots=True)
class ViewPlan:
    view: FeatureView
    features: tuple[int, ...]  # indices into view.features, the columns read
    served: int = -1  # how many of them are returned (the rest only feed derived features); -1: all
    # The most distinct keys one request may read of the view: a stream view's windows are
    # assembled from every tile of its longest window (streaming/tiles.py, max_read_keys)
    max_keys: int = sys.maxsize

    @property
    def served_columns(self) -> int:
        return len(self.features) if self.served < 0 else self.served


@dataclass(frozen=True, slots=True)
class OutputColumn:
    name: str
    dtype: DType
    view_slot: int  # index into JoinPlan.views; past its end: the derived outputs, in order
    column_slot: int  # index into JoinPlan.views[view_slot].features (0 for a derived output)


@dataclass(frozen=True, slots=True, eq=False)  # identity hash: plans key per-request aggregates
class JoinPlan:
    views: tuple[ViewPlan, ...]
    outputs: tuple[OutputColumn, ...]  # in request order
    entities: frozenset[str]  # entity columns the request must carry
    refs: tuple[FeatureRef, ...]
    service: str | None
    derived: DerivedPlan | None = None  # the derived features asked for (docs/definitions.md)
    # The output names, for the one per-request check a cached plan cannot make: that
    # none equals an entity column the request carries (entity_clash).
    names: frozenset[str] = frozenset()


class _Reads:
    """The stored views and columns a plan reads, each once."""

    def __init__(self) -> None:
        self.slots: dict[str, int] = {}
        self.views: list[FeatureView] = []
        self.columns: list[list[int]] = []
        self.where: dict[tuple[str, int], int] = {}

    def column(self, view: FeatureView, fi: int) -> tuple[int, int]:
        slot = self.slots.get(view.name)
        if slot is None:
            slot = self.slots[view.name] = len(self.views)
            self.views.append(view)
            self.columns.append([])
        col = self.where.get((view.name, fi))
        if col is None:
            col = self.where[(view.name, fi)] = len(self.columns[slot])
            self.columns[slot].append(fi)
        return slot, col


def resolve(
    defs: Definitions,
    features: Sequence[str],
    service: str | None,
    full_feature_names: bool,
    kernels: Mapping[str, Kernel] | None = None,
) -> JoinPlan:
    if features and service:
        raise InvalidArgument("give either 'features' or 'feature_service', not both")
    if service:
        svc = defs.services.get(service)
        if svc is None:
            raise NotFound(
                f"unknown feature service {quoted(service)}", details=[{"feature_service": clipped(service)}]
            )
        refs = list(svc.features)
    elif features:
        refs = [_parse(defs, text) for text in features]
    else:
        raise InvalidArgument("empty request: name 'features' or a 'feature_service'")

    reads = _Reads()
    outputs: list[OutputColumn] = []
    seen_refs: set[FeatureRef] = set()
    names: dict[str, FeatureRef] = {}
    derived: list[tuple[int, FeatureRef]] = []  # (position in outputs, ref)
    for ref in refs:
        if ref in seen_refs:
            raise InvalidArgument(f"feature {ref} is requested twice", details=[{"feature": str(ref)}])
        seen_refs.add(ref)
        name = f"{ref.view}__{ref.feature}" if full_feature_names else ref.feature
        if name in names:
            raise InvalidArgument(
                f"the full names of {names[name]} and {ref} are both {name!r}: "
                "join them without full_feature_names (their short names differ), or ask for one of them"
                if full_feature_names  # (view a__b's c, view a's b__c)
                else f"feature name {name!r} is in both {names[name]} and {ref}; set full_feature_names",
                details=[{"feature": str(names[name])}, {"feature": str(ref)}],
            )
        names[name] = ref
        view = defs.views.get(ref.view)
        if view is None:  # derived: placed once the stored columns it reads are known
            derived.append((len(outputs), ref))
            outputs.append(OutputColumn(name, DType.FLOAT64, -1, 0))
            continue
        fi = view.feature_index(ref.feature)
        assert fi is not None  # _parse and service validation guarantee it
        outputs.append(OutputColumn(name, view.features[fi].dtype, *reads.column(view, fi)))
    derived_plan = _plan_derived(defs, kernels, derived, outputs, reads) if derived else None
    views = reads.views
    view_features = reads.columns

    entities = frozenset(k for v in views for k in v.join_keys)
    clash = entities & names.keys()
    if clash:
        name = min(clash)
        raise InvalidArgument(
            f"feature name {name!r} equals an entity column; set full_feature_names",
            details=[{"feature": str(names[name])}],
        )
    return JoinPlan(
        views=tuple(
            ViewPlan(
                v,
                tuple(f),
                sum(1 for o in outputs if o.view_slot == slot),
                sys.maxsize if v.stream is None else max_read_keys(v),
            )
            for slot, (v, f) in enumerate(zip(views, view_features, strict=True))
        ),
        outputs=tuple(outputs),
        entities=entities,
        refs=tuple(refs),
        service=service or None,
        derived=derived_plan,
        names=frozenset(names),
    )


def entity_clash(plan: JoinPlan, entities: Iterable[str]) -> InvalidArgument:
    """The error for a request whose entity column has the name of an output column.

    ``resolve`` refuses a feature named as an entity of the views the plan reads; the
    request may carry other entity columns too (they are echoed first in the result), and
    a plan is cached without them, so the join checks ``plan.names.isdisjoint(entities)``
    on every request and raises this when they meet: two result columns of one name would
    leave a client keeping one of them."""
    name = min(plan.names.intersection(entities))
    ref = next(r for o, r in zip(plan.outputs, plan.refs, strict=True) if o.name == name)
    fix = (  # a full name (view a's x as entity a__x) clashes as it is
        "set full_feature_names, or leave the entity column out"
        if name == ref.feature
        else "leave the entity column out"
    )
    return InvalidArgument(
        f"feature {ref} is named {name!r}, as the request's entity column {name!r}; {fix}",
        details=[{"feature": str(ref), "entity": name}],
    )


def _plan_derived(
    defs: Definitions,
    kernels: Mapping[str, Kernel] | None,
    derived: list[tuple[int, FeatureRef]],
    outputs: list[OutputColumn],
    reads: _Reads,
) -> DerivedPlan:
    if kernels is None or any(ref.view not in kernels for _, ref in derived):
        raise Unavailable("derived features are not compiled on this server")

    def column_of(ref: FeatureRef) -> tuple[int, int]:
        fi = defs.views[ref.view].feature_index(ref.feature)
        assert fi is not None
        return reads.column(defs.views[ref.view], fi)

    plan = plan_derived(defs, kernels, [ref for _, ref in derived], column_of)
    for j, (pos, ref) in enumerate(derived):
        dtype = defs.dtype_of(ref)
        assert dtype is not None
        outputs[pos] = OutputColumn(outputs[pos].name, dtype, len(reads.views) + j, 0)
    return plan


def _parse(defs: Definitions, text: str) -> FeatureRef:
    if not isinstance(text, str):
        raise InvalidArgument(f"feature references are strings, got {quoted(text)}")
    ref = parse_feature_ref(text)
    if ref is None:
        raise InvalidArgument(
            f"{quoted(text)} is not a feature reference; use 'view:feature'",
            details=[{"feature": clipped(text)}],
        )
    view: FeatureView | DerivedView | None = defs.views.get(ref.view) or defs.derived_views.get(ref.view)
    if view is None:
        raise NotFound(
            f"unknown feature view {quoted(ref.view)} (in {quoted(text)})",
            details=[{"feature_view": clipped(ref.view)}],
        )
    if view.feature_index(ref.feature) is None:
        raise NotFound(
            f"feature view {ref.view!r} has no feature {quoted(ref.feature)}",
            details=[{"feature": clipped(text)}],
        )
    return ref


_MAX_CACHED_PLANS = 4096
PlanKey = tuple[tuple[str, ...], str | None, bool]


class CanaryRoute(NamedTuple):
    share: float
    entity: str  # whose key picks the side ("" = every entity of the first row)
    state: ServingState  # the candidate's own state


class ServingState:
    """Everything a join reads from the registry, swapped as one reference.

    A request takes ``engine.state`` once and uses only that object, so a registry
    swap mid-request cannot tear it: it finishes on the snapshot it started with.
    ``canaries`` maps a feature service to its canary route.
    """

    __slots__ = ("_plans", "canaries", "data_versions", "kernels", "snapshot")

    def __init__(
        self,
        snapshot: RegistrySnapshot,
        data_versions: Mapping[str, int] | None = None,
        canaries: Mapping[str, CanaryRoute] | None = None,
        plans: dict[PlanKey, JoinPlan] | None = None,
        kernels: Mapping[str, Kernel] | None = None,
    ) -> None:
        self.snapshot = snapshot
        self.data_versions: Mapping[str, int] = MappingProxyType(dict(data_versions or {}))
        self.canaries: Mapping[str, CanaryRoute] = MappingProxyType(dict(canaries or {}))
        self._plans: dict[PlanKey, JoinPlan] = plans if plans is not None else {}
        # Derived views' kernels, compiled before this state was built (never on a request).
        self.kernels: Mapping[str, Kernel] = MappingProxyType(dict(kernels or {}))

    @property
    def version(self) -> int:
        return self.snapshot.version

    @property
    def definitions(self) -> Definitions:
        return self.snapshot.definitions

    def plan(self, features: tuple[str, ...], service: str | None, full_feature_names: bool) -> JoinPlan:
        key = (features, service, full_feature_names)
        plan = self._plans.get(key)
        if plan is None:
            plan = resolve(self.snapshot.definitions, features, service, full_feature_names, self.kernels)
            if len(self._plans) >= _MAX_CACHED_PLANS:
                self._plans.clear()
            self._plans[key] = plan
        return plan

    def successor(
        self,
        snapshot: RegistrySnapshot,
        data_versions: Mapping[str, int],
        canaries: Mapping[str, CanaryRoute],
        kernels: Mapping[str, Kernel] | None = None,
    ) -> ServingState:
        """The next state; plans (and kernels) carry over when the snapshot is the same:
        its version and its fingerprint (a snapshot rewritten in place under its number
        has other definitions, and plans resolved against the old ones would read them
        with the old columns)."""
        same = same_snapshot(snapshot, self.snapshot)
        plans = self._plans if same else None
        return ServingState(snapshot, data_versions, canaries, plans, self.kernels if same else kernels)

    def same_as(self, other: ServingState) -> bool:
        """Whether swapping ``other`` for this would change nothing served. Snapshots are
        compared by fingerprint too: after a registry reset (or a restore re-applied) the
        same version numbers name other definitions, which must be swapped in."""

        def routes(state: ServingState) -> dict[str, tuple[object, ...]]:
            return {
                k: (v.share, v.entity, v.state.version, v.state.snapshot.fingerprint)
                for k, v in state.canaries.items()
            }

        return (
            same_snapshot(self.snapshot, other.snapshot)
            and dict(self.data_versions) == dict(other.data_versions)
            and routes(self) == routes(other)
        )


def same_snapshot(a: RegistrySnapshot, b: RegistrySnapshot) -> bool:
    """One snapshot, not merely one version number (a rewrite in place keeps it)."""
    return a.version == b.version and a.fingerprint == b.fingerprint


def canary_route(state: ServingState, service: str, entities: Mapping[str, Sequence[Any]]) -> ServingState:
    """The candidate's state when this request's entity falls in the canary share.

    The bucket is a stable hash (crc32) of the first row's key of the canary's routing
    entity, so an entity stays on one side for the canary's lifetime, in every process,
    whatever other entities a request lists with it. A whole request is served from one
    version: rows of one response never mix definitions.
    """
    route = state.canaries.get(service)
    if route is None:
        return state
    names = (route.entity,) if route.entity else sorted(entities)
    try:
        key = "|".join(f"{name}={entities[name][0]}" for name in names)
    except (KeyError, IndexError, TypeError):
        return state  # missing or malformed entities: validation reports it
    bucket = zlib.crc32(key.encode()) / 4294967296.0
    return route.state if bucket < route.share else state
