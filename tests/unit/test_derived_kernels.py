"""Derived kernels: compiled by the real build process into a temporary cache, run by
the join engine over the memory store, and checked against an independent numpy
evaluation (tests/unit/derived_reference.py) on random data with nulls; then the
semantics the issue names, value by value."""

from __future__ import annotations

import asyncio
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from featurestore.definitions.parser import parse_definitions
from featurestore.definitions.snapshot import new_snapshot
from featurestore.derived import compiler
from featurestore.derived.codegen import feature_ir
from featurestore.join import JoinEngine, JoinRequest, Limits
from featurestore.model import Definitions, Status
from featurestore.plan import ServingState
from featurestore.rows import view_schema
from featurestore.sources.memory import MemorySource
from tests.support import listed
from tests.unit.derived_reference import evaluate

ROOT = Path(__file__).resolve().parents[2]
N = 3000
RANDOM_EXPRESSIONS = {
    "e_arith": "x * y + z - 2.5",
    "e_div": "x / y",
    "e_pow": "abs(x) ** 0.5 + y ** 2",
    "e_pow_neg": "y ** x",
    "e_log": "log(x) + log1p(y)",
    "e_exp": "exp(x / 10)",
    "e_sqrt": "sqrt(y) - sqrt(z)",
    "e_minmax": "min(x, y, z) + max(x, 3)",
    "e_clip": "clip(x, -1, 1)",
    "e_coalesce": "coalesce(x, y, 0)",
    "e_where": "where(b, x, y)",
    "e_where_cmp": "where(x > y, x - y, y - x)",
    "e_bucket": "ctr * bucket(price, [0, 10, 50, 100])",
    "e_bucket_wide": f"bucket(price, {list(range(-20, 150, 4))})",  # 43 edges: the binary search
    "e_and": "where(b and x > 0, 1, 0)",
    "e_or": "where(b or y < 0, 1, 0)",
    "e_not": "where(not b, 1, 0)",
    "e_chain": "where(0 <= x < 5, x, -x)",
    "e_str": "where(s == 'DE', x, 0) + where(s != kind, 1, 0)",
    "e_int": "n * 2 + x",
    "e_ne": "where(x != y, 1, 0) + where(x == y, 2, 0)",
    "e_neg": "-x + (-y)",
    "e_bool_out": "x >= y or b",
    "e_int_out": "x * 1000",
    "e_nested": "e_arith * 2 + coalesce(e_div, 0)",
}
STORED = [("x", "float64"), ("y", "float64"), ("z", "float64"), ("ctr", "float64")]
STORED += [("n", "int64"), ("b", "bool"), ("s", "string")]
OUT_DTYPES = {"e_bool_out": "bool", "e_int_out": "int64"}


def definitions() -> Definitions:
    return parse_definitions(raw(), source="kernels.yaml")


def raw() -> dict[str, Any]:
    """The definitions as written in YAML."""
    return {
        "project": "p",
        "entities": [{"name": "id", "dtype": "int64"}],
        "feature_views": [
            {
                "name": "t",
                "entities": ["id"],
                "features": [
                    {"name": name, "dtype": dtype}
                    for name, dtype in [
                        ("x", "float64"),
                        ("y", "float64"),
                        ("z", "float64"),
                        ("ctr", "float64"),
                        ("n", "int64"),
                        ("b", "bool"),
                        ("s", "string"),
                    ]
                ],
            }
        ],
        "derived_views": [
            {
                "name": "d",
                "inputs": ["t:x", "t:y", "t:z", "t:ctr", "t:n", "t:b", "t:s"],
                "request_schema": [
                    {"name": "price", "dtype": "float64"},
                    {"name": "kind", "dtype": "string"},
                ],
                "features": [
                    {"name": name, "dtype": OUT_DTYPES.get(name, "float64"), "expression": expr}
                    for name, expr in RANDOM_EXPRESSIONS.items()
                ],
            }
        ],
    }


def random_columns(rng: np.random.Generator) -> dict[str, list[Any]]:
    def floats(scale: float) -> list[Any]:
        v = np.round(rng.normal(0, scale, N), 3)
        v[rng.random(N) < 0.05] = 0.0  # zeros: division, log and pow edges
        return [None if rng.random() < 0.1 else float(x) for x in v]

    return {
        "x": floats(5),
        "y": floats(3),
        "z": floats(10),
        "ctr": [None if rng.random() < 0.1 else float(v) for v in rng.random(N)],
        "n": [None if rng.random() < 0.1 else int(v) for v in rng.integers(-100, 100, N)],
        "b": [None if rng.random() < 0.1 else bool(v) for v in rng.random(N) < 0.5],
        "s": [None if rng.random() < 0.1 else str(v) for v in rng.choice(["DE", "FR", "US"], N)],
    }


