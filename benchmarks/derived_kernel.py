"""Derived features, section 1 of ``python -m benchmarks.derived``: kernel throughput.

100,000 rows of ``ctr_x_price_bucket = ctr_30d * bucket(item_price, [0, 10, 50, 100])``:
the numba kernel the server runs (built by featurestore.derived.compiler), the same with
the serving path's list -> array conversion of its inputs, numpy, and a serial
pure-Python loop. All four must agree.
"""

from __future__ import annotations

import asyncio
import statistics
import struct
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from benchmarks.run import log
from featurestore.definitions.parser import parse_definitions

EDGES = [0.0, 10.0, 50.0, 100.0]
N_KERNEL = 100_000
# the kernel section's implementations (derived.json names these three)
NUMBA = "numba kernel (float64 matrix in, out)"
PYTHON = "serial pure-Python loop"
NUMPY = "numpy, vectorized"


def best_ms(fn: Callable[[], object], repeat: int) -> tuple[float, float]:
    """(best, median) wall time of ``fn`` in ms."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return min(times), statistics.median(times)


def kernel_section(data: Path) -> dict[str, Any]:
    from featurestore.derived import compiler

    ctr = pq.read_table(data / "users.parquet", columns=["ctr_30d"])["ctr_30d"].to_numpy()[:N_KERNEL]
    price = np.round(np.random.default_rng(1).uniform(0, 150, N_KERNEL), 2)
    ctr_list, price_list = ctr.tolist(), price.tolist()
    doc = {
        "project": "bench",
        "entities": [{"name": "user_id", "dtype": "int64"}],
        "feature_views": [{"name": "user_activity", "entities": ["user_id"], "features": [{"name": "ctr_30d", "dtype": "float64"}]}],
        "derived_views": [
            {
                "name": "d",
                "inputs": ["user_activity:ctr_30d"],
                "request_schema": [{"name": "item_price", "dtype": "float64"}],
                "features": [{"name": "ctr_x_price_bucket", "dtype": "float64", "expression": "ctr_30d * bucket(item_price, [0, 10, 50, 100])"}],
            }
        ],
    }  # fmt: skip
    defs = parse_definitions(doc, source="bench.yaml")
    with tempfile.TemporaryDirectory() as cache:
        kernel = asyncio.run(compiler.kernels_for(defs, Path(cache)))["d"]
    order = [k.name for k in kernel.spec.inputs]
    matrix = np.ascontiguousarray(np.stack([ctr if n == "ctr_30d" else price for n in order]))
    lists = [ctr_list if n == "ctr_30d" else price_list for n in order]
    edges = np.array(EDGES)

    def numba_kernel() -> Any:
        return kernel.run(matrix)[0]

    def numba_serving_path() -> Any:  # what a join does (derived/evaluate.py): lists in, an array out
        n = len(lists[0])
        inp, fmt = np.empty((len(lists), n)), f"{n}d"
        for i, row in enumerate(lists):
            struct.pack_into(fmt, inp, i * n * 8, *row)  # type: ignore[arg-type]  # a buffer
        out = np.empty((len(kernel.spec.features), n))
        kernel.into(inp, out)  # the mask of rows holding a null: this one has none
        return out[0]  # from ARRAY_ROWS rows on the encoders take the output row as it is

    def numpy_vectorized() -> Any:
        with np.errstate(all="ignore"):
            b = np.searchsorted(edges, price, side="right").astype(np.float64)
            r = np.where(np.isnan(price), np.nan, ctr * b)
            return np.where(np.isfinite(r), r, np.nan)

    def python_loop() -> list[float | None]:
        out: list[float | None] = []
        for c, p in zip(ctr_list, price_list, strict=True):
            if c is None or p is None:
                out.append(None)
                continue
            b = 0
            for e in EDGES:
                if e <= p:
                    b += 1
            out.append(c * b)
        return out

    reference = numpy_vectorized()
    for name, fn in (
        ("numba", numba_kernel),
        ("numba+conversion", numba_serving_path),
        ("python", python_loop),
    ):
        np.testing.assert_allclose(np.array(fn(), dtype=np.float64), reference, rtol=0, atol=0, err_msg=name)
    rows = {}
    for name, fn, repeat in (
        (NUMBA, numba_kernel, 200),
        ("numba kernel + the join's list -> array conversion", numba_serving_path, 30),
        (NUMPY, numpy_vectorized, 50),
        (PYTHON, python_loop, 5),
    ):
        best, median = best_ms(fn, repeat)
        rows[name] = {"best_ms": round(best, 3), "median_ms": round(median, 3)}
        log(f"kernel: {name}: best {best:.3f} ms, median {median:.3f} ms per {N_KERNEL:,} rows")
    return {"rows": N_KERNEL, "kernel_from_cache": kernel.from_cache, "results": rows}
