"""Typed IR -> the Python source of one derived view's numba kernel.

One kernel per derived view computes all of its features, in dependency order: one
dispatch per view per request (numba's dispatch costs ~0.6 µs). Its statements are
compiled once, as ``kernel_row(a0, a1, ...)``: one row's inputs as floats in, its
features as a tuple out (NaN = null); a join of one entity row calls it directly and
builds no array (conversion + call + values out for the demo's view: 1.28 -> 0.29 µs
against the matrix entry, benchmarks/RESULTS.md, "A one-row entry"). ``kernel_into(inp,
out)``, the loop over rows, calls it for each row (numba inlines it): it reads a
C-contiguous float64 matrix, row k = ``KernelSpec.inputs[k]`` over the request's rows
(NaN = null), and writes one row per feature of the view, in the view's order, into
``out``; it returns a bit mask of the output rows holding a null (bit k for row k; rows
from ``NULL_BITS - 1`` on share the last bit), gathered in the loop with one flag per
bit, so a join scans for nulls only the rows that have one. Writing into an array the
caller allocated instead of returning one spares numba boxing its result: with the
mask, 1.06 -> 0.85 µs per call (numba dispatch, kernel, tolist; measured at batch 1
when batch 1 took this entry). ``kernel(inp)`` returns the output matrix (tests,
benchmarks).

The source is generated from the validated IR only (never from user text), written to
the cache directory under a name derived from its hash (``compiler``) and compiled by
numba with ``cache=True``, so a restart loads machine code instead of compiling. A
comment in it names what feeds each input row (names, string comparisons), so two views
whose loops differ only there never share a module name. Another comment fingerprints
what the machine code depends on outside this file (``fingerprint``): numba, ``ops``
and each trusted function's whole top-level package. A trusted function's call is
wrapped in ``try``/``except Exception`` (numba supports that form in nopython code): a
function raising for a row gives that row a null, never fails the join, nor the warm-up
call of a load (its arguments all 0). A trusted function is jitted
without numba's own cache: the kernel's cache holds its machine code, and a second cache
next to the deployed code, keyed by that one file, would keep serving a helper the
function calls from another module after the helper changed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass

from featurestore.dag import post_order
from featurestore.derived import language as lang
from featurestore.derived.fingerprint import Fingerprints
from featurestore.derived.language import TYPE_OF, Node, Type
from featurestore.model import Definitions, DerivedView, DType

_ARITH = {"+": "add", "-": "sub", "*": "mul", "/": "div", "**": "pow_"}
_CMP = {"==": "eq", "!=": "ne", "<": "lt", "<=": "le", ">": "gt", ">=": "ge"}
_CALL = {"log": "log", "log1p": "log1p", "exp": "exp", "sqrt": "sqrt", "abs": "abs_", "clip": "clip"}
_FOLD = {"min": "min_", "max": "max_", "coalesce": "coalesce", "and": "and_", "or": "or_"}
NULL_BITS = 63  # bits of the null mask kernel_into returns (a positive int64)


@dataclass(frozen=True, slots=True)
class KernelInput:
    """Row k of a kernel's input matrix: a named input or request field, or a string
    comparison evaluated before the kernel (strings never enter it)."""

    name: str = ""
    compare: lang.StrCompare | None = None


@dataclass(frozen=True, slots=True)
class KernelSpec:
    view: str
    module: str  # the module name: view and source hash
    source: str
    inputs: tuple[KernelInput, ...]
    features: tuple[str, ...]  # output rows, in the view's order


def view_names(view: DerivedView, defs: Definitions) -> dict[str, Type]:
    """What each name in the view's expressions is (the parser checked they exist)."""
    names: dict[str, Type] = {}
    for local, ref in view.inputs:
        dtype = defs.dtype_of(ref)
        if dtype is not None and dtype in TYPE_OF:
            names[local] = TYPE_OF[dtype]
    names.update({r.name: TYPE_OF[r.dtype] for r in view.request_schema})
    names.update({f.name: TYPE_OF[f.dtype] for f in view.features})
    return names


def feature_ir(view: DerivedView, defs: Definitions) -> dict[str, Node]:
    names = view_names(view, defs)
    return {
        f.name: lang.function_call(f.function, list(f.args), names)
        if f.function
        else lang.parse_expression(f.expression, names)
        for f in view.features
    }


def feature_order(view: DerivedView) -> list[str]:
    """The view's features, each after the features of the view it reads."""
    own = {
        f.name: [d.partition(":")[2] for d in f.depends_on if d.partition(":")[0] == view.name]
        for f in view.features
    }
    return post_order([f.name for f in view.features], own.__getitem__)