@pytest.fixture(scope="module")
def kernels(tmp_path_factory: pytest.TempPathFactory) -> dict[str, compiler.Kernel]:
    return asyncio.run(compiler.kernels_for(definitions(), tmp_path_factory.mktemp("kernels")))


async def engine_over(
    defs: Definitions, kernels: dict[str, compiler.Kernel], rows: dict[str, list[Any]]
) -> JoinEngine:
    mem = MemorySource("default")
    view = defs.views["t"]
    await mem.prepare([view])
    schema = view_schema(view)
    n = len(rows["x"])
    data = {"id": list(range(1, n + 1)), **rows, "event_timestamp": [int(time.time() * 1e6)] * n}
    await mem.write(
        view, pa.table({f.name: pa.array(data[f.name], f.type) for f in schema}, schema=schema), 0
    )
    return JoinEngine(
        {"default": mem}, ServingState(new_snapshot(defs, 1), kernels=kernels), Limits(max_rows=N)
    )


def as_float(values: list[Any]) -> Any:
    return np.array([np.nan if v is None else float(v) for v in values])


async def test_kernels_match_the_numpy_reference_on_random_data_with_nulls(
    kernels: dict[str, compiler.Kernel],
) -> None:
    defs = definitions()
    rng = np.random.default_rng(17)
    rows = random_columns(rng)
    price = [None if rng.random() < 0.1 else float(v) for v in np.round(rng.uniform(-20, 150, N), 2)]
    kind = [None if rng.random() < 0.1 else str(v) for v in rng.choice(["DE", "FR"], N)]
    engine = await engine_over(defs, kernels, rows)
    features = tuple(f"d:{name}" for name in RANDOM_EXPRESSIONS)
    req = JoinRequest({"id": list(range(1, N + 1))}, features, request_data={"price": price, "kind": kind})
    result = await engine.join(req, time.monotonic() + 30)
    got = {c.name: c for c in result.columns}

    env: dict[str, Any] = {k: as_float(v) for k, v in rows.items() if k != "s"}
    env |= {"s": rows["s"], "price": as_float(price), "kind": kind}
    irs = feature_ir(defs.derived_views["d"], defs)
    for name in RANDOM_EXPRESSIONS:  # features of the view feed later ones
        env[name] = evaluate(irs[name], env, N)
        if name in OUT_DTYPES:
            continue
        values = listed(got[name].values)
        assert all(v is None or math.isfinite(v) for v in values), f"{name}: NaN or infinity in a response"
        np.testing.assert_allclose(
            as_float(values), env[name], rtol=1e-12, atol=0, equal_nan=True, err_msg=name
        )
    expected_bool = [None if math.isnan(v) else v != 0 for v in env["e_bool_out"]]
    assert got["e_bool_out"].values == expected_bool
    expected_int = [None if math.isnan(v) else int(v) for v in env["e_int_out"]]
    assert got["e_int_out"].values == expected_int
    assert set(map(type, got["e_int_out"].values)) <= {int, type(None)}

    # One row per join takes the kernels' scalar entry (Kernel.row, no matrix): every
    # feature, value and status, as the same row of the batch.
    for i in rng.choice(N, 200, replace=False).tolist():
        one = await engine.join(
            JoinRequest({"id": [i + 1]}, features, request_data={"price": [price[i]], "kind": [kind[i]]}),
            time.monotonic() + 10,
        )
        for c in one.columns[1:]:
            [value], want = c.values, listed(got[c.name].values)[i]
            assert (type(value), value) == (type(want), want), f"{c.name}, row {i}"
            batch = got[c.name].outcome
            assert c.outcome is not None and batch is not None
            assert c.outcome.statuses == [batch.statuses[i]]


