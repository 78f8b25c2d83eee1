"""What changes between two sets of definitions, and which changes are unsafe.

Incompatible changes would make stored rows or callers' keys mean something else:
a feature's dtype, a view's entity keys, an entity's key dtype, or the order of a
view's existing features (Redis rows are positional); or would make callers' joins
fail: a derived feature's dtype, a request field a derived feature or a feature service
newly needs (directly or through what it reads), a request field's dtype that accepts
less. They are refused
by ``apply`` unless forced. Adding or removing features of a view is allowed but flagged: rows
written for the old schema are served UNAVAILABLE until the view is re-materialized.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from featurestore.dag import post_order
from featurestore.model import (
    REQUEST_PREFIX,
    Definitions,
    DerivedView,
    DType,
    Entity,
    FeatureService,
    FeatureView,
)


@dataclass(frozen=True, slots=True)
class Change:
    op: str  # "+" added, "-" removed, "~" changed
    kind: str  # entity | feature_view | derived_view | feature_service
    name: str
    details: tuple[str, ...] = ()
    incompatible: tuple[str, ...] = ()
    rematerialize: bool = False

    def render(self) -> list[str]:
        head = f"{self.op} {self.kind} {self.name}"
        lines = [head + (": " + "; ".join(self.details) if self.details else "")]
        lines += [f"! {self.kind} {self.name}: {why} (incompatible)" for why in self.incompatible]
        if self.rematerialize:
            lines.append(f"  {self.kind} {self.name}: its row layout changed: re-materialize it")
        return lines


def diff(old: Definitions | None, new: Definitions) -> list[Change]:
    before = old or Definitions(new.project, {}, {}, {})
    out: list[Change] = []
    out += _objects("entity", before.entities, new.entities, _entity)
    out += _objects("feature_view", before.views, new.views, _view)
    needs = _request_needs(before), _request_needs(new)
    out += _new_request_needs(
        needs, _objects("derived_view", before.derived_views, new.derived_views, _derived)
    )
    out += _new_service_needs(
        before, new, needs, _objects("feature_service", before.services, new.services, _service)
    )
    return out


def render(changes: list[Change]) -> str:
    return "\n".join(line for c in changes for line in c.render())


def _objects(kind: str, old: Any, new: Any, compare: Any) -> list[Change]:
    out = []
    for name in sorted(new.keys() - old.keys()):
        out.append(Change("+", kind, name, _summary(new[name])))
    for name in sorted(old.keys() - new.keys()):
        out.append(Change("-", kind, name))
    for name in sorted(old.keys() & new.keys()):
        if old[name] != new[name]:
            out.append(compare(old[name], new[name]))
    return out


def _summary(obj: Any) -> tuple[str, ...]:
    if isinstance(obj, FeatureView):
        return (f"{len(obj.features)} features, keys {', '.join(obj.join_keys)}, store {obj.online_store}",)
    if isinstance(obj, DerivedView):
        return (f"{len(obj.features)} features computed at request time",)
    if isinstance(obj, FeatureService):
        return (f"{len(obj.features)} features",)
    if isinstance(obj, Entity):
        return (obj.dtype.value,)
    return ()


def _entity(a: Entity, b: Entity) -> Change:
    details, bad = [], []
    if a.dtype != b.dtype:
        bad.append(f"key dtype {a.dtype.value} -> {b.dtype.value}")
    if a.description != b.description or a.tags != b.tags:
        details.append("description/tags")
    return Change("~", "entity", a.name, tuple(details), tuple(bad))


def _view(a: FeatureView, b: FeatureView) -> Change:
    details: list[str] = []
    bad: list[str] = []
    if a.join_keys != b.join_keys:
        bad.append(f"entity keys {', '.join(a.join_keys)} -> {', '.join(b.join_keys)}")
    elif tuple(e.dtype for e in a.entities) != tuple(e.dtype for e in b.entities):
        bad.append("entity key dtypes changed")
    old_f = {f.name: f for f in a.features}
    new_f = {f.name: f for f in b.features}
    added = [n for n in new_f if n not in old_f]
    removed = [n for n in old_f if n not in new_f]
    if added:
        details.append("features +" + ", +".join(added))
    if removed:
        details.append("features -" + ", -".join(removed))
    for name in old_f.keys() & new_f.keys():
        fa, fb = old_f[name], new_f[name]
        if fa.dtype != fb.dtype:
            bad.append(f"feature {name} dtype {fa.dtype.value} -> {fb.dtype.value}")
        elif fa != fb:
            details.append(f"feature {name} description/tags")
    kept_old = [n for n in old_f if n in new_f]
    kept_new = [n for n in new_f if n in old_f]
    if kept_old != kept_new and a.stream is None and b.stream is None:
        bad.append("existing features reordered (stored rows are positional)")
    if a.stream != b.stream:  # a new tile layout: fresh tiles and offsets, the topic re-read
        details.append("stream view definition changed (its tiles start afresh from the topic)")
    for field, fmt in (
        ("ttl_seconds", _ttl),
        ("online_store", str),
        ("batch_source", _source),
        ("upstream", list),
    ):
        va, vb = getattr(a, field), getattr(b, field)
        if va != vb:
            details.append(f"{field.removesuffix('_seconds')} {fmt(va)} -> {fmt(vb)}")
    for field in ("owner", "description", "tags"):
        if getattr(a, field) != getattr(b, field):
            details.append(field)
    return Change(
        "~",
        "feature_view",
        a.name,
        tuple(sorted(details)),
        tuple(bad),
        rematerialize=bool(added or removed) and b.stream is None,  # a stream view's processor refills it
    )


def _derived(a: DerivedView, b: DerivedView) -> Change:
    """Derived values are never stored: a new expression is compatible (lineage gives
    the feature a new version); a dtype change is not (callers read the old type)."""
    details: list[str] = []
    bad: list[str] = []
    old_f = {f.name: f for f in a.features}
    new_f = {f.name: f for f in b.features}
    added = [n for n in new_f if n not in old_f]
    removed = [n for n in old_f if n not in new_f]
    if added:
        details.append("features +" + ", +".join(added))
    if removed:
        details.append("features -" + ", -".join(removed))
    for name in [n for n in old_f if n in new_f]:
        fa, fb = old_f[name], new_f[name]
        if fa.dtype != fb.dtype:
            bad.append(f"feature {name} dtype {fa.dtype.value} -> {fb.dtype.value}")
        if (fa.expression, fa.function, fa.args) != (fb.expression, fb.function, fb.args):
            was = fa.expression or f"{fa.function}({', '.join(fa.args)})"
            now = fb.expression or f"{fb.function}({', '.join(fb.args)})"
            details.append(f"feature {name}: {was} -> {now}")
        elif (fa.description, fa.tags) != (fb.description, fb.tags):
            details.append(f"feature {name} description/tags")
    if a.inputs != b.inputs:
        details.append("inputs")
    if a.request_schema != b.request_schema:
        details.append("request_schema")
        declared = {r.name: r.dtype for r in a.request_schema}
        for r in b.request_schema:
            if (
                r.name in declared
                and (declared[r.name], r.dtype) not in _WIDER
                and declared[r.name] != r.dtype
            ):
                old_dtype = declared[r.name].value
                bad.append(
                    f"request field {r.name} dtype {old_dtype} -> {r.dtype.value} (callers sending {old_dtype} get 400s)"
                )
    for field in ("owner", "description", "tags"):
        if getattr(a, field) != getattr(b, field):
            details.append(field)
    return Change("~", "derived_view", a.name, tuple(details), tuple(bad))


_WIDER = {(DType.INT64, DType.FLOAT64)}  # a float64 request field takes integers too


Needs = dict[str, frozenset[str]]  # derived feature id -> its request fields, transitively


def _new_request_needs(needs: tuple[Needs, Needs], changes: list[Change]) -> list[Change]:
    """A derived feature that now needs a request field it did not (directly or through
    what it reads) would answer 400 to callers that do not send it: incompatible, on
    the view of the feature (a view that did not change itself gets a change for it)."""
    before, after = needs
    why: dict[str, list[str]] = {}
    for fid, fields in after.items():
        added = sorted(fields - before[fid]) if fid in before else []
        if added:
            view, _, feature = fid.partition(":")
            need = ", ".join(f"request_data.{f}" for f in added)
            why.setdefault(view, []).append(
                f"feature {feature} now needs {need} (callers that do not send it get 400s)"
            )
    return _with_reasons("derived_view", changes, why)


def _new_service_needs(
    old: Definitions, new: Definitions, needs: tuple[Needs, Needs], changes: list[Change]
) -> list[Change]:
    """A feature service that now needs a request field it did not, through a feature it
    gained (a derived view it lists whole gains one too) or one whose needs grew: its
    callers that do not send the field would get 400s. Incompatible, on the service."""
    why: dict[str, list[str]] = {}
    for name in sorted(old.services.keys() & new.services.keys()):
        was = _service_needs(old.services[name], needs[0])
        now = _service_needs(new.services[name], needs[1])
        for field in [f for f in now if f not in was]:
            why.setdefault(name, []).append(
                f"now needs request_data.{field} (through {now[field]}; callers that do not send it get 400s)"
            )
    return _with_reasons("feature_service", changes, why)


def _service_needs(service: FeatureService, needs: Needs) -> dict[str, str]:
    """The request fields a service's features need, each with the first feature needing it."""
    out: dict[str, str] = {}
    for ref in service.features:
        for field in sorted(needs.get(str(ref), ())):
            out.setdefault(field, str(ref))
    return out