def generate(view: DerivedView, defs: Definitions, fingerprints: Fingerprints | None = None) -> KernelSpec:
    """One view's kernel; ``fingerprints`` shared by the views of one swap hashes each
    trusted function's package once for all of them."""
    return _Writer(view, defs, fingerprints or Fingerprints()).spec()


class _Writer:
    def __init__(self, view: DerivedView, defs: Definitions, fingerprints: Fingerprints) -> None:
        self.view = view
        self.fingerprints = fingerprints
        self.ir = feature_ir(view, defs)
        self.rows: dict[KernelInput, int] = {}
        self.vars: dict[str, str] = {f.name: f"f{i}" for i, f in enumerate(view.features)}
        self.int64 = {f.name for f in view.features if f.dtype is DType.INT64}
        self.consts: list[str] = []
        self.functions: list[str] = []
        self.modules: list[str] = []
        self.body: list[str] = []  # the loop body: one statement per operation
        self.temps = 0

    def row(self, key: KernelInput) -> str:
        if key not in self.rows:
            self.rows[key] = len(self.rows)
        return f"x{self.rows[key]}"

    def let(self, code: str) -> str:
        """A temporary holding ``code``: every operation is one flat statement, so a
        deep expression never nests in the source (Python's parser stops at 200 nested
        parentheses; numba sees the same SSA either way)."""
        var = f"t{self.temps}"
        self.temps += 1
        self.body.append(f"{var} = {code}")
        return var

    def expr(self, node: Node) -> str:
        """The atom (constant, input row, feature or temporary) holding ``node``'s value."""
        match node:
            case lang.Const(value=v):
                return repr(v)
            case lang.Name(name=name):
                return self.vars.get(name) or self.row(KernelInput(name))
            case lang.StrCompare():
                return self.row(KernelInput(compare=node))
            case lang.Unary(op="neg", arg=arg):
                return self.let(f"-{self.expr(arg)}")
            case lang.Unary(arg=arg):
                return self.let(f"_o.not_({self.expr(arg)})")
            case lang.Binary(op=op, a=a, b=b):
                return self.let(f"_o.{_ARITH[op]}({self.expr(a)}, {self.expr(b)})")
            case lang.Compare(op=op, a=a, b=b):
                return self.let(f"_o.{_CMP[op]}({self.expr(a)}, {self.expr(b)})")
            case lang.Logic(op=op, args=args):
                return self.fold(_FOLD[op], args)
            case lang.Call(fn=fn, args=args) if fn in _FOLD:
                return self.fold(_FOLD[fn], args)
            case lang.Call(fn=fn, args=args):
                name = _CALL.get(fn, fn)  # where
                return self.let(f"_o.{name}({', '.join(self.expr(a) for a in args)})")
            case lang.Bucket(x=x, edges=edges):
                self.consts.append(f"_E{len(self.consts)} = np.array({list(edges)!r}, dtype=np.float64)")
                edges_var = f"_E{len(self.consts) - 1}"
                return self.let(f"_o.bucket({self.expr(x)}, {edges_var})")
        raise AssertionError(f"no code for {node!r}")  # pragma: no cover - the IR is closed

    def fold(self, fn: str, args: tuple[Node, ...]) -> str:
        atoms = [self.expr(a) for a in args]
        out = atoms[-1]
        for a in reversed(atoms[:-1]):
            out = self.let(f"_o.{fn}({a}, {out})")
        return out

    def statement(self, name: str) -> None:
        node = self.ir[name]
        var = self.vars[name]
        if not isinstance(node, lang.Function):
            self.body.append(f"{var} = {self.to_dtype(name, self.expr(node))}")
            return
        module, _, attr = node.target.partition(":")
        alias = f"_t{len(self.functions)}"
        # the comment names the feature in a build's error (build.failing_feature)
        self.functions.append(
            f"{alias} = _jitted(importlib.import_module({module!r}).{attr})  # feature {name}"
        )
        self.modules.append(module)
        args = [self.expr(a) for a in node.args]
        null = " or ".join(f"math.isnan({a})" for a in args) or "False"
        value = self.to_dtype(name, f"_o.fin(float({alias}({', '.join(args)})))")
        self.body += [  # a raise in the function (nopython catches Exception) is a null
            f"if {null}:",
            f"    {var} = math.nan",
            "else:",
            "    try:",
            f"        {var} = {value}",
            "    except Exception:",
            f"        {var} = math.nan",
        ]

    def to_dtype(self, name: str, atom: str) -> str:
        """The feature's value as served, where it is computed, so the features reading it
        compute with that value: an int64 feature truncated (27, not 27.0 from 2.7), and a
        zero made +0.0 (``+ 0.0``: -x, x * -1 and x / -5 of x = 0 give -0.0, which the
        encoders would write as -0.0; NaN stays NaN)."""
        return f"_o.int64({atom}) + 0.0" if name in self.int64 else f"{atom} + 0.0"

    def spec(self) -> KernelSpec:
        for name in feature_order(self.view):
            self.statement(name)
        outs = [self.vars[f.name] for f in self.view.features]
        width, arity = len(outs), len(self.rows)
        args = [f"a{k}" for k in range(arity)]
        signature = f"UniTuple(float64, {width})({', '.join(['float64'] * arity)})"
        # one flag per mask bit: features from bit NULL_BITS - 1 on share the last one
        bit = [min(k, NULL_BITS - 1) for k in range(width)]
        bits = list(dict.fromkeys(bit))
        row = f"kernel_row({', '.join(f'inp[{k}, i]' for k in range(arity))})"
        inputs = tuple(sorted(self.rows, key=self.rows.__getitem__))
        head = [
            f"# Generated by featurestore.derived.codegen for derived view {self.view.name!r}. Do not edit.",
            f"# {self.fingerprints.line(self.modules)}",
            f"# inputs: {_rows_comment(inputs)}",
            "import importlib",
            "import math",
            "",
            "import numba",
            "import numpy as np",
            "from numba.extending import is_jitted",
            "",
            "from featurestore.derived import ops as _o",
            "",
            "",
            "def _jitted(fn):",
            "    return fn if is_jitted(fn) else numba.njit(error_model='numpy')(fn)",
            "",
            "",
            *self.consts,
            *self.functions,
            "",
            "",
            f'@numba.njit("{signature}", cache=True, nogil=True, error_model="numpy")',
            f"def kernel_row({', '.join(args)}):",
            *(f"    x{k} = _o.fin(a{k})" for k in range(arity)),
            *(f"    {line}" for line in self.body),
            f"    return ({', '.join(outs)}{',' if width == 1 else ''})",
            "",
            "",
            '@numba.njit("int64(float64[:, ::1], float64[:, ::1])", cache=True, nogil=True, error_model="numpy")',
            "def kernel_into(inp, out):",
            "    n = inp.shape[1]",
            f"    {' = '.join(f'm{b}' for b in bits)} = False",
            "    for i in range(n):",
            f"        r = {row}",
            *(f"        out[{k}, i] = r[{k}]" for k in range(width)),
            *(f"        m{b} |= math.isnan(r[{k}])" for k, b in enumerate(bit)),
            "    nulls = 0",
            *(f"    if m{b}:\n        nulls |= {1 << b}" for b in bits),
            "    return nulls",
            "",
            "",
            "def kernel(inp):",
            f"    out = np.empty(({len(self.view.features)}, inp.shape[1]))",
            "    kernel_into(inp, out)",
            "    return out",
            "",
        ]
        source = "\n".join(head)
        digest = hashlib.sha256(source.encode()).hexdigest()[:16]
        features = tuple(f.name for f in self.view.features)
        return KernelSpec(self.view.name, f"dv_{self.view.name}_{digest}", source, inputs, features)


def _rows_comment(inputs: tuple[KernelInput, ...]) -> str:
    """Where each input row comes from (``x0 = price; x1 = country == 'DE'``): the
    loop reads rows by number only, so without this two views differing in what feeds
    a row (``x - y`` vs ``y - x``, a renamed input, another string constant or ``!=``
    for ``==``) would generate the same source, hence the same module name. String
    constants are ``repr``'d: one line whatever they hold."""

    def side(s: lang.Name | lang.StrConst) -> str:
        return s.name if isinstance(s, lang.Name) else repr(s.value)

    rows = [
        k.name if k.compare is None else f"{side(k.compare.a)} {k.compare.op} {side(k.compare.b)}"
        for k in inputs
    ]
    return "; ".join(f"x{i} = {row}" for i, row in enumerate(rows)) or "none"


def names_of(spec: KernelSpec) -> Mapping[str, int]:
    """Named input rows by name (string comparisons excluded)."""
    return {k.name: i for i, k in enumerate(spec.inputs) if k.compare is None}
