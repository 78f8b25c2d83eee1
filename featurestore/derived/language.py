"""The expression language of derived features: parsed, type-checked, never evaluated.

An expression is parsed with Python's ``ast`` and walked with an allow-list: anything
not listed below is refused with its column, so user text is never ``eval``ed. The
result is a small typed IR that ``codegen`` turns into a numba kernel. The language
(docs/definitions.md has the full table):

* numbers, ``true``/``false`` (``True``/``False``), string constants (only compared);
* names: the view's inputs, its request fields, its own other features;
* ``+ - * / **``, unary ``-``/``+``; comparisons ``== != < <= > >=`` (chains allowed);
  ``and``, ``or``, ``not``;
* ``where(cond, a, b)``, ``log``, ``log1p``, ``exp``, ``sqrt``, ``abs``, ``min(a, b, ...)``,
  ``max(a, b, ...)``, ``clip(x, lo, hi)``, ``coalesce(a, b, ...)``,
  ``bucket(x, [e0, e1, ...])`` = the number of edges ``<= x`` (edges ascending constants).

Types: numbers (int64, float64 and timestamp inputs, all float64 in the kernel), bools
and strings; a string may only be compared with ``==``/``!=`` to another string, one of
them a string input or request field (``'a' == 'b'`` is refused).
"""

from __future__ import annotations

import ast
import enum
import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass

from featurestore.derived.position import Where
from featurestore.model import DType

MAX_EXPRESSION_CHARS = 2000
# How deep an expression may nest, in the Python frames its recursive checks take (Python
# allows 1,000): per level of each construct, measured (an operator 2.9, `and`/`or` 4.9,
# a function call 4.9 to 7.8 for bucket) and rounded up. The budget leaves ~400 for the
# caller's frames (a server's swap parses ~60 deep), and it is summed on the syntax tree
# without recursion before those checks run: so the limit is the same wherever the
# expression is parsed (validate, apply, a swap), not what the stack has left there.
_FRAMES = {ast.BinOp: 3, ast.UnaryOp: 3, ast.Compare: 4, ast.BoolOp: 5, ast.Call: 8}
MAX_FRAMES = 600  # 200 arithmetic operators deep, 150 comparisons, 120 and/or, or 75 function calls
NESTED_TOO_DEEPLY = (
    "nested too deeply (at most 200 levels of arithmetic operators, 150 of comparisons, "
    "120 of and/or, or 75 of function calls)"
)


class Type(enum.Enum):
    NUM = "number"
    BOOL = "bool"
    STR = "string"


# What a stored feature or request field of each dtype is in an expression.
TYPE_OF = {
    DType.INT64: Type.NUM,
    DType.FLOAT64: Type.NUM,
    DType.TIMESTAMP: Type.NUM,  # epoch microseconds
    DType.BOOL: Type.BOOL,
    DType.STRING: Type.STR,
}


class ExpressionError(ValueError):
    """An expression that is not in the language or does not type-check."""


# -- the IR -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Const:
    value: float  # bools as 1.0 / 0.0
    type: Type


@dataclass(frozen=True, slots=True)
class StrConst:
    value: str
    type: Type = Type.STR


@dataclass(frozen=True, slots=True)
class Name:
    name: str
    type: Type


@dataclass(frozen=True, slots=True)
class Unary:
    op: str  # "neg" | "not"
    arg: Node
    type: Type


@dataclass(frozen=True, slots=True)
class Binary:
    op: str  # + - * / **
    a: Node
    b: Node
    type: Type = Type.NUM


@dataclass(frozen=True, slots=True)
class Compare:
    op: str  # == != < <= > >=
    a: Node
    b: Node
    type: Type = Type.BOOL


@dataclass(frozen=True, slots=True)
class StrCompare:
    """``==``/``!=`` between strings: evaluated before the kernel, which sees a bool."""

    op: str
    a: Name | StrConst
    b: Name | StrConst
    type: Type = Type.BOOL


