"""``python -m featurestore.derived.build MODULE.py ...``: compile generated kernel
modules into numba's on-disk cache, in a process of its own (``compiler``).

Importing a module compiles its kernel (the signature is explicit, so numba compiles
at decoration) and ``cache=True`` writes the machine code next to it (or under
``NUMBA_CACHE_DIR`` when that is set). Then ``MODULE.built`` is written (atomically),
holding ``marker()``: what ``compiler.is_built`` checks, wherever numba put its index.
A failure is one JSON line on stdout, ``{"path": ..., "error": ...}``, and exit status 1.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import sys
from pathlib import Path


def _error_text(e: BaseException) -> str:
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return f"{type(e).__name__}: {' '.join(lines)[:800]}"


def marker() -> str:
    """What a build depends on besides the module's source (which names numba's version
    already): the interpreter numba compiled for and where its cache lives."""
    numba = importlib.metadata.version("numba")
    where = os.environ.get("NUMBA_CACHE_DIR", "")
    return f"numba {numba}; {sys.implementation.cache_tag}; NUMBA_CACHE_DIR={where}\n"


def marker_path(path: Path) -> Path:
    return path.with_suffix(".built")


def _write_marker(path: Path) -> None:
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.built.tmp")
    tmp.write_text(marker(), encoding="utf-8")
    os.replace(tmp, marker_path(path))


def build(path: Path) -> None:
    spec = importlib.util.spec_from_file_location(f"featurestore_derived_{path.stem}", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # numba records the module by name in its cache
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[spec.name]
        raise
    _write_marker(path)


def main(argv: list[str]) -> int:
    status = 0
    for arg in argv:
        try:
            build(Path(arg))
        except Exception as e:
            print(json.dumps({"path": arg, "error": _error_text(e)}), flush=True)
            status = 1
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
