"""Kernels from definitions: generated modules in a cache directory, compiled by numba
in a separate process, loaded here from numba's on-disk cache.

Compiling holds the GIL for the whole numba pipeline (~0.4 s for the demo view, more
for big expressions), which would stall every request of a serving process. So a
registry swap writes the generated modules (named by the hash of their source, which
names everything the machine code depends on; written once, never rewritten: numba's
index checks the file's source stamp, a hash of its contents in numba 0.68, its mtime
and size in older versions), runs ``python -m featurestore.derived.build`` on those not
built yet for this interpreter, numba, cache location and CPU (one process at a time
per cache directory: ``buildlock``), and only then loads them in a worker thread, from
the cache: machine code, no compile. A restart, or a second worker, finds the cache
filled; a module whose cache files do not load (damaged, missing, or not where this
process looks: numba would then compile it here, which a load refuses, ``loadguard``)
is forgotten and built again. The swap happens after the load, so no request ever
waits for a compile.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from featurestore import metrics
from featurestore.derived import buildlock
from featurestore.derived.build import cache_files, marker, marker_path
from featurestore.derived.codegen import KernelSpec, generate
from featurestore.derived.fingerprint import Fingerprints, UnreadableCode
from featurestore.derived.loadguard import CompileDuringLoad, no_compile
from featurestore.derived.pages import prepare_numba, release_llvm_pages
from featurestore.errors import DefinitionError, FailedPrecondition
from featurestore.model import Definitions

log = logging.getLogger(__name__)

BUILD_TIMEOUT_SECONDS = 300.0


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "featurestore" / "derived"


def cache_dir(configured: str = "") -> Path:
    """The configured ``derived.cache_dir``, or the user cache."""
    return Path(configured) if configured else default_cache_dir()


@dataclass(frozen=True, slots=True)
class Kernel:
    spec: KernelSpec
    run: Callable[[Any], Any]  # float64[:, ::1] (inputs x rows) -> float64[:, ::1] (features x rows)
    from_cache: bool  # loaded as machine code from the on-disk cache (not compiled here)
    into: Callable[[Any, Any], int]  # (inputs, outputs to fill) -> their null mask (NULL_BITS): the join's
    row: Callable[..., tuple[float, ...]]  # one row's inputs (floats) -> its features: the join's at batch 1


# Kernels loaded by this process, by module name: once each (numba never frees machine code).
_loaded: dict[str, Kernel] = {}
# Module names whose build failed for good (``build``'s ``lasting``) or whose load failed
# after a rebuild (not for an OSError or MemoryError), with the error: the name hashes all
# the build depends on, so it fails again. Plain dict (atomic): the loop must not wait on _lock.
_failed: dict[str, str] = {}
_lock = threading.Lock()


def specs_of(defs: Definitions) -> list[KernelSpec]:
    """Every view's kernel source; a trusted function's package is hashed once for all."""
    prints = Fingerprints()
    specs = []
    for view in sorted(defs.derived_views.values(), key=lambda v: v.name):
        try:
            specs.append(generate(view, defs, prints))
        except UnreadableCode as e:  # never named after what could not be read: refused
            raise DefinitionError(f"derived_views[{view.name}]: {e}") from e
    return specs


def write_module(spec: KernelSpec, cache_dir: Path) -> Path:
    """The module file, created once: its name is its source's hash, so a rewrite could
    only change its stamp (its mtime, which numba before 0.68 checked) and cost a
    rebuild (two workers may race here; the first one's file stays). A file of that name
    holding anything else (emptied by a crash before the disk had its blocks, damaged)
    is replaced and its build forgotten: built as it is, it would fail every load."""
    path = cache_dir / f"{spec.module}.py"
    source = spec.source.encode()
    try:
        held: bytes | None = path.read_bytes()
    except FileNotFoundError:
        held = None
    except OSError:
        held = b""  # unreadable: written again below, or the write names the problem
    if held == source:
        return path
    if held is not None:
        log.warning("derived_views[%s]: %s does not hold its source: writing it again", spec.view, path)
        forget(spec, path)
    tmp = cache_dir / f".{spec.module}.{os.getpid()}.{threading.get_ident()}.tmp"
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp.write_bytes(source)
        if held is None:
            os.link(tmp, path)  # the first writer's file stays
        else:
            os.replace(tmp, path)
    except FileExistsError:
        pass
    except OSError as e:
        raise FailedPrecondition(
            f"derived.cache_dir {cache_dir} is not writable ({e.strerror}): derived kernels cannot be built"
        ) from e
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()
    return path


def is_built(path: Path) -> bool:
    """Built by ``build`` for this interpreter, numba, NUMBA_CACHE_DIR and CPU (a line
    of its marker; numba's own index may live under NUMBA_CACHE_DIR, named after this
    directory)."""
    try:
        return marker() in marker_path(path).read_text(encoding="utf-8").splitlines(keepends=True)
    except OSError:
        return False


def build_command(paths: list[Path]) -> list[str]:
    return [sys.executable, "-m", "featurestore.derived.build", *map(str, paths)]


def _dying_with_parent(argv: list[str]) -> tuple[list[str], Callable[[], None] | None]:
    """The command and ``preexec_fn`` of a build child that is SIGKILLed when the process
    that started it dies: killed outright (the supervisor's SIGKILL after its grace, a
    second stop signal, the OOM killer), a worker would otherwise leave its build
    compiling as an orphan for up to ``BUILD_TIMEOUT_SECONDS``. The signal follows the
    thread that forked, which is the one awaiting the build to its end. util-linux's
    ``setpriv`` sets it and execs, so no Python runs between fork and exec (a worker has
    gRPC threads; the supervisor starts its workers the same way); without setpriv a
    ``preexec_fn`` calls prctl."""
    if not sys.platform.startswith("linux"):
        return argv, None
    setpriv = shutil.which("setpriv")
    if setpriv is not None:
        return [setpriv, "--pdeathsig", "KILL", "--", *argv], None
    return argv, _die_with_parent


def _die_with_parent() -> None:
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)


def _build_env() -> dict[str, str]:
    # The child imports what this process can: featurestore itself and trusted functions.
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}


def _failures(stdout: str) -> list[dict[str, Any]]:
    """The build's failure lines (build.main: its stdout holds nothing else); others skipped."""
    out = []
    for line in stdout.splitlines():
        with contextlib.suppress(ValueError):
            if isinstance(f := json.loads(line), dict) and isinstance(f.get("path"), str):
                out.append(f)
    return out


def _raise_failures(stdout: str, specs: dict[Path, KernelSpec], returncode: int, stderr: str) -> None:
    failures = _failures(stdout)
    metrics.DERIVED_COMPILES.labels("failed").inc(len(failures) or 1)
    for f in failures:  # a module that failed is never loaded: leave no dead file behind
        with contextlib.suppress(OSError):
            Path(f["path"]).unlink()
    errors = []
    for f in failures:
        spec = specs.get(Path(f["path"]))
        view = spec.view if spec is not None else f["path"]
        where = f"derived_views[{view}]" + (f".features[{f['feature']}].function" if f.get("feature") else "")
        errors.append(DefinitionError(f"{where}: the kernel does not compile: {f['error']}"))
        if spec is not None and f.get("lasting", True):
            _failed[spec.module] = str(errors[-1])
    if errors:
        raise errors[0]
    raise DefinitionError(f"compiling derived kernels failed (exit {returncode}): {stderr.strip()[-500:]}")


def _refuse_failed(specs: list[KernelSpec]) -> None:
    """A kernel whose build failed in this process for a reason its module name covers
    fails again without a build process: a canary this server cannot serve is retried
    every few seconds (the registry applier's backoff), and each retry would compile."""
    failed = [_failed[s.module] for s in specs if s.module in _failed]  # no lock: the event loop
    if failed:
        raise DefinitionError(f"{failed[0]} (this process built the same kernel before: not built again)")


def _timed_out(specs: dict[Path, KernelSpec], todo: list[Path]) -> DefinitionError:
    metrics.DERIVED_COMPILES.labels("failed").inc(len(todo))
    views = ", ".join(specs[p].view for p in todo)
    return DefinitionError(
        f"derived_views[{views}]: compiling the kernels did not finish within {BUILD_TIMEOUT_SECONDS:g} s "
        "(the build process was stopped): simplify the expressions or split the view"
    )


async def build(specs: list[KernelSpec], cache_dir: Path) -> list[Path]:
    """Write and compile (in a child process) whatever is not in the cache yet, one
    process at a time per cache directory (``buildlock``)."""
    _refuse_failed(specs)
    paths = {write_module(s, cache_dir): s for s in specs}
    if all(map(is_built, paths)):
        return list(paths)
    async with buildlock.held(cache_dir, BUILD_TIMEOUT_SECONDS):
        todo = [p for p in paths if not is_built(p)]  # another process may have built them
        if todo:
            await _run_build(paths, todo)
    return list(paths)


async def run_child(command: list[str]) -> tuple[int, bytes, bytes]:
    """A build process (dying with this one, this one's imports): its exit status, stdout
    and stderr. Past ``BUILD_TIMEOUT_SECONDS`` (TimeoutError), or cancelled, it is killed."""
    argv, preexec_fn = _dying_with_parent(command)
    proc = await asyncio.create_subprocess_exec(
        *argv,
        env=_build_env(),
        preexec_fn=preexec_fn,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), BUILD_TIMEOUT_SECONDS)
    except BaseException:
        proc.kill()
        await proc.wait()
        raise
    return proc.returncode or 0, out, err


