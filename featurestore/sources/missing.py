"""What a store that can lose data knows about the data versions it serves: the views
found without their data (``OnlineSource.missing``), mirrored in the
``featurestore_view_data_missing{store, view}`` gauge, with one log line per change.

A finding is about one (view, data version): one made for a version the server no
longer serves (a probe that overlapped a registry swap, a request still on the previous
state) is ignored, and moving a view to another version forgets what was found about
the old one. Findings are made off the hot path: by a store's health probe, and by a
read only when it fails for missing data.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from types import MappingProxyType

from prometheus_client import Gauge

from featurestore import metrics

log = logging.getLogger(__name__)


class MissingData:
    def __init__(self, store: str) -> None:
        self._store = store
        self._served: dict[str, int] = {}  # view -> the data version served
        self._missing: dict[str, str] = {}  # view -> why its data counts as missing
        self.report: Mapping[str, str] = MappingProxyType(self._missing)

    def serving(self, versions: Mapping[str, int]) -> None:
        """The views served now and their data versions (after a registry swap)."""
        for view in list(self._missing):
            if versions.get(view) != self._served.get(view):
                self._clear(view, "moved to another data version" if view in versions else "no longer served")
        for view in self._served.keys() - versions.keys():
            self._gauge(view).set(0)
        for view in versions.keys() - self._served.keys():
            self._gauge(view).set(0)  # the series exists from the start, at 0
        self._served = dict(versions)

    def checked(self) -> list[tuple[str, int]]:
        """The (view, data version) pairs a probe checks: every served version but 0,
        which may legitimately hold nothing (never materialized, nothing pushed)."""
        return [(view, version) for view, version in self._served.items() if version > 0]

    def found_missing(self, view: str, data_version: int, reason: str) -> None:
        if self._served.get(view) != data_version or view in self._missing:
            return
        self._missing[view] = reason
        self._gauge(view).set(1)
        log.warning(
            "store %s: data version %d of view %s is missing: %s", self._store, data_version, view, reason
        )

    def found_present(self, found: Iterable[tuple[str, int]]) -> None:
        for view, data_version in found:
            if view in self._missing and self._served.get(view) == data_version:
                self._clear(view, f"data version {data_version} is back")

    def _clear(self, view: str, why: str) -> None:
        del self._missing[view]
        self._gauge(view).set(0)
        log.info("store %s: view %s no longer misses its data (%s)", self._store, view, why)

    def _gauge(self, view: str) -> Gauge:
        return metrics.VIEW_DATA_MISSING.labels(self._store, view)
