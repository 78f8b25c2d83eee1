"""Materialization progress: a bar (tqdm) on a terminal, plain log lines elsewhere (a
bar's carriage returns make one unreadable line of a log file)."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

from featurestore.materialize import Progress

log = logging.getLogger("featurestore.materialize")

LOG_INTERVAL_SECONDS = 5.0  # a line every 5 s after the first: a 100k-row demo view (~2 s) logs one


class ProgressReporter:
    def __init__(self, *, quiet: bool = False, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.quiet = quiet
        self.terminal = self.stream.isatty()
        self._bar: Any = None

    def start(self, view: str, source_name: str) -> Callable[[Progress], None] | None:
        """The progress callback of one view's run (None when quiet)."""
        self.finish()
        if self.quiet:
            return None
        if self.terminal:
            from tqdm import tqdm

            self._bar = tqdm(desc=view, unit=" rows", unit_scale=True, file=self.stream, dynamic_ncols=True)
            bar = self._bar

            def update_bar(p: Progress) -> None:
                if p.total is not None and bar.total != p.total:
                    bar.total = p.total
                bar.update(p.rows - bar.n)

            return update_bar
        log.info("%s: materializing from %s", view, source_name)
        last = [float("-inf")]  # the first batch is logged at once: a sign of life

        def log_line(p: Progress) -> None:
            now = time.monotonic()
            if now - last[0] < LOG_INTERVAL_SECONDS:
                return
            last[0] = now
            total = f"/{p.total:,}" if p.total else ""
            eta = f", ETA {p.eta_seconds:.0f}s" if p.eta_seconds is not None else ""
            log.info("%s: %s%s rows, %s rows/s%s", view, f"{p.rows:,}", total, f"{p.rate:,.0f}", eta)

        return log_line

    def finish(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
