"""Which definition a ClickHouse table's rows were written for.

Redis keeps a layout marker beside a data version's rows (``redis_wire.py``); a ClickHouse
table's columns, names and types, are its layout (``sql.table_columns``). A definition
can change a feature's dtype under the same name (or the entity's key type), and a
data-version table created for the old one would then be read as the new: strings
served as PRESENT int64 values, int64 keys looked up as strings (every row NOT_FOUND).
So the columns of a data version's table are compared with the reading definition's once
per (table, layout) per process, and a table of another layout is UNAVAILABLE to it (and
refuses its writes), as in Redis. A version's table is created once, by its
materialization, for one layout, and never again under that name: the verdict can be
kept. Version 0 (pushes before any materialization) is not checked: one view's layouts
share its table, which is created empty, and a check there would make a view whose
definition changed before anything was pushed UNAVAILABLE until re-materialized, where
Redis answers NOT_FOUND (its marker comes with the first write). Limits: a string
feature and a float32 vector share a column type (Nullable(String)), so a change between
those two is not seen; a table dropped and created again by hand under the same name is
seen by a process only after it restarts.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from featurestore.errors import Unavailable
from featurestore.model import FeatureView
from featurestore.sources.clickhouse.sql import table_columns

TABLE_COLUMNS = (
    "SELECT name, type FROM system.columns WHERE database = {db:String} AND table = {table:String} "
    "ORDER BY position"
)
_MAX_KNOWN = 4096


class LayoutMismatch(Unavailable):
    """A table holds rows written for another definition of the view."""


class Layouts:
    def __init__(self, database: str) -> None:
        self._database = database
        self._known: dict[tuple[str, str], str | None] = {}  # (table, layout) -> the problem, or None

    async def check(
        self, run: Callable[[Callable[[Any], Any]], Awaitable[Any]], view: FeatureView, table: str
    ) -> None:
        """Raise LayoutMismatch when ``table`` was created for another layout of ``view``
        (``run``: the pool's, to query ClickHouse). A table that does not exist passes:
        the read or write that follows reports it."""
        key = (table, view.layout)
        if key not in self._known:
            params = {"db": self._database, "table": table}
            found = await run(lambda c: c.query(TABLE_COLUMNS, parameters=params).result_rows)
            if not found:
                return
            if len(self._known) >= _MAX_KNOWN:
                self._known.clear()
            expected = table_columns(view)
            columns = [(str(name), str(ch_type)) for name, ch_type in found]
            self._known[key] = None if columns == expected else _mismatch(view, table, columns, expected)
        problem = self._known[key]
        if problem is not None:
            raise LayoutMismatch(problem)

    def forget(self, table: str) -> None:
        """A table dropped (a new one of that name may come with another layout)."""
        for key in [k for k in self._known if k[0] == table]:
            del self._known[key]


def _mismatch(
    view: FeatureView, table: str, columns: list[tuple[str, str]], expected: list[tuple[str, str]]
) -> str:
    differ = [f"{n} {t}" for n, t in columns if (n, t) not in expected]
    wanted = [f"{n} {t}" for n, t in expected if (n, t) not in columns]
    return (
        f"view {view.name!r}: table {table} holds rows written for another definition of the view "
        f"(columns {', '.join(differ) or '-'} where this one has {', '.join(wanted) or '-'}); "
        "materialize the view for its current definition"
    )
