"""``python -m featurestore.derived.build MODULE.py ...``: compile generated kernel
modules into numba's on-disk cache, in a process of its own (``compiler``).

Importing a module compiles its kernel (the signature is explicit, so numba compiles
at decoration) and ``cache=True`` writes the machine code next to it (or under
``NUMBA_CACHE_DIR`` when that is set). Then ``marker()`` is added to the lines of
``MODULE.built`` (written atomically): what ``compiler.is_built`` checks, wherever numba
put its index; a line per interpreter, numba, cache location and CPU built for.
A failure is one JSON line on stdout, ``{"path": ..., "error": ..., "lasting": ...}``, and
exit status 1 (stdout holds these lines only: whatever trusted code prints goes to
stderr); ``lasting`` is false for what the machine caused (an ``OSError`` such as a full
disk, a ``MemoryError``): the same module may build once that is over, while any other
error (the source does not compile, a trusted function does not import) recurs as long
as the module, named by the hash of all it depends on, is the same.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import re
import sys
import traceback
from pathlib import Path

MARKER_LINES = 16  # environments remembered per module (another one builds again)


def _error_text(e: BaseException) -> str:
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return f"{type(e).__name__}: {' '.join(lines)[:800]}"


def marker() -> str:
    """What a build depends on besides the module's source (which names numba's version
    already): the interpreter and the CPU numba compiled for, and where its cache lives.
    Checked for every kernel of every swap, on the event loop: what it reads from package
    metadata (~0.7 ms) is read once per process."""
    return _marker(os.environ.get("NUMBA_CACHE_DIR", ""))


@functools.cache
def _marker(where: str) -> str:
    numba = importlib.metadata.version("numba")
    return f"numba {numba}; {sys.implementation.cache_tag}; NUMBA_CACHE_DIR={where}; cpu {cpu()}\n"


@functools.cache
def cpu() -> str:
    """The CPU numba compiles for: ``NUMBA_CPU_NAME``/``NUMBA_CPU_FEATURES`` (and
    ``NUMBA_ENABLE_AVX``, numba's documented settings), else the host's as llvmlite
    names it. numba's cache keeps machine code per CPU: a cache shared by hosts of
    several CPU types holds each one's, each built by a build process on such a host.
    Read once per process."""
    import llvmlite.binding as ll  # type: ignore[import-untyped]

    name = os.environ.get("NUMBA_CPU_NAME") or ll.get_host_cpu_name()
    features = os.environ.get("NUMBA_CPU_FEATURES") or ll.get_host_cpu_features().flatten()
    avx = os.environ.get("NUMBA_ENABLE_AVX", "")
    digest = hashlib.sha256(f"{features}; avx {avx}".encode()).hexdigest()[:16]
    return f"{name} {digest}"


def marker_path(path: Path) -> Path:
    return path.with_suffix(".built")


def _write_marker(path: Path) -> None:
    try:
        lines = marker_path(path).read_text(encoding="utf-8").splitlines(keepends=True)
    except OSError:
        lines = []
    lines = [*[line for line in lines if line != marker()][-(MARKER_LINES - 1) :], marker()]
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.built.tmp")
    tmp.write_text("".join(lines), encoding="utf-8")
    os.replace(tmp, marker_path(path))


def cache_files(path: Path) -> list[Path]:
    """numba's cache files of a generated module (next to it, or under NUMBA_CACHE_DIR).
    Module names hold their source's hash: no other module's files match."""
    where = [path.parent / "__pycache__"]
    if os.environ.get("NUMBA_CACHE_DIR"):
        where.append(Path(os.environ["NUMBA_CACHE_DIR"]))
    return [f for d in where for f in d.rglob(f"{path.stem}.*") if f.suffix in (".nbi", ".nbc")]


def build(path: Path) -> None:
    """Import (compile, cache) one generated module. A build that fails while cache files
    of the module exist is tried once more without them: numba reads its index before it
    compiles, so a damaged one (a copy cut short, a disk fault) fails every build until
    it is gone, not only loads (which drop it themselves: ``compiler._load_or_forget``);
    a host of another CPU type sharing the cache meets it here (review 49)."""
    try:
        _import(path)
    except Exception:
        stale = cache_files(path)
        if not stale:
            raise
        for file in stale:
            with contextlib.suppress(OSError):
                file.unlink()
        _import(path)
    _write_marker(path)


def _import(path: Path) -> None:
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


_TRUSTED = re.compile(
    r"^(_t\d+) = _jitted\(importlib\.import_module\('([\w.]+)'\)\.(\w+)\)  # feature (\w+)$"
)
_CITED = (re.compile(r'File "([^"]+)", line (\d+)'), re.compile(r"Raised from (\S+) \((\d+)\)"))


def _lines_of(module: str, attr: str) -> tuple[str, int, int] | None:
    """The file and line range of a trusted function (imported by the module built)."""
    fn = getattr(sys.modules.get(module), attr, None)
    code = getattr(getattr(fn, "py_func", fn), "__code__", None)
    if code is None:
        return None
    numbers = [n for _, _, n in code.co_lines() if n]
    return code.co_filename, code.co_firstlineno, max(numbers, default=code.co_firstlineno)


def _real(file: str) -> str:
    return os.path.realpath(os.path.abspath(file))


def failing_feature(path: Path, e: BaseException) -> str | None:
    """The feature whose trusted function failed the build, when the error cites a line
    of the module built that names one (the function's own line: it is not a function;
    a kernel line calling it) or a line of the function itself (numba cites the line of
    its body it cannot compile)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return None
    trusted = {m[1]: m for line in lines if (m := _TRUSTED.match(line))}
    cited = [(f.filename, f.lineno or 0) for f in traceback.extract_tb(e.__traceback__)]
    cited += [(f, int(n)) for pattern in _CITED for f, n in pattern.findall(str(e))]
    here = _real(str(path))
    for cited_file, n in reversed(cited):
        file = _real(cited_file)  # numba cites paths relative to the working directory
        if file == here:
            line = lines[n - 1] if 0 < n <= len(lines) else ""
            called = [trusted[a] for a in re.findall(r"\b(_t\d+)\b", line) if a in trusted]
            if called:
                return called[0][4]
            continue
        for m in trusted.values():
            where = _lines_of(m[2], m[3])
            if where is not None and _real(where[0]) == file and where[1] <= n <= where[2]:
                return m[4]
    return None


def main(argv: list[str]) -> int:
    # The failures' channel is this process's stdout, and trusted code runs here (imported
    # and compiled): what it prints goes to stderr, so a line of its own that looks like
    # JSON is never taken for a failure (it made the parent raise a JSONDecodeError).
    results = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    sys.stdout.flush()
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    status = 0
    for arg in argv:
        try:
            build(Path(arg))
        except Exception as e:
            lasting = not isinstance(e, (OSError, MemoryError))
            failure = {"path": arg, "error": _error_text(e), "lasting": lasting}
            print(json.dumps({**failure, "feature": failing_feature(Path(arg), e)}), file=results, flush=True)
            status = 1
    results.close()
    return status


# A build takes ~1 CPU-second for a 4-feature view; on a serving host it should yield the
# cores to the workers answering requests (a swap's build showed 28-38 ms request outliers
# on a 2-core VM, against 6-15 ms for swaps without one, read while a test suite shared the
# machine): it runs at a lower priority.
BUILD_NICENESS = 10


def lower_priority() -> None:
    """Niceness +10, and the same for the build's own scheduling group where the kernel
    groups processes by session (autogroup: a bare host or VM; not inside a container's
    cgroup): there niceness only weighs a process against its own session, and each
    serving worker is a session of its own. The build leaves its worker's session for one
    whose group it lowers (best effort); it still dies with its worker (pdeathsig). Two
    spinners on one CPU of this VM (autogroup on), the other in a session of its own: 0.45
    against 3.59 CPU-s in 4 s (with niceness alone: 2.03 against 2.03)."""
    os.nice(BUILD_NICENESS)
    try:
        os.setsid()
        Path("/proc/self/autogroup").write_text(f"{BUILD_NICENESS}\n")
    except OSError:
        pass


if __name__ == "__main__":
    lower_priority()
    sys.exit(main(sys.argv[1:]))
