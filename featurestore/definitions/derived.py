"""``derived_views`` in a definitions file: parsing, name resolution, type checks, cycles.

A derived view names its inputs (``local_name: view:feature``, or a list of refs whose
local names are the feature names), the request fields it reads (``request_schema``)
and its features, each an expression of the language (``featurestore.derived.language``)
or a trusted ``module:function`` of named ``args``. Every error names the file, the
object and the field, e.g.
``features.yaml: derived_views[user_derived].features[value_score].expression: ...``.
The snapshot stores derived views in this same form, so loading one reuses this code.
"""

from __future__ import annotations

import importlib
import inspect
import keyword
import math
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from featurestore.dag import find_cycle
from featurestore.definitions.strict_yaml import NonFiniteText
from featurestore.derived.language import (
    FUNCTIONS,
    TYPE_OF,
    ExpressionError,
    Node,
    Type,
    function_call,
    names_used,
    parse_expression,
)
from featurestore.model import (
    REQUEST_PREFIX,
    DerivedFeature,
    DerivedView,
    DType,
    FeatureRef,
    FeatureView,
    RequestField,
    parse_feature_ref,
)

if TYPE_CHECKING:
    from featurestore.definitions.parser import _Parser

FEATURE_DTYPES = (DType.FLOAT64, DType.INT64, DType.BOOL)
REQUEST_DTYPES = (DType.FLOAT64, DType.INT64, DType.BOOL, DType.STRING)
_TARGET = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_]\w*$")
# Names an expression could not refer to: its functions and its constants.
_RESERVED = {*FUNCTIONS, "true", "false"}
# Nor Python's keywords (``class``, ``in``, ``None``: the expression is parsed as Python):
# refused as input and request-field names in a definitions file, the names expressions
# use; not for a derived feature's own name (reached as ``view:feature``, never in an
# expression) nor in a stored snapshot (what an earlier version accepted must still load).
_KEYWORDS = frozenset(keyword.kwlist)
_NAME_AUTHORED = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}\Z")
_NAME_STORED = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}$")


def parse_derived_views(
    p: _Parser,
    raw: list[Any],
    views: Mapping[str, FeatureView],
    *,
    check_functions: bool = True,
) -> dict[str, DerivedView]:
    """Parse every derived view, then resolve and type-check them against each other."""
    reserved = views.get(REQUEST_PREFIX[:-1]) if p.authoring else None  # (since 2026-12-07)
    if reserved is not None:  # no derived view could read it: request:NAME is a request field
        kind = "feature_views" if reserved.stream is None else "stream_views"
        raise p.fail(f"{kind}[{reserved.name}].name", "'request' names request fields (request:NAME)")
    shells: dict[str, DerivedView] = {}
    for i, obj in enumerate(raw):
        view = _shell(p, obj, i)
        if view.name in shells:
            raise p.fail(f"derived_views[{view.name}]", "defined twice")
        if view.name in views:
            raise p.fail(f"derived_views[{view.name}]", "a feature view has the same name")
        if view.name + ":" == REQUEST_PREFIX:
            raise p.fail(f"derived_views[{view.name}].name", "'request' names request fields (request:NAME)")
        shells[view.name] = view
    out = {name: _resolve(p, view, views, shells, check_functions) for name, view in shells.items()}
    _check_cycles(p, out)
    _check_request_fields(p, out)
    return out


def _check_request_fields(p: _Parser, views: Mapping[str, DerivedView]) -> None:
    """``request_data`` is one namespace per join: a field name means one dtype."""
    seen: dict[str, tuple[str, DType]] = {}
    for v in views.values():
        for r in v.request_schema:
            first = seen.setdefault(r.name, (v.name, r.dtype))
            if first[1] is not r.dtype:
                raise p.fail(
                    f"derived_views[{v.name}].request_schema[{r.name}].dtype",
                    f"{r.dtype.value} here, {first[1].value} in derived view {first[0]!r}: "
                    "request_data fields are shared by every view of a join",
                )


