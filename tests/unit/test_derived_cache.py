"""The kernel cache across registry swaps, restarts and workers: a swapped-in snapshot
computes with its own definitions, whatever this process or the cache directory holds
from an earlier one. Kernels are built by the real build process into a temporary
cache and run by the join engine over the memory store."""

from __future__ import annotations

import asyncio
import re
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from featurestore.definitions.parser import parse_definitions
from featurestore.definitions.snapshot import new_snapshot
from featurestore.derived import compiler
from featurestore.join import JoinEngine, JoinRequest, Limits
from featurestore.model import Definitions
from featurestore.plan import ServingState
from featurestore.rows import view_schema
from featurestore.sources.memory import MemorySource

ROOT = Path(__file__).resolve().parents[2]


def doc(
    inputs: Any,
    expression: str,
    request: tuple[str, ...] = (),
    function: str = "",
    args: tuple[str, ...] = (),
) -> dict[str, Any]:
    feature: dict[str, Any] = {"name": "s", "dtype": "float64"}
    feature.update({"function": function, "args": list(args)} if function else {"expression": expression})
    return {
        "project": "p",
        "entities": [{"name": "user_id", "dtype": "int64"}],
        "feature_views": [
            {
                "name": "u",
                "entities": ["user_id"],
                "features": [
                    {"name": "x", "dtype": "float64"},
                    {"name": "y", "dtype": "float64"},
                    {"name": "country", "dtype": "string"},
                ],
            }
        ],
        "derived_views": [
            {
                "name": "d",
                "inputs": inputs,
                "request_schema": [{"name": r, "dtype": "float64"} for r in request],
                "features": [feature],
            }
        ],
    }


ROW = {"user_id": [1], "x": [10.0], "y": [3.0], "country": ["DE"]}


async def engine_over(defs: Definitions, kernels: dict[str, compiler.Kernel]) -> JoinEngine:
    mem = MemorySource("default")
    view = defs.views["u"]
    await mem.prepare([view])
    schema = view_schema(view)
    data = {**ROW, "event_timestamp": [int(time.time() * 1e6)]}
    await mem.write(
        view, pa.table({f.name: pa.array(data[f.name], f.type) for f in schema}, schema=schema), 0
    )
    return JoinEngine({"default": mem}, ServingState(new_snapshot(defs, 1), kernels=kernels), Limits())


async def served(engine: JoinEngine, request_data: dict[str, list[Any]] | None = None) -> Any:
    result = await engine.join(
        JoinRequest({"user_id": [1]}, ("d:s",), request_data=request_data), time.monotonic() + 10
    )
    return result.columns[1].values[0]


SWAPS = {  # before -> after, with x = 10, y = 3, country = 'DE', price = item_price = 5
    "operands swapped": (doc(["u:x", "u:y"], "x - y"), doc(["u:x", "u:y"], "y - x"), 7.0, -7.0),
    "input renamed": (doc({"a": "u:x"}, "a * 2"), doc({"b": "u:y"}, "b * 2"), 20.0, 6.0),
    "request field renamed": (
        doc(["u:x"], "x * price", ("price",)),
        doc(["u:x"], "x * item_price", ("item_price",)),
        50.0,
        10.0 * 7.0,
    ),
    "string constant changed": (
        doc(["u:country"], "where(country == 'DE', 1, 0)"),
        doc(["u:country"], "where(country == 'FR', 1, 0)"),
        1.0,
        0.0,
    ),
    "== became !=": (
        doc(["u:country"], "where(country == 'DE', 1, 0)"),
        doc(["u:country"], "where(country != 'DE', 1, 0)"),
        1.0,
        0.0,
    ),
}