async def _run_build(paths: dict[Path, KernelSpec], todo: list[Path]) -> None:
    t0 = time.perf_counter()
    try:
        returncode, out, err = await run_child(build_command(todo))
    except TimeoutError:
        raise _timed_out(paths, todo) from None
    finally:  # every run, failed or stopped at the timeout too
        metrics.DERIVED_COMPILE_DURATION.observe(time.perf_counter() - t0)
    if returncode != 0:
        _raise_failures(out.decode(errors="replace"), paths, returncode, err.decode(errors="replace"))
    metrics.DERIVED_COMPILES.labels("compiled").inc(len(todo))


def build_sync(specs: list[KernelSpec], cache_dir: Path) -> None:
    """``build`` for the CLI (validate, apply): refuse definitions whose kernels fail."""
    _refuse_failed(specs)
    paths = {write_module(s, cache_dir): s for s in specs}
    if all(map(is_built, paths)):
        return
    with buildlock.held_sync(cache_dir, BUILD_TIMEOUT_SECONDS):
        todo = [p for p in paths if not is_built(p)]
        if not todo:
            return
        try:
            argv, preexec_fn = _dying_with_parent(build_command(todo))
            proc = subprocess.run(
                argv,
                env=_build_env(),
                preexec_fn=preexec_fn,
                capture_output=True,
                text=True,
                errors="replace",  # what trusted code writes need not be UTF-8
                timeout=BUILD_TIMEOUT_SECONDS,
            )
        except subprocess.TimeoutExpired:  # run() killed the child
            raise _timed_out(paths, todo) from None
        if proc.returncode != 0:
            _raise_failures(proc.stdout, paths, proc.returncode, proc.stderr)


