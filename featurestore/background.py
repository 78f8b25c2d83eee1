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
MAX_RESTART_DELAY_S = 60.0
STEADY_S = 60.0  # a run this long resets the delay to its first value


async def supervised(name: str, job: Callable[[], Awaitable[None]], delay: float = RESTART_DELAY_S) -> None:
    """Run ``job`` until this task is cancelled, restarting it after it returns or
    fails: ``delay`` seconds, doubled at each restart up to a minute (no restart storm),
    back to ``delay`` after a run of a minute."""
    first, loop = delay, asyncio.get_running_loop()
    while True:
        started = loop.time()
        try:
            await job()
            log.error("background task %s ended; restarting it", name)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is None or task.cancelling():
                raise  # shutting down
            log.exception("background task %s was cut off; restarting it", name)
        except Exception:
            log.exception("background task %s failed; restarting it", name)
        task = asyncio.current_task()
        if task is not None and task.cancelling():  # the job swallowed a shutdown's cancel
            raise asyncio.CancelledError
        metrics.BACKGROUND_TASK_RESTARTS.labels(name).inc()
        delay = first if loop.time() - started >= STEADY_S else delay
        await asyncio.sleep(delay)
        delay = min(delay * 2, MAX_RESTART_DELAY_S)