@pytest.mark.parametrize("case", list(SWAPS))
async def test_a_swapped_in_kernel_reads_its_own_inputs_not_those_of_the_snapshot_before(
    case: str, tmp_path: Path
) -> None:
    """What Runtime.apply_registry_change does, in one process: build and load the new
    snapshot's kernels, then swap. Views whose kernels differ only in what feeds each
    input row must not share one kernel (nor its input rows)."""
    before, after, old_value, new_value = SWAPS[case]
    request = {"price": [5.0], "item_price": [7.0]}
    d1 = parse_definitions(before, source="v1.yaml")
    engine = await engine_over(d1, await compiler.kernels_for(d1, tmp_path))
    assert await served(engine, request) == old_value
    d2 = parse_definitions(after, source="v2.yaml")
    kernels = await compiler.kernels_for(d2, tmp_path)
    engine.swap(engine.state.successor(new_snapshot(d2, 2), {}, {}, kernels))
    assert await served(engine, request) == new_value


def test_a_kernel_loaded_for_another_spec_is_returned_with_the_spec_asked_for(tmp_path: Path) -> None:
    """Two snapshots generating one module share its machine code, never its spec."""
    from dataclasses import replace

    d1 = parse_definitions(doc(["u:x", "u:y"], "x - y"), source="v1.yaml")
    (spec,) = compiler.specs_of(d1)
    (path,) = asyncio.run(compiler.build([spec], tmp_path))
    first = compiler.load(spec, path)
    renamed = replace(spec, features=("t",))
    second = compiler.load(renamed, path)
    assert first.spec == spec and second.spec == renamed
    assert second.run is first.run


RUN_TRUSTED = """
import asyncio, sys
from pathlib import Path
import numpy as np
from featurestore.definitions.parser import parse_definitions
from featurestore.derived import compiler
from tests.unit.test_derived_cache import doc
raw = doc(["u:x"], "", function=sys.argv[2], args=("x",))
kernel = asyncio.run(compiler.kernels_for(parse_definitions(raw, source="f.yaml"), Path(sys.argv[1])))["d"]
print(kernel.run(np.full((1, 1), 2.0))[0, 0])
"""


def test_a_changed_helper_in_a_trusted_functions_package_is_compiled_again_after_a_restart(
    tmp_path: Path,
) -> None:
    """The trusted function's module is unchanged; the helper it calls, in another module
    of its package, changes. A restarted server (a fresh process, same cache) computes
    with the new helper, and no numba cache is written next to the deployed code."""
    package = tmp_path / "code" / "trusted_pkg_stale"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "kernels.py").write_text(
        "from trusted_pkg_stale.util import helper\n\n\ndef risk(a):\n    return helper(a) + 1.0\n"
    )
    helper = "import numba\n\n\n@numba.njit\ndef helper(a):\n    return a * {}\n"
    (package / "util.py").write_text(helper.format("1000.0"))
    assert restarted(tmp_path, "trusted_pkg_stale.kernels:risk") == 2001.0
    (package / "util.py").write_text(helper.format("20000.0"))  # another size: no stale .pyc
    assert restarted(tmp_path, "trusted_pkg_stale.kernels:risk") == 40001.0
    assert list(package.rglob("*.nb[ic]")) == [], "numba cached the trusted function beside its code"


