"""Graph helpers for the task DAG: cycle finding and topological order, iterative (no recursion)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence


def find_cycles(depends_on: Mapping[str, Sequence[str]]) -> Iterator[list[str]]:
    """Yield cycles as paths ``[a, b, ..., a]`` where each node depends on the next.

    One cycle per distinct set of nodes; edges to unknown nodes are ignored.
    """
    white, grey, black = 0, 1, 2
    colour = dict.fromkeys(depends_on, white)
    seen: set[frozenset[str]] = set()
    for root in depends_on:
        if colour[root] != white:
            continue
        path = [root]
        iterators = [iter(depends_on[root])]
        colour[root] = grey
        while iterators:
            step = next(iterators[-1], None)
            if step is None:
                colour[path.pop()] = black
                iterators.pop()
                continue
            state = colour.get(step)
            if state == white:
                colour[step] = grey
                path.append(step)
                iterators.append(iter(depends_on[step]))
            elif state == grey:
                cycle = [*path[path.index(step) :], step]
                key = frozenset(cycle)
                if key not in seen:
                    seen.add(key)
                    yield cycle


def dependency_order(depends_on: Mapping[str, Sequence[str]]) -> list[str]:
    """Every node after those it depends on; otherwise in the mapping's order. Nodes of a
    cycle, and those that depend on one, are left out; edges to unknown nodes are ignored."""
    waiting_on = {
        node: {dep for dep in deps if dep in depends_on} for node, deps in depends_on.items()
    }
    dependents: dict[str, list[str]] = {node: [] for node in depends_on}
    for node, deps in waiting_on.items():
        for dep in deps:
            dependents[dep].append(node)
    order = [node for node, deps in waiting_on.items() if not deps]
    at = 0
    while at < len(order):
        for dependent in dependents[order[at]]:
            waiting = waiting_on[dependent]
            waiting.discard(order[at])
            if not waiting:
                order.append(dependent)
        at += 1
    return order