SEMANTICS = {
    "div_zero": ("x / 0", [None, None, None]),
    "zero_div_zero": ("(x - x) / 0", [None, None, None]),
    "log_zero": ("log(x - x)", [None, None, None]),
    "log_negative": ("log(-abs(x) - 1)", [None, None, None]),
    "log1p_minus_one": ("log1p(-1 + 0 * x)", [None, None, None]),
    "sqrt_negative": ("sqrt(-abs(x) - 1)", [None, None, None]),
    "exp_overflow": ("exp(x * 1000)", [None, None, 0.0]),
    "pow_fraction_of_negative": ("(-8 + 0 * x) ** (1 / 3)", [None, None, None]),
    "pow_zero_negative": ("(x - x) ** -1", [None, None, None]),
    "pow_null_zero": ("y ** 0", [1.0, None, 1.0]),
    "mul_overflow": ("x * 1e308 * 10", [None, None, None]),
    "null_propagates": ("y + 1", [3.0, None, 1.0]),
    "coalesce_handles_null": ("coalesce(y, -1) + 1", [3.0, 0.0, 1.0]),
    "where_null_condition": ("where(y > 1, 1, 0)", [1.0, None, 0.0]),
    # strict nulls (the issue: "a null input gives a null result unless the expression
    # handles it with coalesce"): where's unchosen branch and and/or's deciding operand too
    "where_unchosen_null_branch_is_null": ("where(x < 3, 7, y)", [2.0, None, 7.0]),
    "where_chosen_null_branch": ("where(x > 3, 7, y)", [7.0, None, 0.0]),
    "where_null_branch_handled_by_coalesce": ("where(x < 3, 7, coalesce(y, 0))", [2.0, 7.0, 7.0]),
    "and_false_with_null_is_null": ("where((x < 0) and (y > 5), 1, 0)", [0.0, None, 0.0]),
    "and_true_with_null_is_null": ("where((x > 0) and (y > 5), 1, 0)", [0.0, None, 0.0]),
    "and_without_null": ("where((x > 0) and (y > 1), 1, 0)", [1.0, None, 0.0]),
    "or_true_with_null_is_null": ("where((x > 0) or (y > 5), 1, 0)", [1.0, None, 0.0]),
    "or_false_with_null_is_null": ("where((x < 0) or (y > 5), 1, 0)", [0.0, None, 1.0]),
    "or_handled_by_coalesce": ("where((x > 0) or coalesce(y > 5, false), 1, 0)", [1.0, 1.0, 0.0]),
    "bucket_5": ("bucket(5 + 0 * x, [0, 10, 50, 100])", [1.0, 1.0, 1.0]),
    "bucket_75": ("bucket(75 + 0 * x, [0, 10, 50, 100])", [3.0, 3.0, 3.0]),
    "bucket_200": ("bucket(200 + 0 * x, [0, 10, 50, 100])", [4.0, 4.0, 4.0]),
    "bucket_on_an_edge": ("bucket(10 + 0 * x, [0, 10, 50, 100])", [2.0, 2.0, 2.0]),
    "bucket_below": ("bucket(-1 + 0 * x, [0, 10, 50, 100])", [0.0, 0.0, 0.0]),
    "bucket_null": ("bucket(y, [0, 10])", [1.0, None, 1.0]),
    # up to ops.LINEAR_EDGES edges a bucket counts them all, above it searches
    "bucket_32_edges": (f"bucket(x, {list(range(-16, 16))})", [21.0, 19.0, 14.0]),
    "bucket_33_edges": (f"bucket(x, {list(range(-16, 17))})", [21.0, 19.0, 14.0]),
    "bucket_40_edges_on_an_edge": (f"bucket(x - 0.5, {[e / 2 for e in range(-20, 20)]})", [28.0, 24.0, 14.0]),
    "clip_inverted": ("clip(x, 5, 1)", [1.0, 1.0, 1.0]),
    "min_null": ("min(x, y)", [2.0, None, -3.0]),
}


async def test_undefined_results_and_nulls_follow_the_documented_semantics(tmp_path: Path) -> None:
    """x is (4, 2, -3) and y is (2, null, 0) for the three rows."""
    doc = {
        "project": "p",
        "entities": [{"name": "id", "dtype": "int64"}],
        "feature_views": [
            {
                "name": "t",
                "entities": ["id"],
                "features": [{"name": "x", "dtype": "float64"}, {"name": "y", "dtype": "float64"}],
            }
        ],
        "derived_views": [
            {
                "name": "d",
                "inputs": ["t:x", "t:y"],
                "features": [
                    {"name": k, "dtype": "float64", "expression": e} for k, (e, _) in SEMANTICS.items()
                ],
            }
        ],
    }
    defs = parse_definitions(doc, source="s.yaml")
    kernels = await compiler.kernels_for(defs, tmp_path)
    mem = MemorySource("default")
    view = defs.views["t"]
    await mem.prepare([view])
    schema = view_schema(view)
    data = {
        "id": [1, 2, 3],
        "x": [4.0, 2.0, -3.0],
        "y": [2.0, None, 0.0],
        "event_timestamp": [int(time.time() * 1e6)] * 3,
    }
    await mem.write(
        view, pa.table({f.name: pa.array(data[f.name], f.type) for f in schema}, schema=schema), 0
    )
    engine = JoinEngine({"default": mem}, ServingState(new_snapshot(defs, 1), kernels=kernels), Limits())
    result = await engine.join(
        JoinRequest({"id": [1, 2, 3]}, tuple(f"d:{k}" for k in SEMANTICS)), time.monotonic() + 10
    )
    got = {c.name: c.values for c in result.columns}
    assert {k: got[k] for k in SEMANTICS} == {k: v for k, (_, v) in SEMANTICS.items()}
    for i in range(3):  # a row alone: the kernel's scalar entry (Kernel.row)
        alone = JoinRequest({"id": [i + 1]}, tuple(f"d:{k}" for k in SEMANTICS))
        one = {c.name: c.values for c in (await engine.join(alone, time.monotonic() + 10)).columns[1:]}
        assert one == {k: [got[k][i]] for k in SEMANTICS}, i
        assert all(type(v[0]) is type(got[k][i]) for k, v in one.items()), i
    statuses = {c.name: {s.name for s in c.outcome.statuses} for c in result.columns if c.outcome is not None}
    assert all(s == {"PRESENT"} for s in statuses.values()), "an undefined result is null with status PRESENT"


