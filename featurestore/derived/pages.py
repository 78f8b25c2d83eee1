"""A memory shortcut: once kernels are loaded, hand LLVM's code pages back to the kernel.

Loading numba maps llvmlite's shared library (``libllvmlite.so``, ~170 MB) and its
static initialisers fault in a large part of it: the demo server's RSS grew by 98 MB
with its derived view, 67 MB of it these clean, file-backed pages
(``python -m benchmarks.footprint`` with and without ``--no-derived``). Serving never
runs LLVM: a kernel is machine code called through numba's dispatcher; LLVM runs again
only when the next snapshot's kernels are loaded. So after each load the library's
read-only mappings are advised ``MADV_PAGEOUT`` (Linux 5.4+): the kernel drops them
from this process, and a later load reads them back from the page cache on demand.
Elsewhere, or on an older kernel, this does nothing.

Even loading machine code from the cache runs LLVM once per process: numba compiles
its runtime (NRT) when its CPU target is first used. Done inside the first load, that
compile, the import of numba and the load each faulted in their share of the library
before anything was released: the peak RSS was ~65 MB over the RSS once released.
``prepare_numba`` takes those steps one at a time before the first load, releasing the
pages after each, so no more than one step's pages are ever in at once.

``tests/unit/test_derived_kernels.py`` checks that the library is still mapped under
this name, so a rename in llvmlite fails a test instead of silently costing memory, and
that the numba entry points ``prepare_numba`` calls are still there.
"""

from __future__ import annotations

import ctypes
import logging
import sys
from pathlib import Path

log = logging.getLogger(__name__)

LIBRARY = "libllvmlite"
_MADV_PAGEOUT = 21  # linux/mman.h
_prepared = False


def prepare_numba() -> bool:
    """Import numba, compile its runtime and load its implementation registries, each
    step's LLVM pages released before the next (once per process; later calls return).
    The steps are what numba does on its own at the first kernel load; an entry point
    gone in another numba version leaves them to it (costing only the peak): False."""
    global _prepared
    if _prepared:
        return True
    import numba  # noqa: F401  (its import faults in LLVM's static initialisers)

    release_llvm_pages()
    try:
        from numba.core.compiler_lock import global_compiler_lock
        from numba.core.registry import cpu_target
        from numba.core.runtime.nrt import rtsys

        context = cpu_target.target_context
        initialize, refresh = rtsys.initialize, context.refresh
    except (ImportError, AttributeError) as e:
        log.debug("numba's runtime is not where featurestore looks for it (%s)", e)
        return False
    initialize(context)  # compiles NRT with LLVM: the largest step
    release_llvm_pages()
    with global_compiler_lock:
        refresh()  # what numba's first compile or cache load does next
    release_llvm_pages()
    _prepared = True
    return True


def library_mappings(maps: Path = Path("/proc/self/maps")) -> list[tuple[int, int]]:
    """Address ranges of the LLVM library's read-only mappings in this process."""
    out = []
    try:
        lines = maps.read_text().splitlines()
    except OSError:
        return []
    for line in lines:
        parts = line.split()
        if len(parts) >= 6 and LIBRARY in parts[5] and "w" not in parts[1]:
            lo, hi = (int(x, 16) for x in parts[0].split("-"))
            out.append((lo, hi))
    return out


def release_llvm_pages() -> int:
    """Advise the kernel to page LLVM's code out of this process; returns the bytes advised."""
    if not sys.platform.startswith("linux"):
        return 0
    libc = ctypes.CDLL(None, use_errno=True)
    madvise = libc.madvise
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    madvise.restype = ctypes.c_int
    advised = 0
    for lo, hi in library_mappings():
        if madvise(lo, hi - lo, _MADV_PAGEOUT) == 0:
            advised += hi - lo
        else:  # EINVAL before Linux 5.4: nothing to gain, nothing lost
            log.debug("madvise(MADV_PAGEOUT) failed: errno %d", ctypes.get_errno())
            return advised
    return advised
