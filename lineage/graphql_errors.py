"""What a GraphQL caller is told when a request fails, and what the log keeps (review s58 #8).

* The graph cannot answer (``GraphUnavailable``: down, hung, overloaded): the caller gets
  the fixed message ``lineage graph unavailable`` with ``extensions.code`` UNAVAILABLE,
  never the driver's text (it named the graph's internal host:port). The details go to
  the log at WARNING, the first error and then at most one line a minute with a count,
  never with a traceback: a page polling a down graph logged a traceback per request.
* Any other exception of a resolver is ours (a bug, a statement the server refuses): the
  caller gets ``lineage graph error`` with code INTERNAL; the log keeps the ERROR with its
  traceback (strawberry's ``process_errors``).
* A variable holding a string that is not valid Unicode (a lone surrogate, ``"\\ud800"``,
  is valid JSON) is the caller's: refused before any resolver runs, with code
  BAD_USER_INPUT, logged at DEBUG. The Bolt driver failed to encode it, an ERROR with a
  60-line traceback per request; the in-process graph answered as for any other text.
  String literals in the query cannot hold one: graphql-core's lexer refuses them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any

from graphql import ExecutionResult, GraphQLError
from strawberry.extensions import SchemaExtension

from lineage.graph.base import GraphUnavailable

log = logging.getLogger("lineage.graphql")

UNAVAILABLE_MESSAGE = "lineage graph unavailable"
INTERNAL_MESSAGE = "lineage graph error"
# While the graph stays unavailable, its errors are logged again at most this often (with
# how many requests failed meanwhile): a page that polls gets one line a minute, not one
# per request, and the log still shows the outage lasting.
REPEAT_SECONDS = 60.0


class Outage:
    """Logs an unavailable graph's first error, then at most one line every REPEAT_SECONDS
    with how many errors came since the line before."""

    def __init__(self, clock: Any = time.monotonic) -> None:
        self._clock = clock
        self._logged: float | None = None  # when the last line was logged
        self._since = 0  # errors since that line, not logged

    def failed(self, error: Exception) -> None:
        now = self._clock()
        if self._logged is not None and now - self._logged < REPEAT_SECONDS:
            self._since += 1
            return
        more = f" ({self._since} more since the last such line)" if self._since else ""
        log.warning("lineage graph unavailable to GraphQL: %s%s", error, more)
        self._logged, self._since = now, 0


OUTAGE = Outage()


def original(error: GraphQLError) -> BaseException | None:
    """The exception a resolver raised (None: a GraphQL error, the caller's)."""
    cause = error.original_error
    return None if cause is None or isinstance(cause, GraphQLError) else cause


def log_errors(errors: list[GraphQLError]) -> list[GraphQLError]:
    """Log the caller's errors at DEBUG and an unavailable graph through OUTAGE; return
    the rest, ours, for strawberry to log at ERROR with their tracebacks."""
    ours = []
    for error in errors:
        cause = original(error)
        if cause is None:
            log.debug("graphql request refused: %s", error.message)
        elif isinstance(cause, GraphUnavailable):
            OUTAGE.failed(cause)
        else:
            ours.append(error)
    return ours


def _masked(error: GraphQLError) -> GraphQLError:
    cause = original(error)
    if cause is None:
        return error
    unavailable = isinstance(cause, GraphUnavailable)
    return GraphQLError(
        UNAVAILABLE_MESSAGE if unavailable else INTERNAL_MESSAGE,
        nodes=error.nodes,
        path=error.path,
        extensions={"code": "UNAVAILABLE" if unavailable else "INTERNAL"},
    )


def unencodable(variables: dict[str, Any] | None) -> str | None:
    """The first variable (``$name`` and where in it) holding a string UTF-8 cannot encode."""
    stack: list[tuple[str, Any]] = [(f"${k}", v) for k, v in (variables or {}).items()]
    while stack:  # not recursive: the HTTP front bounds nesting, this need not rely on it
        where, value = stack.pop()
        if isinstance(value, dict):
            stack += [(f"{where}.{k}" if _encodes(k) else where, v) for k, v in value.items()]
            if not all(_encodes(k) for k in value):
                return where
        elif isinstance(value, list):
            stack += [(f"{where}[{i}]", v) for i, v in enumerate(value)]
        elif isinstance(value, str) and not _encodes(value):
            return where
    return None


def _encodes(text: object) -> bool:
    if not isinstance(text, str):
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class GraphErrors(SchemaExtension):
    """Refuses unencodable variables before execution; after it, replaces resolver
    exceptions by the fixed errors above (``process_errors`` has logged the originals)."""

    def on_execute(self) -> Iterator[None]:
        context = self.execution_context
        where = unencodable(context.variables)
        if where is not None:
            context.result = ExecutionResult(
                data=None,
                errors=[
                    GraphQLError(
                        f"variable {where} holds a string that is not valid Unicode (a lone surrogate)",
                        extensions={"code": "BAD_USER_INPUT"},
                    )
                ],
            )
        yield
        result = context.result
        if result is None or where is not None:
            return
        if result.errors:
            result.errors = [_masked(e) for e in result.errors]