def _with_reasons(kind: str, changes: list[Change], why: dict[str, list[str]]) -> list[Change]:
    """``changes`` with ``why``'s reasons as incompatibilities of the objects they name
    (an object that did not change itself gets a change for them)."""
    out = [replace(c, incompatible=(*c.incompatible, *why.pop(c.name, ()))) for c in changes]
    out += [Change("~", kind, name, (), tuple(reasons)) for name, reasons in why.items()]
    return out


def _request_needs(d: Definitions) -> Needs:
    """Every derived feature's request fields, transitively; each feature once, after
    what it reads (iterative: a chain may be deeper than Python's recursion limit)."""
    deps = {f"{v.name}:{f.name}": f.depends_on for v in d.derived_views.values() for f in v.features}
    out: Needs = {}
    for fid in post_order(deps, lambda fid: [dep for dep in deps[fid] if dep in deps]):
        fields = {dep.removeprefix(REQUEST_PREFIX) for dep in deps[fid] if dep.startswith(REQUEST_PREFIX)}
        for dep in deps[fid]:
            if dep in deps:
                fields |= out[dep]
        out[fid] = frozenset(fields)
    return {fid: out[fid] for fid in deps}  # in the definitions' order: reasons are listed in it


def _service(a: FeatureService, b: FeatureService) -> Change:
    old = [str(r) for r in a.features]
    new = [str(r) for r in b.features]
    details = []
    plus = [r for r in new if r not in old]
    minus = [r for r in old if r not in new]
    if plus:
        details.append("+" + ", +".join(plus))
    if minus:
        details.append("-" + ", -".join(minus))
    if not plus and not minus and old != new:
        details.append("feature order")
    for field in ("owner", "description", "tags"):
        if getattr(a, field) != getattr(b, field):
            details.append(field)
    return Change("~", "feature_service", a.name, tuple(details))


def _ttl(v: int | None) -> str:
    if v is None:
        return "none"
    for unit, secs in (("d", 86400), ("h", 3600), ("m", 60)):
        if v % secs == 0:
            return f"{v // secs}{unit}"
    return f"{v}s"


def _source(v: Any) -> str:
    return "none" if v is None else v.uri