@dataclass(frozen=True, slots=True)
class Logic:
    op: str  # "and" | "or"
    args: tuple[Node, ...]
    type: Type = Type.BOOL


@dataclass(frozen=True, slots=True)
class Call:
    fn: str
    args: tuple[Node, ...]
    type: Type


@dataclass(frozen=True, slots=True)
class Bucket:
    x: Node
    edges: tuple[float, ...]
    type: Type = Type.NUM


@dataclass(frozen=True, slots=True)
class Function:
    """A trusted ``module:function`` called with float64 arguments (never parsed text)."""

    target: str
    args: tuple[Name, ...]
    type: Type = Type.NUM


Node = Const | StrConst | Name | Unary | Binary | Compare | StrCompare | Logic | Call | Bucket | Function

_ARITH = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.Pow: "**"}
_CMP = {ast.Eq: "==", ast.NotEq: "!=", ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">="}
UNARY_MATH = ("log", "log1p", "exp", "sqrt", "abs")
FUNCTIONS = (*UNARY_MATH, "where", "min", "max", "clip", "coalesce", "bucket")
_BOOL_NAMES = {"true": True, "false": False}


def parse_expression(text: str, names: Mapping[str, Type]) -> Node:
    """Parse and type-check ``text``; ``names`` are what it may refer to."""
    if not isinstance(text, str) or not text.strip():
        raise ExpressionError("an expression is required")
    if len(text) > MAX_EXPRESSION_CHARS:
        raise ExpressionError(f"longer than {MAX_EXPRESSION_CHARS} characters")
    where = Where(text)
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as e:
        raise ExpressionError(f"syntax error at {where.of_error(e, text.strip())}: {e.msg}") from None
    except (RecursionError, MemoryError, ValueError):
        raise ExpressionError(NESTED_TOO_DEEPLY) from None
    if _frames(tree.body) > MAX_FRAMES:
        raise ExpressionError(NESTED_TOO_DEEPLY)
    try:
        return _Checker(names, where, text.strip()).node(tree.body)
    except RecursionError:  # a caller already deeper than the budget leaves room for
        raise ExpressionError(NESTED_TOO_DEEPLY) from None


def _frames(root: ast.AST) -> int:
    """The most frames (``_FRAMES``) a path from the root of the syntax tree down takes,
    walked with a stack (the tree of at most ``MAX_EXPRESSION_CHARS`` characters)."""
    deepest, stack = 0, [(root, 0)]
    while stack:
        node, frames = stack.pop()
        frames += _FRAMES.get(type(node), 0)
        deepest = max(deepest, frames)
        stack.extend((c, frames) for c in ast.iter_child_nodes(node) if isinstance(c, ast.expr))
    return deepest


def function_call(target: str, args: list[str], names: Mapping[str, Type]) -> Function:
    """A trusted function call over named inputs (which must be numbers or bools)."""
    refs = []
    for arg in args:
        t = names.get(arg)
        if t is None:
            raise ExpressionError(f"unknown name {arg!r}")
        if t is Type.STR:
            raise ExpressionError(f"{arg!r} is a string; functions take numbers")
        refs.append(Name(arg, t))
    return Function(target, tuple(refs))


def names_used(node: Node) -> list[str]:
    """Every name the expression reads, in order of first use."""
    out: dict[str, None] = {}
    _collect(node, out)
    return list(out)


def _collect(node: Node, out: dict[str, None]) -> None:
    match node:
        case Name(name=name):
            out[name] = None
        case Unary(arg=arg):
            _collect(arg, out)
        case Binary(a=a, b=b) | Compare(a=a, b=b) | StrCompare(a=a, b=b):
            _collect(a, out)
            _collect(b, out)
        case Logic(args=args) | Call(args=args) | Function(args=args):
            for arg in args:
                _collect(arg, out)
        case Bucket(x=x):
            _collect(x, out)
        case _:
            pass


