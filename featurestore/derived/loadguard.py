"""A load that would compile: refused, so a serving process never compiles a kernel.

Importing a generated module asks numba for its kernel's explicit signature; numba looks
in its on-disk cache and, when nothing loadable is there, compiles on the spot without
raising: the index or data file missing (deleted, a cleared tmpfs under
``NUMBA_CACHE_DIR``, another worker's ``compiler.forget`` while this one loads), or the
cache directory not writable (numba then looks in another place, ``~/.cache/numba``, where
nothing was built). That compile would hold Python's lock for ~0.5 s in the serving
process. numba's event API (``numba.core.event``, documented) announces each compile
before it starts; a listener raising there stops it, and the load fails like one of a
damaged cache file: ``compiler`` forgets the module and builds it again in its build
process. Only compiles of the generated module's own functions in the loading thread
are refused (the listener sees every thread's compiles, and a trusted module imported
by the generated one may compile its own functions, given a signature, at import: as
any module does, whose import is not the load's to refuse). Refusing the kernel's
compile refuses its callees' too: numba compiles them from within it.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Iterator
from typing import Any


class CompileDuringLoad(RuntimeError):
    """numba found no loadable cache entry for a kernel and was about to compile it."""


@functools.cache
def _refusing_listener() -> type:
    from numba.core import event

    class Refuse(event.Listener):
        def __init__(self, module: str) -> None:
            self.module = module
            self.thread = threading.get_ident()

        def on_start(self, ev: Any) -> None:
            dispatcher = (ev.data or {}).get("dispatcher")
            defined_in = getattr(getattr(dispatcher, "py_func", None), "__module__", None)
            if threading.get_ident() == self.thread and defined_in == self.module:
                raise CompileDuringLoad(
                    f"{self.module}: numba found no loadable cache entry for it and would compile "
                    "it in this process (its cache files are missing, or not where this process "
                    "looks: is the cache directory writable?)"
                )

        def on_end(self, ev: Any) -> None:
            pass

    return Refuse


@contextlib.contextmanager
def no_compile(module: str) -> Iterator[None]:
    """Within: a numba compile, started by this thread, of a function of ``module`` (the
    name it is imported under) raises ``CompileDuringLoad``."""
    from numba.core import event

    with event.install_listener("numba:compile", _refusing_listener()(module)):
        yield