def _shell(p: _Parser, obj: Any, i: int) -> DerivedView:
    """One derived view as written: fields checked, names not resolved yet."""
    where = f"derived_views[{i}]"
    allowed = {"name", "inputs", "request_schema", "features", "tags", "owner", "description"}
    m = p.mapping(obj, where, allowed, {"name", "features"})
    name = p.name(m, where)
    where = f"derived_views[{name}]"
    inputs = _inputs(p, m.get("inputs"), f"{where}.inputs")
    request = _request_schema(p, m.get("request_schema") or [], f"{where}.request_schema")
    raw_features = m["features"]
    if not isinstance(raw_features, list) or not raw_features:
        raise p.fail(f"{where}.features", "expected a non-empty list of features")
    features = [_feature(p, f, f"{where}.features[{j}]", where) for j, f in enumerate(raw_features)]
    for j, f in enumerate(features):
        if any(g.name == f.name for g in features[:j]):
            raise p.fail(f"{where}.features[{f.name}]", "defined twice")
    taken: dict[str, str] = {}
    for kind, names in (
        ("an input", [n for n, _ in inputs]),
        ("a request field", [r.name for r in request]),
        ("a feature", [f.name for f in features]),
    ):
        for n in names:
            if n in taken:
                field = (
                    "features"
                    if kind == "a feature"
                    else "inputs"
                    if kind == "an input"
                    else "request_schema"
                )
                raise p.fail(f"{where}.{field}", f"{n!r} is both {taken[n]} and {kind} of the view")
            taken[n] = kind
    return DerivedView(
        name=name,
        # by name, as a snapshot stores them (a mapping): the file's order is no change
        inputs=tuple(sorted(inputs, key=lambda item: item[0])),
        request_schema=tuple(request),
        features=tuple(features),
        tags=p.tags(m, where),
        owner=p.string(m, "owner", where),
        description=p.string(m, "description", where),
    )


def _local_name(p: _Parser, name: Any, where: str, named_in_expressions: bool = True) -> str:
    # \Z: $ took a name ending in a newline (refused since 2026-12-07; a snapshot applied
    # before loads as it did: _Parser.authoring)
    if (
        not isinstance(name, str)
        or not re.match(_NAME_AUTHORED if p.authoring else _NAME_STORED, name)
        or name in _RESERVED
    ):
        raise p.fail(where, f"invalid name {name!r}: use letters, digits and '_', not a function name")
    if named_in_expressions and p.check_functions and name in _KEYWORDS:
        raise p.fail(where, f"invalid name {name!r}: a Python keyword, which no expression can name")
    return name


def _inputs(p: _Parser, raw: Any, where: str) -> list[tuple[str, FeatureRef]]:
    if raw is None:
        return []
    if isinstance(raw, list):
        pairs = [(None, r) for r in raw]
    elif isinstance(raw, dict):
        pairs = list(raw.items())
    else:
        raise p.fail(where, "expected a mapping of name to 'view:feature', or a list of 'view:feature'")
    out: list[tuple[str, FeatureRef]] = []
    for local, text in pairs:
        ref = parse_feature_ref(text) if isinstance(text, str) else None
        if ref is None:
            raise p.fail(where, f"{text!r} is not a feature reference 'view:feature'")
        name = _local_name(p, ref.feature if local is None else local, where)
        if any(name == n for n, _ in out):
            raise p.fail(where, f"the name {name!r} is used twice (give inputs distinct names)")
        out.append((name, ref))
    return out


def _request_schema(p: _Parser, raw: Any, where: str) -> list[RequestField]:
    if not isinstance(raw, list):
        raise p.fail(where, "expected a list of {name, dtype}")
    out: list[RequestField] = []
    for i, obj in enumerate(raw):
        m = p.mapping(obj, f"{where}[{i}]", {"name", "dtype", "description"}, {"name", "dtype"})
        name = _local_name(p, m.get("name"), f"{where}[{i}].name")
        at = f"{where}[{name}]"
        dtype = p.dtype(m, at)
        if dtype not in REQUEST_DTYPES:
            raise p.fail(f"{at}.dtype", f"request fields are {', '.join(d.value for d in REQUEST_DTYPES)}")
        if any(r.name == name for r in out):
            raise p.fail(at, "defined twice")
        out.append(RequestField(name, dtype, p.string(m, "description", at)))
    return out


