"""What a kernel's machine code depends on outside its generated source, as one comment
line of that source (``codegen``), so the source's hash, the cached module's name,
changes with it: numba's version, the operators module and every trusted function's
whole top-level package.

A package counts with every file under it (paths relative to the package, and
contents), not only its ``.py`` files: a compiled extension module, or a data file read
at import, changes what a function computes as much as its source does (numba freezes
the module globals a jitted function reads, arrays loaded from a file included, into
the machine code). Only ``__pycache__`` directories are left out: they hold bytecode of
the ``.py`` files already counted, and numba's own cache, both rewritten by imports
and compiles, which would otherwise rename the kernel (and rebuild it) for nothing.

A ``Fingerprints`` lives for one set of kernels (one swap, one ``validate``): each
package is read once however many views call into it.

What cannot be read (a file being replaced by a deploy, a permission-denied data file,
an I/O error) raises ``UnreadableCode``, naming it: a hash that left it out (or a
constant in its place) would not change when it does, and the kernel would keep the
name, and the machine code, of older code. The swap or ``validate`` fails; the
registry applier's next retry reads again. A package that is not found at all hashes
to ``not-found``: the build imports it, and fails (remembered, ``compiler``).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import os
from pathlib import Path

SKIPPED_DIRS = frozenset({"__pycache__"})
NOT_FOUND = "not-found"


class UnreadableCode(Exception):
    """A file a kernel's machine code may depend on could not be read."""


class Fingerprints:
    """Hashes of what kernels depend on, each computed once per instance."""

    def __init__(self) -> None:
        self._packages: dict[tuple[str, ...], str] = {}
        self._base = ""

    def line(self, functions: list[str]) -> str:
        """The comment for a kernel calling ``functions`` (``module:function``)."""
        if not self._base:
            self._base = "; ".join(
                [
                    f"numba {importlib.metadata.version('numba')}",
                    f"ops {module_hash('featurestore.derived.ops')}",
                ]
            )
        packages = sorted({m.partition(".")[0] for m in functions})
        return "; ".join([self._base, *(f"{p} {self.package(p)}" for p in packages)])

    def package(self, name: str) -> str:
        """The hash of a top-level package (or module), found without importing it,
        remembered by where it lives."""
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError) as e:
            raise UnreadableCode(f"cannot locate the trusted function's package {name!r}: {e}") from None
        if spec is None:
            return NOT_FOUND
        roots = tuple(spec.submodule_search_locations or ())
        key = roots or (spec.origin or "",)
        if key not in self._packages:
            self._packages[key] = tree_hash([Path(r) for r in roots]) if roots else module_hash(name)
        return self._packages[key]


def module_hash(module: str) -> str:
    """The hash of a module's file (source, or a compiled extension), found without
    importing it."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError) as e:
        raise UnreadableCode(f"cannot locate module {module!r}: {e}") from None
    origin = spec.origin if spec is not None else None
    if not origin or not os.path.isfile(origin):  # not found, or not from a file (frozen)
        return NOT_FOUND
    return hashlib.sha256(_read(Path(origin))).hexdigest()[:16]


def package_files(root: Path) -> list[Path]:
    """Every file under a package directory, ``__pycache__`` left out, sorted; symlinked
    directories are followed once each."""
    files, seen = [], set()
    for directory, dirs, names in os.walk(root, followlinks=True, onerror=_unlistable):
        real = os.path.realpath(directory)
        if real in seen:  # a symlink loop, or the same directory reached twice
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = [d for d in dirs if d not in SKIPPED_DIRS]
        files += [Path(directory, n) for n in names if os.path.isfile(os.path.join(directory, n))]
    return sorted(files)


def _unlistable(e: OSError) -> None:
    raise UnreadableCode(
        f"cannot list {e.filename} ({e.strerror or type(e).__name__}): its files name the kernel"
    )


def tree_hash(roots: list[Path]) -> str:
    """The hash of the files of a package's directories (several for a namespace
    package): each file's path relative to its directory, and its contents."""
    digest = hashlib.sha256()
    for i, root in enumerate(roots):
        for path in package_files(root):
            name = f"{i}/{path.relative_to(root).as_posix()}"
            digest.update(f"{len(name)}:{name}".encode())
            content = _read(path)
            digest.update(f"{len(content)}:".encode() + content)
    return digest.hexdigest()[:16]


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise UnreadableCode(
            f"cannot read {path} ({e.strerror or type(e).__name__}): a kernel is named after every file "
            "of its trusted function's package, so one that cannot be read leaves it unnamed; "
            "make it readable, or move it out of the package"
        ) from None