def restarted(tmp_path: Path, function: str) -> float:
    """A fresh process over ``tmp_path / "cache"`` computing the trusted ``function`` of 2."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "code"), *sys.path])}
    command = [sys.executable, "-c", RUN_TRUSTED, str(tmp_path / "cache"), function]
    out = subprocess.run(command, capture_output=True, text=True, check=True, cwd=ROOT, env=env)
    return float(out.stdout.strip().splitlines()[-1])


def test_a_changed_data_file_in_a_trusted_functions_package_is_compiled_again_after_a_restart(
    tmp_path: Path,
) -> None:
    """numba freezes the globals a function reads into its machine code: a constant the
    package loads from a data file at import is part of the kernel, and a new data file
    (no ``.py`` changed) must rename and rebuild it."""
    package = tmp_path / "code" / "trusted_pkg_data"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "kernels.py").write_text(
        "import json\nfrom pathlib import Path\n\n"
        "SCALE = json.loads((Path(__file__).parent / 'scale.json').read_text())\n\n\n"
        "def risk(a):\n    return a * SCALE + 1.0\n"
    )
    (package / "scale.json").write_text("1000.0")
    assert restarted(tmp_path, "trusted_pkg_data.kernels:risk") == 2001.0
    (package / "scale.json").write_text("20000.0")
    assert restarted(tmp_path, "trusted_pkg_data.kernels:risk") == 40001.0


RUN_VIEW = """
import asyncio, sys
from pathlib import Path
import numpy as np
from featurestore.definitions.parser import parse_definitions
from featurestore.derived import compiler
from tests.unit.test_derived_cache import doc
defs = parse_definitions(doc(["u:x", "u:y"], sys.argv[2]), source="f.yaml")
kernel = asyncio.run(compiler.kernels_for(defs, Path(sys.argv[1])))["d"]
print(kernel.from_cache, kernel.run(np.array([[10.0], [3.0]]))[0, 0])
"""


@pytest.mark.parametrize("numba_cache_dir", [False, True])
def test_a_truncated_cache_file_is_built_again_and_the_kernel_serves(
    numba_cache_dir: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """validate/apply only check the build marker: a cache file cut short on disk (a full
    disk, a crash while copying the cache) must not break every later swap and restart.
    A restarted server (a fresh process: numba reads NUMBA_CACHE_DIR when imported)
    builds it again in the build process and loads it from the cache."""
    import os
    import subprocess
    import sys

    if numba_cache_dir:
        monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path / "numba"))
    expression = "x * 31 - y"
    defs = parse_definitions(doc(["u:x", "u:y"], expression), source="f.yaml")
    compiler.check_definitions(defs, tmp_path / "cache")
    files = list((tmp_path / ("numba" if numba_cache_dir else "cache")).rglob("dv_d_*.nbc"))
    assert len(files) == 2  # kernel_into's and kernel_row's machine code
    for data in files:
        data.write_bytes(data.read_bytes()[:100])
    command = [sys.executable, "-c", RUN_VIEW, str(tmp_path / "cache"), expression]
    for _ in range(2):  # the second start finds the cache repaired
        out = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=dict(os.environ))
        assert out.returncode == 0, out.stderr[-2000:]
        assert out.stdout.split() == ["True", "307.0"]


def test_a_damaged_cache_index_on_a_host_that_has_not_built_the_kernel_is_built_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A host of another CPU type sharing the cache (its marker holds no line for this
    host) finds the index cut short: its build process, not only a load, must start from
    a clean cache entry, or every swap, restart and validate fails as "does not compile"
    until someone empties the cache (review 49)."""
    import os
    import subprocess
    import sys

    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path / "numba"))
    expression = "x * 61 - y"
    defs = parse_definitions(doc(["u:x", "u:y"], expression), source="f.yaml")
    compiler.check_definitions(defs, tmp_path / "cache")
    indexes = list((tmp_path / "numba").rglob("dv_d_*.nbi"))
    assert indexes
    for index in indexes:
        index.write_bytes(index.read_bytes()[:40])
    (marker,) = (tmp_path / "cache").glob("dv_d_*.built")
    marker.write_text("numba 0.0; cpython-311; NUMBA_CACHE_DIR=; cpu another 0123456789abcdef\n")
    command = [sys.executable, "-c", RUN_VIEW, str(tmp_path / "cache"), expression]
    for _ in range(2):
        out = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=dict(os.environ))
        assert out.returncode == 0, out.stderr[-2000:]
        assert out.stdout.split() == ["True", "607.0"]


