"""Per-row statuses and event timestamps of a join's views, shared by their columns."""

from __future__ import annotations

from typing import NamedTuple

from featurestore.model import Status


class ViewOutcome(NamedTuple):
    """Per-row statuses and event timestamps of one view, shared by its columns.

    A derived feature's outcome combines those of the stored views it reads: the most
    severe status (Status values grow with severity: PRESENT < NOT_FOUND <
    OUTSIDE_MAX_AGE < UNAVAILABLE) and the oldest event timestamp."""

    view: str
    statuses: list[Status]
    event_ts_us: list[int | None]
    all_present: bool
    unavailable: bool = False
