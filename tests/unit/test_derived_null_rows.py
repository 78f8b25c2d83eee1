"""Derived values undefined in some rows only: a kernel returns the mask of its output
rows holding a null (codegen), the join scans only those rows, and exactly the
undefined values become null (evaluate). A wide view checks the rows that share the
mask's last bit; a stored null checks the inputs' numpy fallback."""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from featurestore.definitions.parser import parse_definitions
from featurestore.definitions.snapshot import new_snapshot
from featurestore.derived import compiler
from featurestore.derived.codegen import NULL_BITS
from featurestore.join import JoinEngine, JoinRequest, Limits
from featurestore.model import Definitions, Status
from featurestore.plan import ServingState
from featurestore.rows import view_schema
from featurestore.sources.memory import MemorySource
from tests.support import listed

WIDE = NULL_BITS + 7  # features f0 .. f69: f62 to f69 share the mask's last bit
SPECIAL = {
    1: ("float64", "a / b"),  # undefined where b == 0
    2: ("int64", "b * 2"),
    3: ("bool", "a > b"),
    NULL_BITS + 2: ("float64", "a / b"),  # shares the last bit with its neighbours
}


def features() -> list[dict[str, str]]:
    out = []
    for i in range(WIDE):
        dtype, expression = SPECIAL.get(i, ("float64", f"a + {i}"))
        out.append({"name": f"f{i}", "dtype": dtype, "expression": expression})
    return out


DOC: dict[str, Any] = {
    "project": "p",
    "entities": [{"name": "user_id", "dtype": "int64"}],
    "feature_views": [
        {
            "name": "t",
            "entities": ["user_id"],
            "features": [{"name": "a", "dtype": "float64"}, {"name": "b", "dtype": "int64"}],
        }
    ],
    "derived_views": [{"name": "wide", "inputs": ["t:a", "t:b"], "features": features()}],
}
ASKED = [1, 2, 3, 4, NULL_BITS - 2, NULL_BITS - 1, NULL_BITS, NULL_BITS + 2]


@pytest.fixture(scope="module")
def defs() -> Definitions:
    return parse_definitions(DOC, source="n.yaml")


@pytest.fixture(scope="module")
def kernels(defs: Definitions, tmp_path_factory: pytest.TempPathFactory) -> dict[str, compiler.Kernel]:
    return asyncio.run(compiler.kernels_for(defs, tmp_path_factory.mktemp("kernels")))


async def engine(
    defs: Definitions, kernels: dict[str, compiler.Kernel], a: list[Any], b: list[int]
) -> JoinEngine:
    mem = MemorySource("default")
    await mem.prepare(list(defs.views.values()))
    schema = view_schema(defs.views["t"])
    n = len(a)
    rows = {"user_id": list(range(n)), "a": a, "b": b, "event_timestamp": [int(time.time() * 1e6)] * n}
    await mem.write(
        defs.views["t"], pa.table({f.name: pa.array(rows[f.name], f.type) for f in schema}, schema=schema), 0
    )
    return JoinEngine(
        {"default": mem}, ServingState(new_snapshot(defs, 1), kernels=kernels), Limits(max_rows=1000)
    )


async def join(eng: JoinEngine, n: int) -> dict[str, list[Any]]:
    req = JoinRequest({"user_id": list(range(n))}, tuple(f"wide:f{i}" for i in ASKED))
    result = await eng.join(req, time.monotonic() + 10)
    for c in result.columns[1:]:
        assert c.outcome is not None and set(c.outcome.statuses) == {Status.PRESENT}
    return {c.name: listed(c.values) for c in result.columns[1:]}


def expected(a: list[Any], b: list[int]) -> dict[str, list[Any]]:
    def each(fn: Any) -> list[Any]:
        return [None if x is None else fn(x, y) for x, y in zip(a, b, strict=True)]

    cols = {f"f{i}": each(lambda x, y, i=i: x + i) for i in ASKED}
    ratio = each(lambda x, y: None if y == 0 else x / y)
    cols |= {
        "f1": ratio,
        f"f{NULL_BITS + 2}": ratio,
        "f2": [2 * y for y in b],
        "f3": each(lambda x, y: x > y),
    }
    return cols


@pytest.mark.parametrize("n", [1, 3, 150])
async def test_an_undefined_value_in_one_row_among_many_is_null_and_only_there(
    defs: Definitions, kernels: dict[str, compiler.Kernel], n: int
) -> None:
    a = [0.5 + i for i in range(n)]
    b = [(i % 7) + 1 for i in range(n)]
    b[n // 2] = 0  # a / b is undefined in this row alone
    got = await join(await engine(defs, kernels, a, b), n)
    assert got == expected(a, b)
    ratio = got["f1"]
    assert ratio[n // 2] is None and all(v is not None for i, v in enumerate(ratio) if i != n // 2)
    assert all(v is not None for v in got[f"f{NULL_BITS}"])  # its bit is set, its values kept


@pytest.mark.parametrize("n", [1, 150])
async def test_rows_without_any_undefined_value_come_back_whole(
    defs: Definitions, kernels: dict[str, compiler.Kernel], n: int
) -> None:
    a = [0.25 * i for i in range(n)]
    b = [i + 1 for i in range(n)]
    got = await join(await engine(defs, kernels, a, b), n)
    assert got == expected(a, b)
    assert all(v is not None for col in got.values() for v in col)


async def test_a_stored_null_among_the_inputs_makes_only_its_row_null(
    defs: Definitions, kernels: dict[str, compiler.Kernel]
) -> None:
    a: list[Any] = [1.5 * i for i in range(40)]
    a[7] = None
    b = [3] * 40
    got = await join(await engine(defs, kernels, a, b), 40)
    assert got == expected(a, b)
    assert got["f4"][7] is None and got["f2"][7] == 6  # f2 reads b only


def test_the_kernel_flags_exactly_the_output_rows_holding_a_null(kernels: dict[str, compiler.Kernel]) -> None:
    kernel = kernels["wide"]
    names = [k.name for k in kernel.spec.inputs]
    inp = np.ones((len(names), 5))
    out = np.empty((WIDE, 5))
    assert kernel.into(inp, out) == 0
    inp[names.index("b"), 3] = 0.0
    mask = kernel.into(inp, out)
    assert mask == (1 << 1) | (1 << (NULL_BITS - 1))
    assert math.isnan(out[1, 3]) and not np.isnan(np.delete(out[1], 3)).any()
    assert np.array_equal(out, kernel.run(inp), equal_nan=True)
