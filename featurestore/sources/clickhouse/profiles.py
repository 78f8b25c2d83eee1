"""Reference profiles of data versions in ClickHouse: one small table per view and data
version, ``{online table}__profile`` (one base64 ``String`` row), dropped with the
version's table. Inserted through the client's insert path (the body), not a query
parameter: a profile is ~300 KB and HTTP query strings are capped at 1 MB."""

from __future__ import annotations

import base64
from typing import Any


def profile_table(table: str) -> str:
    return f"{table}__profile"


def write(client: Any, db: str, table: str, blob: bytes) -> None:
    name = profile_table(table)
    client.command(f"DROP TABLE IF EXISTS `{db}`.`{name}`")
    client.command(f"CREATE TABLE `{db}`.`{name}` (`blob` String) ENGINE = Log")
    client.insert(f"`{db}`.`{name}`", [[base64.b64encode(blob).decode()]], column_names=["blob"])


def read(client: Any, db: str, table: str) -> bytes | None:
    name = profile_table(table)
    if not client.command(f"EXISTS TABLE `{db}`.`{name}`"):
        return None
    rows = client.query(f"SELECT `blob` FROM `{db}`.`{name}` LIMIT 1").result_rows
    return base64.b64decode(rows[0][0]) if rows else None


def drop(client: Any, db: str, table: str) -> None:
    client.command(f"DROP TABLE IF EXISTS `{db}`.`{profile_table(table)}`")