RUN_COUNTING_BUILDS = """
import asyncio, sys
from pathlib import Path
from featurestore.definitions.parser import parse_definitions
from featurestore.derived import compiler
from tests.unit.test_derived_cache import doc
real = compiler.build_command
def counted(paths):
    print("build process started", flush=True)
    return real(paths)
compiler.build_command = counted
defs = parse_definitions(doc(["u:x", "u:y"], sys.argv[2]), source="f.yaml")
kernel = asyncio.run(compiler.kernels_for(defs, Path(sys.argv[1])))["d"]
print("loaded from cache" if kernel.from_cache else "compiled in process", flush=True)
"""


def test_a_worker_finding_another_building_the_same_kernels_waits_and_builds_nothing(
    tmp_path: Path,
) -> None:
    """This test holds the cache's build lock, as a worker building would; a second
    worker swapping to the same snapshot writes its module and waits; the first one's
    build (the build process, run here) finishes and the lock is released: the second
    finds the kernel built and loads it, starting no build of its own."""
    import fcntl
    import os
    import subprocess
    import sys

    from featurestore.derived import buildlock
    from tests.support import wait_until

    cache = tmp_path / "cache"
    cache.mkdir()
    expression = "x * 41 - y"
    (spec,) = compiler.specs_of(parse_definitions(doc(["u:x", "u:y"], expression), source="f.yaml"))
    module = cache / f"{spec.module}.py"
    with open(cache / buildlock.LOCK_NAME, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        worker = subprocess.Popen(
            [sys.executable, "-c", RUN_COUNTING_BUILDS, str(cache), expression],
            cwd=ROOT,
            env=dict(os.environ),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            wait_until(module.exists, 60, "the second worker to write its module")
            subprocess.run(compiler.build_command([module]), check=True, env=dict(os.environ), cwd=ROOT)
        except BaseException:
            worker.kill()
            raise
    out, err = worker.communicate(timeout=120)
    assert worker.returncode == 0, err[-2000:]
    assert out.splitlines() == ["loaded from cache"]


def test_a_cache_built_for_another_cpu_is_built_again_in_the_build_process_not_while_serving(
    tmp_path: Path,
) -> None:
    """A cache directory shared by hosts of two CPU types (NUMBA_CPU_NAME=generic stands
    for the other one): each host's restart loads machine code built by a build process
    for its CPU, never compiles in the serving process; both stay built."""
    import os
    import subprocess
    import sys

    host = {k: v for k, v in os.environ.items() if not k.startswith("NUMBA_CPU")}
    host["NUMBA_CACHE_DIR"] = str(tmp_path / "numba")  # numba's caches of ops too: not in the source tree
    generic = {**host, "NUMBA_CPU_NAME": "generic"}
    command = [sys.executable, "-c", RUN_VIEW, str(tmp_path / "cache"), "x * 51 - y"]
    for env in (generic, host, generic, host):
        out = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=env)
        assert out.returncode == 0, out.stderr[-2000:]
        assert out.stdout.split() == ["True", "507.0"], env.get("NUMBA_CPU_NAME", "host")
    (marker,) = (tmp_path / "cache").glob("dv_d_*.built")
    assert len(marker.read_text().splitlines()) == 2


def trusted_package(tmp_path: Path, name: str, source: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """A package ``name`` with ``kernels.py`` = ``source``, importable here and by the
    build process; returns its function ``risk``."""
    package = tmp_path / "code" / name
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "kernels.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path / "code"))
    return f"{name}.kernels:risk"


def counting_builds(monkeypatch: pytest.MonkeyPatch) -> list[list[Path]]:
    """The module lists of the build processes ``compiler`` starts from now on."""
    builds: list[list[Path]] = []
    real = compiler.build_command

    def counted(paths: list[Path]) -> list[str]:
        builds.append(paths)
        return real(paths)

    monkeypatch.setattr(compiler, "build_command", counted)
    return builds


async def test_a_kernel_that_does_not_compile_is_not_compiled_again_when_its_swap_is_retried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A canary this server cannot serve is retried every few seconds: the kernel that
    failed (the same module: the same source and trusted code) fails again at once,
    with the same error, without another build process."""
    from featurestore.errors import DefinitionError

    function = trusted_package(
        tmp_path, "trusted_pkg_untypable", "def risk(a):\n    return object()\n", monkeypatch
    )
    defs = parse_definitions(doc(["u:x"], "", function=function, args=("x",)), source="f.yaml")
    builds = counting_builds(monkeypatch)
    errors = []
    for _ in range(3):
        # (the feature named: numba cites the function's file relative to the working directory)
        where = r"derived_views\[d\]\.features\[s\]\.function: the kernel does not compile"
        with pytest.raises(DefinitionError, match=where) as e:
            await compiler.kernels_for(defs, tmp_path / "cache")
        errors.append(str(e.value))
    assert len(builds) == 1
    assert "not built again" in errors[1] and errors[1] == errors[2]


async def test_a_kernel_whose_build_failed_on_an_os_error_is_built_again_when_retried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failure of the machine (here a file the trusted module reads at import is
    missing; a full disk alike) is not remembered: once it is over, the retry builds."""
    from featurestore.errors import DefinitionError

    scale = tmp_path / "scale.txt"  # outside the package: its hash stays the same
    source = f"from pathlib import Path\n\nSCALE = float(Path({str(scale)!r}).read_text())\n\n\n"
    source += "def risk(a):\n    return a * SCALE\n"
    scale.write_text("3.0")
    function = trusted_package(tmp_path, "trusted_pkg_missing_file", source, monkeypatch)
    defs = parse_definitions(doc(["u:x"], "", function=function, args=("x",)), source="f.yaml")
    scale.unlink()
    builds = counting_builds(monkeypatch)
    with pytest.raises(DefinitionError, match="FileNotFoundError"):
        await compiler.kernels_for(defs, tmp_path / "cache")
    scale.write_text("3.0")
    kernel = (await compiler.kernels_for(defs, tmp_path / "cache"))["d"]
    assert kernel.run(np.full((1, 1), 2.0))[0, 0] == 6.0
    assert len(builds) == 2


def test_the_cache_keeps_every_kernel_it_built_in_the_files_the_docs_name(tmp_path: Path) -> None:
    """Nothing prunes the cache (docs/definitions.md, "Compilation", says so and when it
    is safe to empty): an expression edit leaves both generations' files."""
    for expression in ("x + y", "x - y", "x + y"):  # the third is the first again: nothing new
        defs = parse_definitions(doc(["u:x", "u:y"], expression), source="f.yaml")
        asyncio.run(compiler.kernels_for(defs, tmp_path))
    modules = sorted(p.stem for p in tmp_path.glob("dv_d_*.py"))
    assert len(modules) == 2
    tag = f"py{sys.version_info.major}{sys.version_info.minor}"
    for module in modules:
        assert (tmp_path / f"{module}.built").is_file()
        numba_files = sorted(p.name for p in (tmp_path / "__pycache__").glob(f"{module}.*"))
        assert [re.sub(r"-\d+\.", "-<line>.", n) for n in numba_files] == [
            f"{module}.kernel_into-<line>.{tag}.1.nbc",
            f"{module}.kernel_into-<line>.{tag}.nbi",
            f"{module}.kernel_row-<line>.{tag}.1.nbc",
            f"{module}.kernel_row-<line>.{tag}.nbi",
        ]
    assert {p.name for p in tmp_path.iterdir()} == {
        ".build.lock", "__pycache__", *(f"{m}.py" for m in modules), *(f"{m}.built" for m in modules)
    }  # fmt: skip
    docs = " ".join((ROOT / "docs" / "definitions.md").read_text().split())
    for named in ("only grows", "`dv_<view>_<hash>.py`", "`dv_<view>_<hash>.built`", "`.build.lock`",
                  "`__pycache__/dv_<view>_<hash>.kernel_row-<line>.py311.nbi`", "`kernel_into`"):  # fmt: skip
        assert named in docs
