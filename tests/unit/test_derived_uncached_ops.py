"""A read-only install: no ``__pycache__`` can be written beside the package, the home's
cache is not writable and ``NUMBA_CACHE_DIR`` is unset. numba's ``cache=True`` fails at
decoration there, so the expression operators are compiled uncached, and derived
features still build (into ``derived.cache_dir``), load and compute. Real processes: the
package copied where its ``__pycache__`` is a file, the kernel built by the real build
process."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

COMPUTES = """
import asyncio, pathlib, sys
import featurestore
from featurestore.definitions.parser import parse_definitions
from featurestore.derived import compiler, ops
from tests.unit.test_derived_cache import doc, engine_over, served

async def main():
    defs = parse_definitions(doc(["u:x", "u:y"], "x - y"), source="v1.yaml")
    engine = await engine_over(defs, await compiler.kernels_for(defs, pathlib.Path(sys.argv[1])))
    print(featurestore.__file__, ops.CACHED, await served(engine))

asyncio.run(main())
"""


def test_derived_features_compute_where_numba_can_cache_nothing_but_the_kernels(tmp_path: Path) -> None:
    install = tmp_path / "site"
    shutil.copytree(
        ROOT / "featurestore", install / "featurestore", ignore=shutil.ignore_patterns("__pycache__")
    )
    (install / "featurestore" / "derived" / "__pycache__").write_text("not a directory")
    unwritable = tmp_path / "home-cache"
    unwritable.write_text("not a directory either")  # numba's user-wide cache: XDG_CACHE_HOME/numba
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}
    env |= {"PYTHONPATH": f"{install}{os.pathsep}{ROOT}", "XDG_CACHE_HOME": str(unwritable)}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    done = subprocess.run(
        [sys.executable, "-c", COMPUTES, str(tmp_path / "kernels")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    where, cached, value = done.stdout.split()
    assert Path(where).is_relative_to(install)  # the copy, not the checkout, was imported
    assert (cached, value) == ("False", "7.0")
    assert "set NUMBA_CACHE_DIR" in done.stderr