def test_a_restart_loads_kernels_from_the_disk_cache(tmp_path: Path) -> None:
    """A second process finds the machine code the first one built: no compile."""
    import subprocess
    import sys

    defs = definitions()
    compiler.build_sync(compiler.specs_of(defs), tmp_path)
    spec = compiler.specs_of(defs)[0]
    code = (
        "from pathlib import Path\n"
        "from featurestore.derived.compiler import load, specs_of\n"
        "from tests.unit.test_derived_kernels import definitions\n"
        f"k = load(specs_of(definitions())[0], Path({str(tmp_path / (spec.module + '.py'))!r}))\n"
        "print('cached' if k.from_cache else 'compiled')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "cached"
    assert compiler.is_built(tmp_path / f"{spec.module}.py")


def test_with_numba_cache_dir_set_a_built_kernel_is_not_built_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """NUMBA_CACHE_DIR (deploy/k8s) moves numba's index away from the module: the build
    marker still says it is built, so a second check (a restart, a swap) starts no
    build process, and a fresh process loads machine code."""
    import os
    import subprocess
    import sys

    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path / "numba"))
    builds: list[list[str]] = []
    real = compiler.build_command

    def counted(paths: list[Path]) -> list[str]:
        builds.append(real(paths))
        return builds[-1]

    monkeypatch.setattr(compiler, "build_command", counted)
    defs = definitions()
    compiler.check_definitions(defs, tmp_path / "modules")
    compiler.check_definitions(defs, tmp_path / "modules")
    asyncio.run(compiler.build(compiler.specs_of(defs), tmp_path / "modules"))
    assert len(builds) == 1
    assert not (tmp_path / "modules" / "__pycache__").exists(), "numba's index went to NUMBA_CACHE_DIR"
    spec = compiler.specs_of(defs)[0]
    code = (
        "from pathlib import Path\n"
        "from featurestore.derived.compiler import load, specs_of\n"
        "from tests.unit.test_derived_kernels import definitions\n"
        f"k = load(specs_of(definitions())[0], Path({str(tmp_path / 'modules' / (spec.module + '.py'))!r}))\n"
        "print('cached' if k.from_cache else 'compiled')\n"
    )
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "numba")}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT, env=env
    )
    assert out.stdout.strip() == "cached"


def test_a_build_marker_of_another_python_or_numba_does_not_count(tmp_path: Path) -> None:
    defs = definitions()
    compiler.check_definitions(defs, tmp_path)
    path = tmp_path / f"{compiler.specs_of(defs)[0].module}.py"
    assert compiler.is_built(path)
    marker = path.with_suffix(".built")
    marker.write_text(marker.read_text().replace("cpython-", "cpython-0"))
    assert not compiler.is_built(path)


