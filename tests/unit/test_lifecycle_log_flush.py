"""Rate-limited log counts in the commands that run until stopped (``stream run``,
``lineage consume``): written every second and at the stop (featurestore/logs.py)."""

from __future__ import annotations

import asyncio
import logging

import pytest

from featurestore import logs


async def test_the_count_of_a_repeated_line_is_written_when_the_command_stops_within_the_interval(
    caplog: pytest.LogCaptureFixture,
) -> None:
    name = "tests.rdkafka-like"
    logs.limit_repeats(name)
    logger = logging.getLogger(name)
    flusher = asyncio.create_task(logs.flush_periodically(records_only=True))
    with caplog.at_level(logging.WARNING, logger=name):
        for _ in range(5):
            logger.warning("broker 127.0.0.1:9 connection refused")
        await asyncio.sleep(0.05)
        flusher.cancel()  # the stop, well within the 10 s interval
        await asyncio.gather(flusher, return_exceptions=True)
    lines = [r.getMessage() for r in caplog.records if r.name == name]
    assert len(lines) == 2, lines  # the first, then the count of the 4 held back
    assert lines[1].startswith("broker 127.0.0.1:9 connection refused") and "4" in lines[1]
    assert [getattr(r, "occurrences", None) for r in caplog.records if r.name == name] == [None, 4]