def load(spec: KernelSpec, path: Path) -> Kernel:
    """Import a built module (numba loads its machine code from the cache) and run both
    entries once, so the first request finds everything resolved."""
    with _lock:
        kernel = _loaded.get(spec.module)
        if kernel is not None:
            # Shared machine code; this snapshot's spec (input rows' sources, output names).
            return kernel if kernel.spec == spec else replace(kernel, spec=spec)
        module_spec = importlib.util.spec_from_file_location(f"featurestore_derived_{spec.module}", path)
        assert module_spec is not None and module_spec.loader is not None
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[module_spec.name] = module  # numba's cache re-imports it by name
        try:
            with no_compile(module_spec.name):  # a cache miss raises instead of compiling here
                module_spec.loader.exec_module(module)
        except BaseException as e:
            del sys.modules[module_spec.name]  # not half-initialised for the next attempt
            if isinstance(e, CompileDuringLoad):
                metrics.DERIVED_COMPILES.labels("cache_missed").inc()
            raise
        into, row = module.kernel_into, module.kernel_row
        module.kernel(np.zeros((len(spec.inputs), 1)))
        row(*[0.0] * len(spec.inputs))
        from_cache = all(f.stats.cache_hits and not f.stats.cache_misses for f in (into, row))
        metrics.DERIVED_COMPILES.labels("loaded").inc()
        _loaded[spec.module] = Kernel(spec, module.kernel, from_cache, into, row)
        return _loaded[spec.module]


