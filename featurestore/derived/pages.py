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

``tests/unit/test_derived_kernels.py`` checks that the library is still mapped under
this name, so a rename in llvmlite fails a test instead of silently costing memory.
"""

from __future__ import annotations

import ctypes
import logging
import sys
from pathlib import Path

log = logging.getLogger(__name__)

LIBRARY = "libllvmlite"
_MADV_PAGEOUT = 21  # linux/mman.h


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
