"""An independent numpy evaluation of the expression language's IR, the reference the
numba kernels are checked against (float64 arrays, NaN = null, bools as 1.0/0.0)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from featurestore.derived import language as lang

Array = Any  # np.ndarray[float64]


def evaluate(node: lang.Node, env: Mapping[str, Any], n: int) -> Array:
    """``env`` maps names to float arrays, or to object arrays of str/None for strings."""
    with np.errstate(all="ignore"):
        out = _eval(node, env, n)
    return np.where(np.isfinite(out), out, np.nan)


def _fin(a: Array) -> Array:
    return np.where(np.isfinite(a), a, np.nan)


def _null(*arrays: Array) -> Array:
    out = np.zeros(len(arrays[0]), dtype=bool)
    for a in arrays:
        out |= np.isnan(a)
    return out


def _eval(node: lang.Node, env: Mapping[str, Any], n: int) -> Array:
    def e(x: lang.Node) -> Array:
        return _eval(x, env, n)

    match node:
        case lang.Const(value=v):
            return np.full(n, v)
        case lang.Name(name=name):
            return _fin(np.asarray(env[name], dtype=np.float64))
        case lang.StrCompare(op=op, a=a, b=b):
            xs = [a.value] * n if isinstance(a, lang.StrConst) else list(env[a.name])
            ys = [b.value] * n if isinstance(b, lang.StrConst) else list(env[b.name])
            same = np.array(
                [np.nan if x is None or y is None else float(x == y) for x, y in zip(xs, ys, strict=True)]
            )
            return same if op == "==" else np.where(np.isnan(same), np.nan, 1.0 - same)
        case lang.Unary(op="neg", arg=arg):
            return -e(arg)
        case lang.Unary(arg=arg):
            a = e(arg)
            return np.where(np.isnan(a), np.nan, (a == 0).astype(float))
        case lang.Binary(op=op, a=a_node, b=b_node):
            a, b = e(a_node), e(b_node)
            if op == "+":
                return _fin(a + b)
            if op == "-":
                return _fin(a - b)
            if op == "*":
                return _fin(a * b)
            if op == "/":
                return np.where(b == 0, np.nan, _fin(a / b))
            bad = _null(a, b) | ((a == 0) & (b < 0)) | ((a < 0) & (b != np.floor(b)))
            return np.where(bad, np.nan, _fin(np.power(a, b)))
        case lang.Compare(op=op, a=a_node, b=b_node):
            a, b = e(a_node), e(b_node)
            result = {"==": a == b, "!=": a != b, "<": a < b, "<=": a <= b, ">": a > b, ">=": a >= b}[op]
            return np.where(_null(a, b), np.nan, result.astype(float))
        case lang.Logic(op=op, args=args):
            values = [e(x) for x in args]
            out = values[0]
            for v in values[1:]:  # strict: a null operand gives null (only coalesce handles it)
                result = ((out != 0) & (v != 0)) if op == "and" else ((out != 0) | (v != 0))
                out = np.where(_null(out, v), np.nan, result.astype(float))
            return out
        case lang.Call(fn=fn, args=args):
            return _call(fn, [e(x) for x in args])
        case lang.Bucket(x=x_node, edges=edges):
            x = e(x_node)
            return np.where(
                np.isnan(x), np.nan, np.searchsorted(np.array(edges), x, side="right").astype(float)
            )
    raise AssertionError(node)


def _call(fn: str, a: list[Array]) -> Array:
    if fn == "log":
        return np.where(a[0] > 0, np.log(a[0]), np.nan)
    if fn == "log1p":
        return np.where(a[0] > -1, np.log1p(a[0]), np.nan)
    if fn == "exp":
        return _fin(np.exp(a[0]))
    if fn == "sqrt":
        return np.where(a[0] >= 0, np.sqrt(a[0]), np.nan)
    if fn == "abs":
        return np.abs(a[0])
    if fn in ("min", "max"):
        out = a[0]
        for v in a[1:]:
            out = np.where(_null(out, v), np.nan, np.minimum(out, v) if fn == "min" else np.maximum(out, v))
        return out
    if fn == "clip":
        x, lo, hi = a
        return np.where(_null(x, lo, hi), np.nan, np.minimum(np.maximum(x, lo), hi))
    if fn == "coalesce":
        out = a[-1]
        for v in reversed(a[:-1]):
            out = np.where(np.isnan(v), out, v)
        return out
    if fn == "where":
        c, x, y = a
        return np.where(_null(c, x, y), np.nan, np.where(c != 0, x, y))
    raise AssertionError(fn)
