"""What names a kernel besides its expressions: every file of a trusted function's
package (``featurestore/derived/fingerprint.py``), each package read once per swap."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from featurestore.definitions.parser import parse_definitions
from featurestore.derived import compiler, fingerprint
from tests.unit.test_derived_cache import doc


def package(tmp_path: Path, name: str, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "code" / name
    root.mkdir(parents=True)
    (root / "__init__.py").write_text("")
    (root / "kernels.py").write_text("def risk(a):\n    return a + 1.0\n")
    monkeypatch.syspath_prepend(str(tmp_path / "code"))
    return root


def module_name(function: str) -> str:
    defs = parse_definitions(doc(["u:x"], "", function=function, args=("x",)), source="f.yaml")
    (spec,) = compiler.specs_of(defs)
    return spec.module


@pytest.mark.parametrize(
    "changed",
    ["native/_speedups.cpython-311-x86_64-linux-gnu.so", "tables/scale.json", "weights.npy", "util.py"],
)
def test_any_file_of_a_trusted_functions_package_changing_renames_its_kernel(
    changed: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A compiled extension or a data file changes what the function computes as much
    as its source: the kernel gets a new name, so it is built again."""
    name = "trusted_pkg_" + "".join(c if c.isalnum() else "_" for c in changed)  # one per case
    root = package(tmp_path, name, monkeypatch)
    (root / changed).parent.mkdir(parents=True, exist_ok=True)
    (root / changed).write_bytes(b"one")
    before = module_name(f"{name}.kernels:risk")
    (root / changed).write_bytes(b"two")
    assert module_name(f"{name}.kernels:risk") != before


def test_bytecode_and_numbas_cache_in_a_trusted_package_leave_its_kernels_name_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``__pycache__`` is rewritten by imports and compiles, not by a deployment: counting
    it would rename (and rebuild) the kernel for nothing."""
    root = package(tmp_path, "trusted_pkg_caches", monkeypatch)
    before = module_name("trusted_pkg_caches.kernels:risk")
    cache = root / "__pycache__"
    cache.mkdir(exist_ok=True)
    (cache / f"kernels.{sys.implementation.cache_tag}.pyc").write_bytes(b"bytecode")
    (cache / "kernels.risk-1.py311.nbi").write_bytes(b"numba index")
    assert module_name("trusted_pkg_caches.kernels:risk") == before


def test_a_package_several_views_call_into_is_read_once_per_swap(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three views call one package: ``specs_of`` (once per swap) hashes its files once,
    and the next swap (another ``specs_of``) reads them again, seeing any change."""
    package(tmp_path, "trusted_pkg_once", monkeypatch)
    raw: dict[str, Any] = doc(["u:x"], "", function="trusted_pkg_once.kernels:risk", args=("x",))
    view = raw["derived_views"][0]
    raw["derived_views"] = [{**view, "name": name} for name in ("d", "e", "f")]
    defs = parse_definitions(raw, source="f.yaml")
    reads: list[list[Path]] = []
    real = fingerprint.tree_hash

    def counted(roots: list[Path]) -> str:
        reads.append(roots)
        return real(roots)

    monkeypatch.setattr(fingerprint, "tree_hash", counted)
    assert len(compiler.specs_of(defs)) == 3
    assert reads == [[tmp_path / "code" / "trusted_pkg_once"]]
    compiler.specs_of(defs)
    assert len(reads) == 2
