"""Failed ClickHouse calls: which errors are the backend's, and one line naming each."""

from __future__ import annotations

from clickhouse_connect.driver.exceptions import ClickHouseError, OperationalError

from featurestore.errors import Unavailable
from featurestore.model import FeatureView
from featurestore.sources.base import DataMissing
from featurestore.sources.clickhouse.sql import UNKNOWN_TABLE

# Errors a ClickHouse call can fail with when the backend (not our code) misbehaves.
BACKEND_ERRORS = (ClickHouseError, OSError, Unavailable)  # OSError covers TimeoutError


def describe(e: BaseException) -> str:
    """One line naming the failure. clickhouse-connect wraps transport failures in an
    OperationalError whose text is generic or carries the request URL (a fresh query id
    each time); the urllib3 reason under it says what happened."""
    cause = e.__cause__
    if isinstance(e, OperationalError) and cause is not None:
        reason = getattr(cause, "reason", None)
        return f"cannot reach ClickHouse: {_short(reason if isinstance(reason, BaseException) else cause)}"
    return _short(e)


def _short(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0][:300] if text else type(e).__name__


def unprepared_summary(unprepared: dict[str, tuple[FeatureView, str]]) -> str:
    """The views whose tables could not be created, and the first cause."""
    names = sorted({view.name for view, _ in unprepared.values()})
    first_cause = next(iter(unprepared.values()))[1]
    return f"tables of view(s) {', '.join(names)} not created: {first_cause}"


def write_error(store: str, table: str, data_version: int, e: BaseException) -> Unavailable:
    """A failed write: DataMissing when the version's table is gone (dropped by hand, or
    by a run that published first and dropped this one's as an orphan), else Unavailable."""
    if getattr(e, "code", None) == UNKNOWN_TABLE and data_version > 0:
        return DataMissing(f"clickhouse store {store!r}: table {table} is gone: re-materialize the view")
    return Unavailable(f"clickhouse store {store!r}: write to {table} failed: {describe(e)}")
