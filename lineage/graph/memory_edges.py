"""The in-process graph's edges (lineage/graph/memory.py): every edge with its validity,
indexed both ways, and the walks over them. A base class of InMemoryGraph, kept apart so
each module stays one noun."""

from __future__ import annotations

import heapq
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from lineage.graph.base import MAX_WALK, MAX_WALK_STEPS, walk_too_large
from lineage.graph.topology import RECENT, GraphEdge

Edge = tuple[str, str, str]  # kind, from, to


@dataclass(slots=True)
class Validity:
    valid_from: int
    valid_to: int | None = None
    role: str = ""
    project: str = ""  # whose definitions opened it; "" for edges learnt from serving

    def live(self, at: int | None) -> bool:
        if at is None:
            return self.valid_to is None
        return self.valid_from <= at and (self.valid_to is None or at < self.valid_to)


class Edges:
    """Edges as (kind, from, to) with their validity, and the adjacency indexes both ways."""

    def __init__(self) -> None:
        self._edges: dict[Edge, Validity] = {}  # definition and event edges
        self._out_index: defaultdict[tuple[str, str], set[str]] = defaultdict(set)  # (kind, from) -> to
        self._in_index: defaultdict[tuple[str, str], set[str]] = defaultdict(set)  # (kind, to) -> from

    def _drop_edge(self, edge: Edge) -> None:
        kind, a, b = edge
        if self._edges.pop(edge, None) is not None:
            self._out_index[(kind, a)].discard(b)
            self._in_index[(kind, b)].discard(a)

    def _add_edge(self, edge: Edge, validity: Validity) -> None:
        kind, a, b = edge
        self._edges[edge] = validity
        self._out_index[(kind, a)].add(b)
        self._in_index[(kind, b)].add(a)

    def _out(self, kind: str, src: str, at: int | None) -> list[str]:
        targets = self._out_index.get((kind, src), ())
        return sorted(b for b in targets if self._edges[(kind, src, b)].live(at))

    def _in(self, kind: str, dst: str, at: int | None) -> list[str]:
        sources = self._in_index.get((kind, dst), ())
        return sorted(a for a in sources if self._edges[(kind, a, dst)].live(at))

    def _walk(
        self, name: str, starts: Sequence[str], depth: int, step: str, at: int | None, limit: int = MAX_WALK
    ) -> set[str]:
        """Features within ``depth`` live DERIVED_FROM hops of any of ``starts`` (one walk
        for all, the starts not included): at most ``limit`` features and MAX_WALK_STEPS
        edges examined, else TooLarge (it runs on the serving event loop)."""
        index = self._out_index if step == "out" else self._in_index
        start = set(starts)
        reached: set[str] = set()
        frontier = list(start)
        examined = 0
        for _ in range(depth):
            nxt = []
            for node in frontier:
                for other in index.get(("DERIVED_FROM", node), ()):
                    examined += 1
                    if examined > MAX_WALK_STEPS:
                        raise walk_too_large(name, depth, steps=True)
                    if other in start or other in reached:
                        continue
                    edge = ("DERIVED_FROM", node, other) if step == "out" else ("DERIVED_FROM", other, node)
                    if self._edges[edge].live(at):
                        reached.add(other)
                        nxt.append(other)
            if len(reached) > limit:
                raise walk_too_large(name, depth)
            frontier = nxt
        return reached

    @staticmethod
    def _newest(edges: list[GraphEdge]) -> list[GraphEdge]:
        """A node's runs and data versions pile up: only the RECENT newest of one kind go
        to the walk (topology keeps no more), as the Bolt adapter's LIMIT does."""
        if len(edges) <= RECENT or not edges[0].at_ms:
            return edges
        return heapq.nsmallest(RECENT, edges, key=lambda e: (-e.at_ms, e.source, e.target))