async def kernels_for(defs: Definitions, cache_dir: Path) -> dict[str, Kernel]:
    """Every derived view's kernel, built off the event loop; {} without derived views
    (numba is not even imported then). A built kernel that does not load (a cache file
    truncated or corrupted on disk) is forgotten, built again and loaded once more."""
    if not defs.derived_views:
        return {}
    specs = await asyncio.to_thread(specs_of, defs)  # hashes trusted functions' packages
    paths = await build(specs, cache_dir)
    pairs = list(zip(specs, paths, strict=True))
    kernels = await asyncio.to_thread(_load_all, pairs, False)
    broken = [pair for pair, kernel in zip(pairs, kernels, strict=True) if kernel is None]
    if broken:
        await build([s for s, _ in broken], cache_dir)
        again = iter(await asyncio.to_thread(_load_all, broken, True))
        kernels = [k if k is not None else next(again) for k in kernels]
    return {k.spec.view: k for k in kernels if k is not None}


def _load_all(pairs: list[tuple[KernelSpec, Path]], last_try: bool) -> list[Kernel | None]:
    """Each load runs LLVM (pages.py): its pages are released after each one, not only
    after the last, so the peak RSS is that of one load, not the sum."""
    prepare_numba()
    kernels = []
    for s, p in pairs:
        kernels.append(_load_or_forget(s, p, last_try))
        release_llvm_pages()
    return kernels


def _load_or_forget(spec: KernelSpec, path: Path, last_try: bool) -> Kernel | None:
    try:
        return load(spec, path)
    except Exception as e:
        if last_try:
            error = DefinitionError(
                f"derived_views[{spec.view}]: the kernel was built again but does not load: {e!r:.500}"
            )
            # As a build's failure (see _refuse_failed), but for passing causes: the
            # system's, and a cache entry missing again (another worker's forget() between
            # its rebuild and this load): the next swap retries those.
            if not isinstance(e, (OSError, MemoryError, CompileDuringLoad)):
                _failed[spec.module] = str(error)
            raise error from e
        log.warning(
            "derived_views[%s]: the built kernel %s does not load (%r): building it again",
            spec.view,
            path.name,
            e,
        )
        forget(spec, path)
        return None


def forget(spec: KernelSpec, path: Path) -> None:
    """Drop a built module's marker and numba's cache files for it (next to the module,
    or under NUMBA_CACHE_DIR), so the next ``build`` compiles it again. Module names
    hold their source's hash: no other module's files match."""
    with contextlib.suppress(OSError):
        marker_path(path).unlink()
    for file in cache_files(path):
        with contextlib.suppress(OSError):
            file.unlink()


def check_definitions(defs: Definitions, directory: Path | None = None) -> None:
    """Compile every kernel of ``defs`` (validate, apply, canary start, apply on start):
    a definition whose kernel cannot be built never reaches a registry."""
    if defs.derived_views:
        build_sync(specs_of(defs), directory or default_cache_dir())