def _feature(p: _Parser, obj: Any, where: str, view_where: str) -> DerivedFeature:
    allowed = {"name", "dtype", "expression", "function", "args", "description", "tags"}
    m = p.mapping(obj, where, allowed, {"name", "dtype"})
    name = _local_name(p, m.get("name"), f"{where}.name", named_in_expressions=False)
    where = f"{view_where}.features[{name}]"
    dtype = p.dtype(m, where)
    if dtype not in FEATURE_DTYPES:
        raise p.fail(f"{where}.dtype", f"derived features are {', '.join(d.value for d in FEATURE_DTYPES)}")
    raw = m.get("expression")
    if isinstance(raw, NonFiniteText) or (isinstance(raw, float) and not math.isfinite(raw)):
        raise p.fail(
            f"{where}.expression",
            f"the constant {raw} is not a finite number (YAML reads it unquoted as a number)",
        )
    if isinstance(raw, bool):  # YAML reads `expression: true` (or 1, 2.5) as a scalar, not text
        m = {**m, "expression": "true" if raw else "false"}
    elif isinstance(raw, int | float):
        m = {**m, "expression": repr(raw)}
    expression = p.string(m, "expression", where)
    function = p.string(m, "function", where)
    if bool(expression) == bool(function):
        raise p.fail(where, "give exactly one of 'expression' or 'function' (a trusted 'module:function')")
    args = tuple(p.str_list(m, "args", where))
    if args and not function:
        raise p.fail(f"{where}.args", "'args' goes with 'function'")
    if function and not _TARGET.match(function):
        raise p.fail(f"{where}.function", f"{function!r} is not 'module:function'")
    return DerivedFeature(
        name, dtype, p.string(m, "description", where), p.tags(m, where), expression, function, args
    )


def _resolve(
    p: _Parser,
    view: DerivedView,
    views: Mapping[str, FeatureView],
    derived: Mapping[str, DerivedView],
    check_functions: bool,
) -> DerivedView:
    """Inputs must name existing features; every feature must type-check."""
    where = f"derived_views[{view.name}]"
    names: dict[str, Type] = {}
    resolved: dict[str, str] = {}
    for local, ref in view.inputs:
        if ref.view == view.name:
            raise p.fail(f"{where}.inputs", f"{ref} is in the view itself: use {ref.feature!r} directly")
        if ref.view + ":" == REQUEST_PREFIX:
            raise p.fail(
                f"{where}.inputs",
                f"{ref}: 'request:NAME' means a request field; declare it in request_schema",
            )
        target: FeatureView | DerivedView | None = views.get(ref.view) or derived.get(ref.view)
        if target is None:
            raise p.fail(f"{where}.inputs", f"unknown feature view {ref.view!r} in {str(ref)!r}")
        i = target.feature_index(ref.feature)
        if i is None:
            raise p.fail(f"{where}.inputs", f"view {ref.view!r} has no feature {ref.feature!r}")
        dtype = target.features[i].dtype
        if dtype not in TYPE_OF:
            raise p.fail(f"{where}.inputs", f"{ref} is a {dtype.value}, which expressions cannot use")
        names[local], resolved[local] = TYPE_OF[dtype], str(ref)
    for r in view.request_schema:
        names[r.name], resolved[r.name] = TYPE_OF[r.dtype], REQUEST_PREFIX + r.name
    for f in view.features:
        names[f.name], resolved[f.name] = TYPE_OF[f.dtype], f"{view.name}:{f.name}"
    entity_keys = _keys_read(view, views, derived) if p.authoring else set()  # (since 2026-12-07)
    for f in view.features:  # every join of it carries them, first: the names would clash
        if f.name in entity_keys:
            raise p.fail(f"{where}.features[{f.name}]", "has the name of an entity key of a view it reads")
    features = []
    for f in view.features:
        at = f"{where}.features[{f.name}]"
        used = check_feature(p, f, names, at, check_functions)
        features.append(
            DerivedFeature(
                f.name,
                f.dtype,
                f.description,
                f.tags,
                f.expression,
                f.function,
                f.args,
                depends_on=tuple(resolved[n] for n in used),
            )
        )
    return DerivedView(
        view.name, view.inputs, view.request_schema, tuple(features), view.tags, view.owner, view.description
    )


