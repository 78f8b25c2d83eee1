"""Replaced data versions in ClickHouse. A table cannot carry a TTL of its own, so
``expire_version`` records it in ``{db}.__expiry`` with the time it may be dropped, and
the serving processes' health round drops what is due, its profile with it. A
publication also lists the versions it must still record (``unexpired``): those a
materialization killed after publishing never recorded, which nothing would drop."""

from __future__ import annotations

import re
from typing import Any

from featurestore.sources.clickhouse import profiles

_VERSION = re.compile(r"[0-9]+")


def record(client: Any, db: str, table: str, drop_after: int) -> None:
    client.command(
        f"INSERT INTO `{db}`.`__expiry` VALUES ({{t:String}}, toDateTime({{d:UInt32}}))",
        parameters={"t": table, "d": drop_after},
    )


def due(client: Any, db: str) -> list[str]:
    rows = client.query(f"SELECT `table` FROM `{db}`.`__expiry` WHERE `drop_after` <= now()").result_rows
    return [str(table) for (table,) in rows]


def drop(client: Any, db: str, table: str) -> None:
    client.command(f"DROP TABLE IF EXISTS `{db}`.`{table}`")
    profiles.drop(client, db, table)
    client.command(f"DELETE FROM `{db}`.`__expiry` WHERE `table` = {{t:String}}", parameters={"t": table})


def unexpired(client: Any, db: str, prefix: str, below: int) -> list[int]:
    """Versions under ``below`` whose table (``{prefix}{n}``) exists and is not recorded
    for dropping: one query of ``system.tables``. Version 0 only when it holds a row:
    every server's ``prepare`` creates it, empty, and creates it again once dropped."""
    rows = client.query(
        "SELECT name FROM system.tables WHERE database = {db:String} AND startsWith(name, {prefix:String})"
        f" AND name NOT IN (SELECT `table` FROM `{db}`.`__expiry`)",
        parameters={"db": db, "prefix": prefix},
    ).result_rows
    suffixes = (str(name)[len(prefix) :] for (name,) in rows)
    versions = sorted(int(s) for s in suffixes if _VERSION.fullmatch(s) and int(s) < below)
    if versions[:1] == [0] and not client.query(f"SELECT 1 FROM `{db}`.`{prefix}0` LIMIT 1").result_rows:
        versions = versions[1:]
    return versions