@pytest.mark.parametrize(
    "prints",
    [
        "",
        'print("{debug: loading}")\nprint(\'{"path": 1}\')\n',  # what looks like the build's lines
        "import os\nos.write(1, b'\\xff')\nos.write(2, b'\\xfe')\n",  # bytes that are not UTF-8
    ],
)
async def test_a_kernel_that_does_not_compile_fails_naming_its_feature(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, prints: str
) -> None:
    """A trusted function numba cannot compile never reaches serving; the error names the
    feature (numba cites the function's file relative to the working directory), also
    when the trusted module prints what looks like the build's JSON lines, or bytes that
    are not UTF-8 (a server's build decodes the child's output when it failed)."""
    module = f"trusted_fns_b{len(prints)}"
    (tmp_path / f"{module}.py").write_text(f"{prints}def bad(a):\n    return {{'not': a}}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)  # numba then cites the module as "trusted_fns_bN.py", a relative path
    doc = raw()
    doc["derived_views"][0]["features"] = [
        {"name": "f", "dtype": "float64", "function": f"{module}:bad", "args": ["x"]}
    ]
    defs = parse_definitions(doc, source="k.yaml")
    from featurestore.errors import DefinitionError

    where = r"derived_views\[d\]\.features\[f\]\.function: the kernel does not compile"
    with pytest.raises(DefinitionError, match=where + ": TypingError"):
        await compiler.kernels_for(defs, tmp_path / "cache")
    with pytest.raises(DefinitionError, match=where):
        compiler.check_definitions(defs, tmp_path / "cache")
    assert list((tmp_path / "cache").glob("dv_*.py")) == [], "a module that failed is not left in the cache"


async def test_a_trusted_module_writing_bytes_that_are_not_utf8_builds_as_any_other(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What trusted code writes reaches the build's stderr, whatever its encoding."""
    (tmp_path / "trusted_fns_raw.py").write_text(
        "import os, sys\nos.write(1, b'\\xff\\xfe')\nsys.stderr.buffer.write(b'\\xff')\n"
        "def twice(a):\n    return a * 2\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    doc = raw()
    doc["derived_views"][0]["features"] = [
        {"name": "f", "dtype": "float64", "function": "trusted_fns_raw:twice", "args": ["x"]}
    ]
    defs = parse_definitions(doc, source="k.yaml")
    compiler.check_definitions(defs, tmp_path / "cli-cache")  # the CLI's build (validate, apply)
    kernels = await compiler.kernels_for(defs, tmp_path / "cache")  # a server's
    assert [k.spec.view for k in kernels.values()] == ["d"]


NESTED = {
    "long_sum": ("float64", " + ".join(["x"] * 201)),  # a 200-deep tree of additions: the limit
    "many_nots": ("bool", "not " * 200 + "b"),
    "deep_calls": ("float64", "abs(" * 75 + "x" + ")" * 75),
    "wide_min": ("float64", f"min({', '.join(['x'] * 63)}, -1)"),
}


async def test_deeply_nested_expressions_the_checker_accepts_compile_and_compute(tmp_path: Path) -> None:
    """Python's parser allows 200 nested parentheses; the generated kernel nests none."""
    doc = raw()
    doc["derived_views"][0]["features"] = [
        {"name": name, "dtype": dtype, "expression": expr} for name, (dtype, expr) in NESTED.items()
    ]
    kernel = (await compiler.kernels_for(parse_definitions(doc, source="k.yaml"), tmp_path))["d"]
    rows: dict[str, list[float | None]] = {"x": [1.5, -2.0, None], "b": [1.0, 0.0, None]}
    inp = np.array([[math.nan if v is None else v for v in rows[k.name]] for k in kernel.spec.inputs])
    out = kernel.run(np.ascontiguousarray(inp))
    np.testing.assert_array_equal(out[0], [301.5, -402.0, math.nan])
    np.testing.assert_array_equal(out[1], [1.0, 0.0, math.nan])
    np.testing.assert_array_equal(out[2], [1.5, 2.0, math.nan])
    np.testing.assert_array_equal(out[3], [-1.0, -2.0, math.nan])


async def test_a_trusted_function_runs_in_the_kernel_with_nulls_short_circuited(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "trusted_fns_c.py").write_text("def risk(a, b):\n    return a * 10 + b\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    doc = raw()
    doc["derived_views"][0]["features"] = [
        {"name": "r", "dtype": "float64", "function": "trusted_fns_c:risk", "args": ["x", "y"]},
        {"name": "r2", "dtype": "float64", "expression": "r / 2"},
    ]
    defs = parse_definitions(doc, source="k.yaml")
    kernels = await compiler.kernels_for(defs, tmp_path / "cache")
    rows: dict[str, list[Any]] = {
        "x": [1.0, None],
        "y": [2.0, 3.0],
        "z": [0.0, 0.0],
        "ctr": [0.0, 0.0],
        "n": [1, 1],
        "b": [True, True],
        "s": ["a", "b"],
    }
    engine = await engine_over(defs, kernels, rows)
    result = await engine.join(JoinRequest({"id": [1, 2]}, ("d:r", "d:r2")), time.monotonic() + 10)
    assert [c.values for c in result.columns[1:]] == [[12.0, None], [6.0, None]]


async def test_features_reading_an_int64_feature_see_the_value_it_serves(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An int64 feature is truncated toward zero (null outside int64) where it is
    computed, so ``units * 10`` is 20 when ``units = 1 * 2.7`` serves 2, and a value
    beyond int64 is null for its readers too (in its own view and in another)."""
    (tmp_path / "trusted_fns_i.py").write_text("def scale(a):\n    return a * 2.7\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    doc = raw()
    doc["derived_views"][0]["features"] = [
        {"name": "units", "dtype": "int64", "expression": "x * 2.7"},
        {"name": "units10", "dtype": "float64", "expression": "units * 10"},
        {"name": "whole", "dtype": "int64", "expression": "x"},
        {"name": "whole_plus", "dtype": "float64", "expression": "whole + 0"},
        {"name": "fn_units", "dtype": "int64", "function": "trusted_fns_i:scale", "args": ["x"]},
        {"name": "fn_units10", "dtype": "float64", "expression": "fn_units * 10"},
    ]
    doc["derived_views"].append(
        {
            "name": "d2",
            "inputs": {"u": "d:units"},
            "features": [{"name": "u10", "dtype": "float64", "expression": "u * 10"}],
        }
    )
    defs = parse_definitions(doc, source="k.yaml")
    kernels = await compiler.kernels_for(defs, tmp_path / "cache")
    x = [1.0, -1.0, 1e30, 2.0**63, -(2.0**63), None]
    fill = {"y": 0.0, "z": 0.0, "ctr": 0.0, "n": 1, "b": True, "s": "a"}
    engine = await engine_over(defs, kernels, {"x": x, **{k: [v] * len(x) for k, v in fill.items()}})
    names = ("d:units", "d:units10", "d2:u10", "d:whole", "d:whole_plus", "d:fn_units", "d:fn_units10")
    result = await engine.join(JoinRequest({"id": list(range(1, 7))}, names), time.monotonic() + 10)
    got = {c.name: c.values for c in result.columns[1:]}
    assert got == {
        "units": [2, -2, None, None, None, None],
        "units10": [20.0, -20.0, None, None, None, None],
        "u10": [20.0, -20.0, None, None, None, None],
        "whole": [1, -1, None, None, -(2**63), None],
        "whole_plus": [1.0, -1.0, None, None, -(2.0**63), None],
        "fn_units": [2, -2, None, None, None, None],
        "fn_units10": [20.0, -20.0, None, None, None, None],
    }


async def test_a_trusted_function_s_integer_arithmetic_wraps_at_64_bits_as_the_docs_say(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """numba's fixed-width integers wrap inside the function, where the kernel cannot see
    it: served as is (docs/definitions.md, "Trusted functions", shows this example), while
    the same arithmetic in float is null outside int64, as an int64 feature is."""
    (tmp_path / "trusted_fns_w.py").write_text(
        "def big(a):\n    return int(a) * 10**12\n\n\ndef big_float(a):\n    return a * 1e12\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    doc = raw()
    doc["derived_views"][0]["features"] = [
        {"name": "big", "dtype": "int64", "function": "trusted_fns_w:big", "args": ["x"]},
        {"name": "big_float", "dtype": "int64", "function": "trusted_fns_w:big_float", "args": ["x"]},
    ]
    defs = parse_definitions(doc, source="k.yaml")
    kernels = await compiler.kernels_for(defs, tmp_path / "cache")
    x = [2.0, 1e7, None]
    fill = {"y": 0.0, "z": 0.0, "ctr": 0.0, "n": 1, "b": True, "s": "a"}
    engine = await engine_over(defs, kernels, {"x": x, **{k: [v] * len(x) for k, v in fill.items()}})
    wrapped = 10**19 - 2**64  # what Python gives, modulo 2^64
    for ids, big, big_float in (
        ([1, 2, 3], [2 * 10**12, wrapped, None], [2 * 10**12, None, None]),  # the batch kernel
        ([2], [wrapped], [None]),  # the one-row kernel
    ):
        result = await engine.join(JoinRequest({"id": ids}, ("d:big", "d:big_float")), time.monotonic() + 10)
        assert [c.values for c in result.columns[1:]] == [big, big_float]
        assert (
            result.columns[1].outcome is not None and result.columns[1].outcome.statuses[-1] is Status.PRESENT
        )
    trusted = docs_section("### Trusted functions")
    assert "`def big(a): return int(a) * 10**12`" in trusted and f"`{wrapped}`" in trusted


def docs_section(heading: str) -> str:
    """docs/definitions.md from ``heading`` on."""
    docs = (Path(__file__).resolve().parents[2] / "docs" / "definitions.md").read_text()
    return docs[docs.index(heading) :]


def _linux_at_least(major: int, minor: int) -> bool:
    import platform
    import re
    import sys

    found = re.match(r"(\d+)\.(\d+)", platform.release())
    return (
        sys.platform.startswith("linux")
        and found is not None
        and tuple(map(int, found.groups())) >= (major, minor)
    )


def _private_clean_kb() -> int:
    """This process's own (unshared) clean pages of LLVM's read-only mappings: those
    MADV_PAGEOUT can take back (pages another process maps too are left alone)."""
    from featurestore.derived import pages

    total, in_library = 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        parts = line.split()
        if parts and "-" in parts[0] and not parts[0].endswith(":"):
            in_library = len(parts) >= 6 and pages.LIBRARY in parts[5] and "w" not in parts[1]
        elif in_library and parts[0] == "Private_Clean:":
            total += int(parts[1])
    return total


@pytest.mark.skipif(not _linux_at_least(0, 0), reason="/proc/self/maps is Linux's")
def test_the_llvm_library_is_found_by_the_name_its_pages_are_released_by(
    kernels: dict[str, compiler.Kernel],
) -> None:
    """featurestore/derived/pages.py finds llvmlite's library in /proc/self/maps by name:
    if llvmlite renames it, the memory shortcut would silently stop working."""
    from featurestore.derived import pages

    assert kernels  # numba and llvmlite are loaded in this process
    assert pages.library_mappings(), f"no mapping named {pages.LIBRARY} in /proc/self/maps"


@pytest.mark.skipif(
    not _linux_at_least(5, 4),
    reason="MADV_PAGEOUT needs Linux 5.4+ (elsewhere release_llvm_pages does nothing)",
)
def test_releasing_llvm_pages_drops_them_from_this_process_and_kernels_still_run(
    kernels: dict[str, compiler.Kernel],
) -> None:
    import numba

    from featurestore.derived import pages

    numba.njit("float64(float64)")(lambda v: v + 1.0)  # runs LLVM: faults its code in again
    before = _private_clean_kb()
    assert pages.release_llvm_pages() > 0
    after = _private_clean_kb()
    assert after < before or before == 0, (before, after)
    result = kernels["d"].run(np.zeros((len(kernels["d"].spec.inputs), 2)))
    assert result.shape == (len(RANDOM_EXPRESSIONS), 2)


# A fresh process loads a built kernel as a server does, recording in order numba's
# runtime compile (LLVM, even for a load from the cache), each release of LLVM's pages
# and each kernel load.
LOADS_RECORDED = """
import sys
from pathlib import Path
from numba.core.runtime.nrt import rtsys
from featurestore.derived import compiler, pages
from tests.unit.test_derived_kernels import definitions
events = []
def recorded(name, real):
    def call(*args):
        events.append(name)
        return real(*args)
    return call
rtsys.initialize = recorded("runtime compiled", rtsys.initialize)
pages.release_llvm_pages = recorded("released", pages.release_llvm_pages)
compiler.release_llvm_pages = pages.release_llvm_pages
compiler.load = recorded("loaded", compiler.load)
spec = compiler.specs_of(definitions())[0]
(kernel,) = compiler._load_all([(spec, Path(sys.argv[1]) / (spec.module + ".py"))], True)
assert kernel is not None and kernel.from_cache
first = events.index("runtime compiled")  # it is called again and again, compiling once
print(" / ".join(e for i, e in enumerate(events) if e != "runtime compiled" or i == first))
"""


def test_numbas_runtime_compiles_and_its_llvm_pages_are_released_before_a_kernel_loads(
    tmp_path: Path,
) -> None:
    """Even a load from the cache runs LLVM: numba compiles its runtime at its first
    use. Done inside the load, that compile's pages, numba's import's and the load's
    were all in at once (the server's peak RSS: +92 MB with the demo's derived view
    instead of +49 MB once released). ``pages.prepare_numba`` compiles the runtime
    first and releases the pages after each step. If numba moves the entry points it
    calls, this fails (``prepare_numba`` would fall back silently)."""
    import subprocess
    import sys

    compiler.build_sync(compiler.specs_of(definitions()), tmp_path)
    out = subprocess.run(
        [sys.executable, "-c", LOADS_RECORDED, str(tmp_path)], capture_output=True, text=True, cwd=ROOT
    )
    assert out.returncode == 0, out.stderr[-2000:]
    events = out.stdout.strip().split(" / ")
    assert events == ["released", "runtime compiled", "released", "released", "loaded", "released"], events


async def test_a_compile_over_the_time_limit_names_the_views_and_the_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from featurestore.errors import DefinitionError

    monkeypatch.setattr(compiler, "BUILD_TIMEOUT_SECONDS", 0.01)
    message = r"derived_views\[d\]: compiling the kernels did not finish within 0.01 s"
    with pytest.raises(DefinitionError, match=message):
        await compiler.kernels_for(definitions(), tmp_path / "async")
    with pytest.raises(DefinitionError, match=message):
        compiler.check_definitions(definitions(), tmp_path / "sync")


def test_validate_builds_into_the_cache_dir_of_its_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import yaml

    from featurestore.cli import main

    definitions_file = tmp_path / "kernels.yaml"
    definitions_file.write_text(yaml.safe_dump(raw()))
    config = tmp_path / "config.yaml"
    config.write_text(f"derived: {{cache_dir: {tmp_path / 'configured'}}}\n")
    assert main(["validate", str(definitions_file), "--config", str(config)]) == 0
    assert "OK - project p" in capsys.readouterr().out
    (module,) = (tmp_path / "configured").glob("dv_d_*.py")
    assert compiler.is_built(module)


def test_a_module_that_fails_to_load_is_not_left_half_initialised(tmp_path: Path) -> None:
    import sys

    from featurestore.derived.codegen import KernelSpec

    spec = KernelSpec("v", "dv_v_broken", "raise RuntimeError('boom')\n", (), ("f",))
    path = tmp_path / f"{spec.module}.py"
    path.write_text(spec.source)
    with pytest.raises(RuntimeError, match="boom"):
        compiler.load(spec, path)
    assert f"featurestore_derived_{spec.module}" not in sys.modules


def test_an_unwritable_cache_directory_is_a_clear_error(tmp_path: Path) -> None:
    from featurestore.errors import FailedPrecondition

    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(FailedPrecondition, match=r"derived.cache_dir .* is not writable"):
        compiler.check_definitions(definitions(), blocker / "cache")


async def test_a_zero_result_leaves_as_positive_zero_and_exp_is_a_number_up_to_its_overflow(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "trusted_sign.py").write_text(
        "import math\n\ndef sign(x):\n    return math.copysign(1.0, x)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    doc = raw()
    doc["derived_views"][0]["features"] = [
        {"name": "neg", "dtype": "float64", "expression": "-x"},
        {"name": "scaled", "dtype": "float64", "expression": "x / -5"},
        {"name": "root", "dtype": "float64", "expression": "sqrt(x * -1)"},
        {"name": "e", "dtype": "float64", "expression": "exp(y)"},
        # a feature reading another sees the value served: +0.0 (its sign: 1)
        {"name": "sign", "dtype": "float64", "function": "trusted_sign:sign", "args": ["neg"]},
    ]
    kernel = (await compiler.kernels_for(parse_definitions(doc, source="k.yaml"), tmp_path / "cache"))["d"]
    rows = {"x": [0.0, 2.0], "y": [709.782, 709.783]}  # ln(DBL_MAX) = 709.7827...
    inp = np.array([rows.get(k.name, [math.nan] * 2) for k in kernel.spec.inputs])
    out = kernel.run(np.ascontiguousarray(inp))
    assert [math.copysign(1.0, v) for v in out[:3, 0]] == [1.0, 1.0, 1.0]  # +0.0, never -0.0
    assert out[0, 1] == -2.0 and out[1, 1] == -0.4 and math.isnan(out[2, 1])
    assert math.isfinite(out[3, 0]) and math.isnan(out[3, 1])  # a number, then overflow: null
    assert list(out[4]) == [1.0, -1.0]


def test_a_rollback_to_a_version_whose_kernels_no_longer_build_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Version 1's trusted function has since left the deployment: publishing it again
    would leave every server unable to swap to it. The rollback is refused, like an
    apply of those definitions, and the registry keeps its current version."""
    import importlib
    import sys

    import yaml

    from featurestore.cli import main

    (tmp_path / "trusted_rb.py").write_text("def twice(a):\n    return a * 2\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    config = tmp_path / "config.yaml"
    config.write_text(
        f"project: p\nregistry: {{kind: file, path: {tmp_path / 'registry'}}}\n"
        f"derived: {{cache_dir: {tmp_path / 'cache'}}}\n"
    )
    v1 = raw()
    v1["derived_views"][0]["features"] = [
        {"name": "f", "dtype": "float64", "function": "trusted_rb:twice", "args": ["x"]}
    ]
    v2 = {k: v for k, v in raw().items() if k != "derived_views"}
    for name, doc in (("v1.yaml", v1), ("v2.yaml", v2)):
        (tmp_path / name).write_text(yaml.safe_dump(doc))
        assert main(["apply", str(tmp_path / name), "--config", str(config)]) == 0
    (tmp_path / "trusted_rb.py").unlink()
    monkeypatch.delitem(sys.modules, "trusted_rb")
    importlib.invalidate_caches()
    capsys.readouterr()
    assert main(["registry", "rollback", "1", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert (
        "derived_views[d].features[f].function: the kernel does not compile" in err and "trusted_rb" in err
    ), err
    assert main(["registry", "history", "--config", str(config)]) == 0
    assert "rollback" not in capsys.readouterr().out
