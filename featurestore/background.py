"""Supervision of a serving process's long-lived background tasks.

Each task (``registry-apply``, ``registry-watch``, ``metrics-flush``, ...) loops for the
life of the process; nothing awaits it until shutdown. One that ended by accident (an
exception its loop does not catch, a ``CancelledError`` raised by a library although
nobody cancelled it) would stop its job silently: a server that never applies another
registry change, with nothing to say so. ``supervised`` logs such an end, counts it in
``featurestore_background_task_restarts_total{task}`` and runs the job again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from featurestore import metrics

log = logging.getLogger("featurestore")

RESTART_DELAY_S = 1.0


async def supervised(name: str, job: Callable[[], Awaitable[None]], delay: float = RESTART_DELAY_S) -> None:
    """Run ``job`` until this task is cancelled, restarting it ``delay`` seconds after
    it returns or fails."""
    while True:
        try:
            await job()
            log.error("background task %s ended; restarting it in %.1f s", name, delay)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is None or task.cancelling():
                raise  # shutting down
            log.exception("background task %s was cut off; restarting it in %.1f s", name, delay)
        except Exception:
            log.exception("background task %s failed; restarting it in %.1f s", name, delay)
        metrics.BACKGROUND_TASK_RESTARTS.labels(name).inc()
        await asyncio.sleep(delay)