def _keys_read(
    view: DerivedView, views: Mapping[str, FeatureView], derived: Mapping[str, DerivedView]
) -> set[str]:
    """The entity keys of the stored views a derived view reads, through other derived
    views too (cycles are refused after this: each view is visited once)."""
    keys: set[str] = set()
    seen, todo = {view.name}, [view]
    while todo:
        for _, ref in todo.pop().inputs:
            if ref.view in views:
                keys.update(views[ref.view].join_keys)
            elif ref.view in derived and ref.view not in seen:
                seen.add(ref.view)
                todo.append(derived[ref.view])
    return keys


def check_feature(
    p: _Parser, f: DerivedFeature, names: Mapping[str, Type], where: str, check_functions: bool
) -> list[str]:
    """Type-check one feature; returns the names it reads."""
    node: Node
    try:
        if f.function:
            node = function_call(f.function, list(f.args), names)
            if check_functions:
                _check_function(f.function, len(f.args))
        else:
            node = parse_expression(f.expression, names)
    except ExpressionError as e:
        raise p.fail(f"{where}.{'function' if f.function else 'expression'}", str(e)) from None
    want = Type.BOOL if f.dtype is DType.BOOL else Type.NUM
    if node.type is not want:
        raise p.fail(
            f"{where}.dtype",
            f"the expression is a {node.type.value}, the feature a {f.dtype.value}"
            + ("; use where(cond, 1, 0) for a number" if node.type is Type.BOOL else ""),
        )
    return names_used(node)


def _check_function(target: str, n_args: int) -> None:
    module, _, attr = target.partition(":")
    try:
        imported = importlib.import_module(module)
    except ImportError as e:
        raise ExpressionError(f"cannot import {module!r}: {e}") from None
    except Exception as e:  # a SyntaxError in it, a module raising at import: its error, named
        raise ExpressionError(f"cannot import {module!r}: {type(e).__name__}: {e}") from None
    try:
        fn = getattr(imported, attr)
    except AttributeError:
        raise ExpressionError(f"module {module!r} has no {attr!r}") from None
    py = getattr(fn, "py_func", fn)  # a numba dispatcher wraps the Python function
    if not callable(py):
        raise ExpressionError(f"{target} is not callable")
    try:
        inspect.signature(py).bind(*range(n_args))
    except TypeError:
        raise ExpressionError(f"{target} does not take {n_args} positional arguments") from None
    except ValueError:  # no signature to inspect (a builtin): numba decides at compile time
        pass


def _check_cycles(p: _Parser, views: Mapping[str, DerivedView]) -> None:
    """Features must not depend on themselves through others, and derived views must
    not read each other (each view is one kernel, run after the views it reads)."""
    deps = {
        f"{v.name}:{f.name}": [d for d in f.depends_on if d.partition(":")[0] in views]
        for v in views.values()
        for f in v.features
    }
    cycle = find_cycle(deps)
    if cycle:
        raise p.fail(f"derived_views[{cycle[0].partition(':')[0]}]", "cycle: " + " -> ".join(cycle))
    view_deps = {
        v.name: sorted({ref.view for _, ref in v.inputs if ref.view in views}) for v in views.values()
    }
    cycle = find_cycle(view_deps)
    if cycle:
        raise p.fail(
            f"derived_views[{cycle[0]}].inputs",
            "derived views read each other: " + " -> ".join(cycle) + " (one may read the other, not both)",
        )


def derived_to_dict(v: DerivedView) -> dict[str, Any]:
    """The snapshot form: the YAML form, normalized (inputs as a mapping)."""
    features = []
    for f in v.features:
        doc: dict[str, Any] = {"name": f.name, "dtype": f.dtype.value}
        if f.function:
            doc |= {"function": f.function, "args": list(f.args)}
        else:
            doc["expression"] = f.expression
        features.append(doc | {"description": f.description, "tags": dict(sorted(f.tags.items()))})
    return {
        "name": v.name,
        "inputs": {local: str(ref) for local, ref in v.inputs},
        "request_schema": [
            {"name": r.name, "dtype": r.dtype.value, "description": r.description} for r in v.request_schema
        ],
        "features": features,
        "tags": dict(sorted(v.tags.items())),
        "owner": v.owner,
        "description": v.description,
    }
