"""What a server does with a kernel that cannot be served as built: cache files missing
where it looks (built again in the build process, never compiled while serving), a
trusted function that raises (a null for that row), a load that keeps failing
(remembered), a trusted package that cannot be read or imported (a named error).
Kernels are built by the real build process into a temporary cache."""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import REGISTRY

from featurestore.definitions.parser import parse_definitions
from featurestore.derived import compiler
from featurestore.derived.loadguard import CompileDuringLoad
from featurestore.errors import DefinitionError
from tests.unit.test_derived_cache import counting_builds, doc, engine_over, served, trusted_package


def compiles(result: str) -> float:
    return REGISTRY.get_sample_value("featurestore_derived_compiles_total", {"result": result}) or 0.0


def numba_index_files(cache: Path) -> list[Path]:
    """The numba index files of the kernels built into ``cache`` (next to the modules, or
    under NUMBA_CACHE_DIR when the tests run with it set)."""
    where = [cache]
    if os.environ.get("NUMBA_CACHE_DIR"):
        where.append(Path(os.environ["NUMBA_CACHE_DIR"]))
    return [f for d in where for f in d.rglob("dv_d_*.nbi")]


async def test_a_kernel_whose_cache_files_are_missing_is_built_again_and_never_compiled_while_serving(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """validate built the kernel, then its numba index went away (a cleared tmpfs, a
    read-only copy of the cache, another worker's forget): numba would compile it in
    the serving process, holding Python's lock for every request. The load refuses
    that: the build process builds it again and the server loads machine code."""
    defs = parse_definitions(doc(["u:x", "u:y"], "x * 37 - y"), source="f.yaml")
    compiler.check_definitions(defs, tmp_path / "cache")
    index = numba_index_files(tmp_path / "cache")
    assert index
    for f in index:
        f.unlink()
    builds = counting_builds(monkeypatch)
    missed = compiles("cache_missed")
    with caplog.at_level(logging.WARNING, logger="featurestore.derived.compiler"):
        kernel = (await compiler.kernels_for(defs, tmp_path / "cache"))["d"]
    assert kernel.from_cache
    assert kernel.run(np.array([[10.0], [3.0]]))[0, 0] == 367.0
    assert compiles("cache_missed") == missed + 1
    assert len(builds) == 1  # built again, in the build process
    assert any(
        "does not load" in r.getMessage() and "no loadable cache entry" in r.getMessage()
        for r in caplog.records
    )


RAISING = """
def risk(a):
    if a <= 0.0:
        raise ValueError("a must be positive")
    assert a < 100.0
    return a * 2.0
"""


async def test_a_trusted_function_that_raises_gives_a_null_for_that_row_and_the_kernel_serves(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A function raising for some rows (here for 0, which a load's warm-up passes, and
    above 100) is valid Python: each such row is null, the others are served, and the
    join never fails."""
    function = trusted_package(tmp_path, "trusted_pkg_raising", RAISING, monkeypatch)
    defs = parse_definitions(doc([], "", ("price",), function=function, args=("price",)), source="f.yaml")
    compiler.check_definitions(defs, tmp_path / "cache")
    kernels = await compiler.kernels_for(defs, tmp_path / "cache")
    out = kernels["d"].run(np.array([[10.0, -1.0, 500.0, 0.0, 3.0]]))
    assert out[0, 0] == 20.0 and out[0, 4] == 6.0
    assert all(math.isnan(v) for v in out[0, 1:4])
    engine = await engine_over(defs, kernels)
    assert await served(engine, {"price": [500.0]}) is None
    assert await served(engine, {"price": [7.0]}) == 14.0


FAILS_OUTSIDE_THE_BUILD = """
import sys

if not sys.argv[0].endswith("build.py"):
    raise RuntimeError("this module only imports in the build process")


def risk(a):
    return a
"""


async def test_a_kernel_that_still_does_not_load_once_built_again_is_not_built_again_on_retries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The registry applier retries a failed swap every few seconds: a kernel that was
    built, failed to load, was built again and still failed is remembered, so the
    retries fail at once instead of starting a build process each."""
    function = trusted_package(tmp_path, "trusted_pkg_load_fails", FAILS_OUTSIDE_THE_BUILD, monkeypatch)
    raw = doc(["u:x"], "", function=function, args=("x",))
    defs = parse_definitions(raw, source="f.yaml", check_functions=False)
    builds = counting_builds(monkeypatch)
    with pytest.raises(DefinitionError, match=r"built again but does not load.*only imports in the build"):
        await compiler.kernels_for(defs, tmp_path / "cache")
    assert len(builds) == 2  # the first build, and the one after the failed load
    for _ in range(2):
        with pytest.raises(DefinitionError, match="not built again"):
            await compiler.kernels_for(defs, tmp_path / "cache")
    assert len(builds) == 2


def test_an_unreadable_file_in_a_trusted_package_refuses_the_kernel_naming_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reviewer's case: a file of the package cannot be read (a symlink to
    /proc/self/mem reads as an I/O error, even for root). The kernel used to be named
    with a constant in place of the package's hash, so a changed package kept serving
    the machine code of the old one. It is refused instead, naming the file."""
    function = trusted_package(
        tmp_path, "trusted_pkg_unreadable", "def risk(a):\n    return a\n", monkeypatch
    )
    unreadable = tmp_path / "code" / "trusted_pkg_unreadable" / "unreadable"
    unreadable.symlink_to("/proc/self/mem")
    defs = parse_definitions(doc(["u:x"], "", function=function, args=("x",)), source="f.yaml")
    for _ in range(2):  # and after the package changed: never one name for both
        with pytest.raises(DefinitionError) as e:
            compiler.specs_of(defs)
        assert "derived_views[d]: cannot read" in str(e.value) and str(unreadable) in str(e.value)
        (tmp_path / "code" / "trusted_pkg_unreadable" / "kernels.py").write_text(
            "def risk(a):\n    return a * 1000\n"
        )
    unreadable.unlink()
    (spec,) = compiler.specs_of(defs)
    assert spec.module.startswith("dv_d_")


@pytest.mark.parametrize(
    ("source", "error"),
    [
        ("def risk(a):\n    return a +\n", "SyntaxError"),
        ("raise RuntimeError('no config')\n", "RuntimeError: no config"),
    ],
)
def test_a_trusted_module_that_does_not_import_is_an_error_naming_the_feature(
    source: str, error: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = "trusted_pkg_broken_" + error.partition(":")[0].lower()
    function = trusted_package(tmp_path, name, source, monkeypatch)
    with pytest.raises(DefinitionError) as e:
        parse_definitions(doc(["u:x"], "", function=function, args=("x",)), source="f.yaml")
    assert f"f.yaml: derived_views[d].features[s].function: cannot import '{name}.kernels': {error}" in str(
        e.value
    )


def test_the_build_marker_reads_package_metadata_once_per_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """``marker()`` is checked for every kernel of every swap, on the event loop: the
    numba version (package metadata, ~0.7 ms a read) is read once, while the marker
    still follows NUMBA_CACHE_DIR."""
    import importlib.metadata

    from featurestore.derived import build

    monkeypatch.setenv("NUMBA_CACHE_DIR", "/somewhere/else")
    elsewhere = build.marker()
    monkeypatch.delenv("NUMBA_CACHE_DIR")
    here = build.marker()
    assert "NUMBA_CACHE_DIR=/somewhere/else;" in elsewhere and elsewhere != here

    def unread(name: str) -> str:
        raise AssertionError(f"package metadata of {name} read again")

    monkeypatch.setattr(importlib.metadata, "version", unread)
    assert build.marker() == here


async def test_a_kernel_whose_cache_entry_went_missing_again_is_loaded_at_the_next_swap(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cache entry missing at the last load (another worker's forget() between this
    one's rebuild and its load) passes: it is not remembered as a lasting failure."""
    defs = parse_definitions(doc(["u:x"], "x * 2"), source="f.yaml")
    real = compiler.load

    def missing(spec: object, path: Path) -> None:
        raise CompileDuringLoad("numba found no cache entry for the kernel")

    monkeypatch.setattr(compiler, "load", missing)
    with pytest.raises(DefinitionError, match="built again but does not load"):
        await compiler.kernels_for(defs, tmp_path / "cache")
    monkeypatch.setattr(compiler, "load", real)
    assert list(await compiler.kernels_for(defs, tmp_path / "cache")) == ["d"]


@pytest.mark.parametrize("held", [b"", b"garbage that is not the kernel's source\n", b"\xff\xfe"])
async def test_a_module_file_that_does_not_hold_its_source_is_written_again_and_built(
    held: bytes, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A crash after the module was linked in but before the disk had its blocks leaves
    it empty; built as it is, the kernel would fail every load and be refused for good."""
    defs = parse_definitions(doc(["u:x", "u:y"], f"x * {len(held) + 1041} - y"), source="f.yaml")
    (spec,) = compiler.specs_of(defs)
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / f"{spec.module}.py").write_bytes(held)
    with caplog.at_level(logging.WARNING, logger="featurestore.derived.compiler"):
        kernel = (await compiler.kernels_for(defs, cache))["d"]
    assert kernel.run(np.array([[10.0], [3.0]]))[0, 0] == 10.0 * (len(held) + 1041) - 3.0
    assert (cache / f"{spec.module}.py").read_text(encoding="utf-8") == spec.source
    assert any("does not hold its source" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    ("target", "error"),
    [
        ("{pkg}.kernels:bad", "UnsupportedBytecodeError"),  # numba cannot compile its body
        ("math:floor", "not a function"),  # a builtin: numba cannot jit it
    ],
)
def test_a_trusted_function_that_does_not_compile_is_an_error_naming_its_feature(
    target: str, error: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A view of several trusted functions: the error says which feature's failed, not
    only that the view's kernel did not compile."""
    pkg = f"trusted_pkg_uncompilable_{error.split()[0].lower()}"
    source = "def risk(x):\n    return x * 2.0\n\n\ndef bad(x):\n    import os\n    return x + len(os.sep)\n"
    good = trusted_package(tmp_path, pkg, source, monkeypatch)
    definitions = doc(["u:x"], "", function=good, args=("x",))
    definitions["derived_views"][0]["features"].append(
        {"name": "t", "dtype": "float64", "function": target.format(pkg=pkg), "args": ["x"]}
    )
    defs = parse_definitions(definitions, source="f.yaml")
    with pytest.raises(DefinitionError) as e:
        compiler.check_definitions(defs, tmp_path / "cache")
    assert str(e.value).startswith("derived_views[d].features[t].function: the kernel does not compile: ")
    assert error in str(e.value)
