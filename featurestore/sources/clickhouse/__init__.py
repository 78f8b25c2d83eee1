"""The ClickHouse online store: ``source.py`` (the ``OnlineSource``), ``options.py`` (its
configuration), ``sql.py`` (tables and queries), ``pool.py`` (the threads calls run on),
``codec.py`` (values in and out), ``failures.py`` (naming a failed call), ``expiry.py``
(replaced versions' tables, dropped when their grace period ends).

Options and SQL import without the driver; ``ClickHouseOnlineSource`` and
``ClickHousePool`` load clickhouse-connect (the ``clickhouse`` extra) on first use, so
``featurestore ddl`` and config checks work on an install without it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from featurestore.sources.clickhouse.options import ClickHouseOptions, check_embedded_workers
from featurestore.sources.clickhouse.sql import online_table_ddl, table_name

if TYPE_CHECKING:
    from featurestore.sources.clickhouse.pool import ClickHousePool
    from featurestore.sources.clickhouse.source import ClickHouseOnlineSource

__all__ = [
    "ClickHouseOnlineSource",
    "ClickHouseOptions",
    "ClickHousePool",
    "check_embedded_workers",
    "online_table_ddl",
    "table_name",
]

_LAZY = {
    "ClickHouseOnlineSource": "featurestore.sources.clickhouse.source",
    "ClickHousePool": "featurestore.sources.clickhouse.pool",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
