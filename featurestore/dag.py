"""Walks over dependency graphs (derived features, derived views): dependency order and
cycles. Iterative, with an explicit stack: a valid chain of thousands of derived
features must not reach Python's recursion limit (1,000 frames), and each node is
visited once however many paths reach it (a 30-feature chain where each feature reads
the two before it has 1.3 million paths)."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping, Sequence
from typing import TypeVar

T = TypeVar("T", bound=Hashable)


def post_order(roots: Iterable[T], deps: Callable[[T], Iterable[T]]) -> list[T]:
    """Every node reachable from ``roots``, each after the nodes it depends on, each once.
    An edge back to a node still being walked is skipped: callers refuse cycles first."""
    done: dict[T, None] = {}
    walking: set[T] = set()
    for root in roots:
        if root in done:
            continue
        walking.add(root)
        stack: list[tuple[T, Iterator[T]]] = [(root, iter(deps(root)))]
        while stack:
            node, rest = stack[-1]
            for nxt in rest:
                if nxt not in done and nxt not in walking:
                    walking.add(nxt)
                    stack.append((nxt, iter(deps(nxt))))
                    break
            else:
                stack.pop()
                walking.discard(node)
                done[node] = None
    return list(done)


def find_cycle(graph: Mapping[str, Sequence[str]]) -> list[str] | None:
    """A cycle as its path, first node repeated at the end (``[a, b, a]``), or None.
    Starts from the nodes in sorted order, so the same graph names the same cycle."""
    state: dict[str, int] = {}  # 1 on the path, 2 done
    for start in sorted(graph):
        if start in state:
            continue
        state[start] = 1
        path = [start]
        rests = [iter(graph.get(start, ()))]
        while path:
            for nxt in rests[-1]:
                seen = state.get(nxt)
                if seen == 1:
                    return [*path[path.index(nxt) :], nxt]
                if seen is None:
                    state[nxt] = 1
                    path.append(nxt)
                    rests.append(iter(graph.get(nxt, ())))
                    break
            else:
                state[path.pop()] = 2
                rests.pop()
    return None
