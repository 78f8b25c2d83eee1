"""The ClickHouse online store: ``source.py`` (the ``OnlineSource``), ``options.py`` (its
configuration), ``sql.py`` (tables and queries), ``pool.py`` (the threads calls run on),
``codec.py`` (values in and out), ``failures.py`` (naming a failed call)."""

from featurestore.sources.clickhouse.options import ClickHouseOptions, check_embedded_workers
from featurestore.sources.clickhouse.pool import ClickHousePool
from featurestore.sources.clickhouse.source import ClickHouseOnlineSource
from featurestore.sources.clickhouse.sql import online_table_ddl, table_name

__all__ = [
    "ClickHouseOnlineSource",
    "ClickHouseOptions",
    "ClickHousePool",
    "check_embedded_workers",
    "online_table_ddl",
    "table_name",
]