class _Checker:
    def __init__(self, names: Mapping[str, Type], where: Where, source: str) -> None:
        self.names = names
        self.where = where
        self.source = source  # what was parsed, for a constant's text as written

    def fail(self, node: ast.AST, msg: str) -> ExpressionError:
        col = getattr(node, "col_offset", None)
        if col is None:
            return ExpressionError(msg)
        return ExpressionError(f"{msg} (at {self.where.at_node(getattr(node, 'lineno', 1), col)})")

    def node(self, n: ast.AST) -> Node:
        match n:
            case ast.Constant(value=value):
                return self.constant(n, value)
            case ast.Name(id=name):
                return self.name(n, name)
            case ast.BinOp(op=op, left=left, right=right) if type(op) in _ARITH:
                return Binary(
                    _ARITH[type(op)], self.number(left, "arithmetic"), self.number(right, "arithmetic")
                )
            case ast.UnaryOp(op=ast.USub() | ast.UAdd() as op, operand=operand):
                arg = self.number(operand, "arithmetic")
                if isinstance(op, ast.UAdd):
                    return arg
                return Const(-arg.value, Type.NUM) if isinstance(arg, Const) else Unary("neg", arg, Type.NUM)
            case ast.UnaryOp(op=ast.Not(), operand=operand):
                return Unary("not", self.boolean(operand, "'not'"), Type.BOOL)
            case ast.BoolOp(op=op, values=values):
                word = "and" if isinstance(op, ast.And) else "or"
                return Logic(word, tuple(self.boolean(v, f"'{word}'") for v in values))
            case ast.Compare(left=left, ops=ops, comparators=comparators):
                return self.compare(n, left, ops, comparators)
            case ast.Call(func=ast.Name(id=fn), args=args, keywords=[]) if fn in FUNCTIONS:
                if any(isinstance(a, ast.Starred) for a in args):
                    raise self.fail(n, f"{fn}() takes plain arguments")
                return self.call(n, fn, args)
            case ast.Call(func=ast.Name(id=fn), keywords=[]):
                raise self.fail(n, f"unknown function {fn!r}; the functions are {', '.join(FUNCTIONS)}")
            case ast.Call():
                raise self.fail(n, "only the built-in functions can be called, with positional arguments")
        raise self.fail(n, f"{_describe(n)} is not part of the expression language")

    def constant(self, n: ast.AST, value: object) -> Node:
        if isinstance(value, bool):
            return Const(1.0 if value else 0.0, Type.BOOL)
        if isinstance(value, int | float):
            try:
                number = float(value)
            except OverflowError:  # an int beyond float64's range (1.8e308)
                number = math.inf
            if not math.isfinite(number):  # named as written: 1e999 is read as inf
                written = ast.get_source_segment(self.source, n) or abbreviate(value)
                raise self.fail(n, f"the constant {abbreviate_text(written)} is not a finite number")
            return Const(number, Type.NUM)
        if isinstance(value, str):
            return StrConst(value)
        raise self.fail(n, f"the constant {value!r} is not a number, bool or string")

    def name(self, n: ast.AST, name: str) -> Node:
        t = self.names.get(name)
        if t is not None:
            return Name(name, t)
        if name in _BOOL_NAMES:
            return Const(1.0 if _BOOL_NAMES[name] else 0.0, Type.BOOL)
        raise self.fail(
            n,
            f"unknown name {name!r}: not an input, a request field (declare it in request_schema) "
            "or a feature of this view",
        )

    def typed(self, n: ast.AST, want: Type, what: str) -> Node:
        node = self.node(n)
        if node.type is not want:
            raise self.fail(n, f"{what} needs a {want.value}, got a {node.type.value} ({_describe(n)})")
        return node

    def number(self, n: ast.AST, what: str) -> Node:
        return self.typed(n, Type.NUM, what)

    def boolean(self, n: ast.AST, what: str) -> Node:
        return self.typed(n, Type.BOOL, what)

    def compare(self, n: ast.AST, left: ast.expr, ops: list[ast.cmpop], rights: list[ast.expr]) -> Node:
        parts: list[Node] = []
        a = self.node(left)
        for op_node, right in zip(ops, rights, strict=True):
            op = _CMP.get(type(op_node))
            if op is None:
                raise self.fail(n, f"{_describe(op_node)} is not a comparison of the language")
            b = self.node(right)
            if a.type is not b.type:
                raise self.fail(n, f"cannot compare a {a.type.value} with a {b.type.value}")
            if a.type is Type.STR:
                if op not in ("==", "!="):
                    raise self.fail(n, f"strings compare only with == and !=, not {op}")
                if not isinstance(a, Name | StrConst) or not isinstance(b, Name | StrConst):
                    raise self.fail(n, "strings compare only as names and constants")
                if isinstance(a, StrConst) and isinstance(b, StrConst):
                    raise self.fail(n, "a string constant compares only with a string input or request field")
                parts.append(StrCompare(op, a, b))
            elif a.type is Type.BOOL and op not in ("==", "!="):
                raise self.fail(n, f"bools compare only with == and !=, not {op}")
            else:
                parts.append(Compare(op, a, b))
            a = b
        return parts[0] if len(parts) == 1 else Logic("and", tuple(parts))

    def call(self, n: ast.AST, fn: str, args: list[ast.expr]) -> Node:
        arity = {"where": (3, 3), "clip": (3, 3), "bucket": (2, 2), "min": (2, 64), "max": (2, 64)}
        lo, hi = arity.get(fn, (2, 64) if fn == "coalesce" else (1, 1))
        if not lo <= len(args) <= hi:
            want = f"{lo}" if lo == hi else f"{lo} to {hi}"
            raise self.fail(n, f"{fn}() takes {want} argument{'s' if lo > 1 else ''}, got {len(args)}")
        if fn in UNARY_MATH or fn in ("min", "max", "clip"):
            return Call(fn, tuple(self.number(a, f"{fn}()") for a in args), Type.NUM)
        if fn == "bucket":
            return Bucket(self.number(args[0], "bucket()"), self.edges(args[1]))
        first = 1 if fn == "where" else 0
        cond = [self.boolean(args[0], "where()'s condition")] if fn == "where" else []
        values = [self.node(a) for a in args[first:]]
        kind = values[0].type
        if kind is Type.STR:
            raise self.fail(n, f"{fn}() of strings is not supported (derived features are numbers or bools)")
        for a, v in zip(args[first:], values, strict=True):
            if v.type is not kind:
                raise self.fail(a, f"{fn}() mixes a {kind.value} and a {v.type.value}")
        return Call(fn, (*cond, *values), kind)

    def edges(self, n: ast.AST) -> tuple[float, ...]:
        if not isinstance(n, ast.List) or not n.elts:
            raise self.fail(n, "bucket()'s second argument is a non-empty list of numbers, e.g. [0, 10, 50]")
        out = []
        for e in n.elts:
            node = self.node(e)
            if not isinstance(node, Const) or node.type is not Type.NUM:
                raise self.fail(e, "bucket() edges must be number constants")
            out.append(node.value)
        if any(b <= a for a, b in itertools.pairwise(out)):
            raise self.fail(n, "bucket() edges must be strictly ascending")
        return tuple(out)


def abbreviate(value: int | float) -> str:
    """A number for an error message (an integer may have thousands of digits)."""
    text = repr(value)
    return text if len(text) <= 24 else f"{text[:22]}... ({len(text)} digits)"


def abbreviate_text(text: str) -> str:
    """A constant as written, for an error message (``1`` and 400 zeros is 401 characters)."""
    return text if len(text) <= 24 else f"{text[:22]}... ({len(text)} characters)"


def _describe(n: ast.AST) -> str:
    try:
        return f"'{ast.unparse(n)}'" if isinstance(n, ast.expr) else type(n).__name__
    except Exception:  # pragma: no cover - unparse of a parsed node does not fail
        return type(n).__name__
