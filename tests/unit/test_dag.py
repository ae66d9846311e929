"""Property tests of cycle finding, on raw graphs and through resolve_spec's error messages."""

from __future__ import annotations

import itertools
import re
from collections.abc import Mapping, Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aiobatch.dag import dependency_order, find_cycles
from aiobatch.errors import SpecError
from aiobatch.spec import resolve_spec

SETTINGS = settings(max_examples=100, deadline=None)
Graph = dict[str, list[str]]


def name(i: int) -> str:
    return f"t{i}"


@st.composite
def acyclic_graphs(draw: st.DrawFn, min_size: int = 1, max_size: int = 8) -> Graph:
    """Node i depends only on nodes of lower index; dict and edge order are shuffled."""
    n = draw(st.integers(min_size, max_size))
    graph: Graph = {}
    for i in range(n):
        deps = draw(st.lists(st.integers(0, i - 1), unique=True)) if i else []
        graph[name(i)] = [name(d) for d in deps]
    order = draw(st.permutations(list(graph)))
    return {node: graph[node] for node in order}


@st.composite
def directed_graphs(draw: st.DrawFn) -> Graph:
    """Any directed graph, self-loops included."""
    n = draw(st.integers(1, 7))
    return {
        name(i): [name(d) for d in draw(st.lists(st.integers(0, n - 1), unique=True, max_size=4))]
        for i in range(n)
    }


def reachable(graph: Mapping[str, Sequence[str]], start: str) -> set[str]:
    seen, stack = {start}, [start]
    while stack:
        for nxt in graph.get(stack.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                stack.append(nxt)
    return seen


def is_acyclic(graph: Mapping[str, Sequence[str]]) -> bool:
    """Kahn's algorithm: independent of the DFS under test."""
    indegree = dict.fromkeys(graph, 0)
    for deps in graph.values():
        for dep in deps:
            indegree[dep] += 1
    queue = [n for n, d in indegree.items() if d == 0]
    removed = 0
    while queue:
        node = queue.pop()
        removed += 1
        for dep in graph[node]:
            indegree[dep] -= 1
            if indegree[dep] == 0:
                queue.append(dep)
    return removed == len(graph)


def check_cycle_shape(graph: Mapping[str, Sequence[str]], cycle: list[str]) -> None:
    assert len(cycle) >= 2
    assert cycle[0] == cycle[-1]
    assert len(set(cycle[:-1])) == len(cycle) - 1, f"a node repeats inside {cycle}"
    for a, b in itertools.pairwise(cycle):
        assert b in graph[a], f"{a} -> {b} is not an edge, in {cycle}"


@SETTINGS
@given(graph=acyclic_graphs())
def test_acyclic_graph_has_no_cycle(graph: Graph) -> None:
    assert list(find_cycles(graph)) == []


@SETTINGS
@given(graph=acyclic_graphs(), ghosts=st.lists(st.sampled_from(["x", "y", "zz"]), max_size=3))
def test_edges_to_unknown_nodes_are_ignored(graph: Graph, ghosts: list[str]) -> None:
    first = next(iter(graph))
    graph[first] = [*graph[first], *dict.fromkeys(ghosts)]
    assert list(find_cycles(graph)) == []


@SETTINGS
@given(graph=acyclic_graphs(min_size=2), data=st.data())
def test_one_back_edge_makes_a_cycle(graph: Graph, data: st.DataObject) -> None:
    n = len(graph)
    high = data.draw(st.integers(1, n - 1))
    low = data.draw(st.integers(0, high - 1))
    hi, lo = name(high), name(low)
    if lo not in reachable(graph, hi):
        graph[hi].append(lo)  # make sure the back edge closes a loop
    graph[lo].append(hi)  # the back edge: a lower index depending on a higher one

    cycles = list(find_cycles(graph))

    assert cycles, "a back edge over a path must make a cycle"
    keys = [frozenset(c) for c in cycles]
    assert len(keys) == len(set(keys)), "one cycle per distinct set of nodes"
    for cycle in cycles:
        check_cycle_shape(graph, cycle)
        # The graph without the back edge is acyclic, so every cycle goes through it.
        pairs = set(itertools.pairwise(cycle))
        assert (lo, hi) in pairs, f"{cycle} does not use the back edge {lo} -> {hi}"


@SETTINGS
@given(graph=directed_graphs())
def test_cycles_found_iff_graph_is_cyclic(graph: Graph) -> None:
    cycles = list(find_cycles(graph))
    assert bool(cycles) == (not is_acyclic(graph))
    for cycle in cycles:
        check_cycle_shape(graph, cycle)


def test_self_loop_and_two_cycle() -> None:
    assert list(find_cycles({"a": ["a"]})) == [["a", "a"]]
    assert list(find_cycles({"a": ["b"], "b": ["a"]})) == [["a", "b", "a"]]
    assert list(find_cycles({"a": ["b"], "b": []})) == []


def test_deep_chain_does_not_recurse() -> None:
    n = 5000  # deeper than the default recursion limit
    graph = {name(i): [name(i + 1)] for i in range(n)}
    graph[name(n)] = [name(0)]
    (cycle,) = find_cycles(graph)
    assert len(cycle) == n + 2
    assert cycle[0] == cycle[-1] == name(0)


# -- dependency order --------------------------------------------------------------------------


def on_a_cycle_or_after_one(graph: Mapping[str, Sequence[str]]) -> set[str]:
    """Nodes that can reach a cycle through their dependencies (a cycle's own included)."""
    return {node for node in graph if not is_acyclic(induced(graph, reachable(graph, node)))}


def induced(graph: Mapping[str, Sequence[str]], nodes: set[str]) -> Graph:
    return {n: [d for d in graph[n] if d in nodes] for n in graph if n in nodes}


@SETTINGS
@given(graph=directed_graphs(), ghosts=st.lists(st.sampled_from(["x", "y"]), max_size=2))
def test_dependency_order_puts_every_node_after_its_dependencies(
    graph: Graph, ghosts: list[str]
) -> None:
    with_ghosts = dict(graph)
    first = next(iter(graph))
    with_ghosts[first] = [*graph[first], *dict.fromkeys(ghosts)]  # unknown: ignored

    order = dependency_order(with_ghosts)

    assert len(order) == len(set(order))
    assert set(order) == set(graph) - on_a_cycle_or_after_one(graph)
    position = {node: at for at, node in enumerate(order)}
    for node in order:
        for dep in graph[node]:
            assert position[dep] < position[node], f"{node} before its dependency {dep}"


@SETTINGS
@given(graph=acyclic_graphs())
def test_dependency_order_of_independent_nodes_is_the_mapping_order(graph: Graph) -> None:
    independent: Graph = {node: [] for node in graph}
    assert dependency_order(independent) == list(graph)
    assert len(dependency_order(graph)) == len(graph)


def test_a_chain_written_backwards_comes_out_forwards() -> None:
    n = 5000  # no recursion, whatever the depth
    graph = {name(i): [name(i - 1)] if i else [] for i in reversed(range(n))}
    assert dependency_order(graph) == [name(i) for i in range(n)]


# -- through resolve_spec --------------------------------------------------------------------


def spec(graph: Mapping[str, Sequence[str]]) -> dict[str, Any]:
    return {
        "name": "job",
        "tasks": [
            {"name": task, "command": "true", "depends_on": list(deps)}
            for task, deps in graph.items()
        ],
    }


CYCLE_ERROR = re.compile(r"\$\.tasks\[(\d+)\]\.depends_on\[(\d+)\]: dependency cycle (.+)")


def test_cycle_message_names_the_closing_edge() -> None:
    with pytest.raises(SpecError) as caught:
        resolve_spec(spec({"a": ["b"], "b": ["c"], "c": ["a"]}))
    assert caught.value.errors == ("$.tasks[2].depends_on[0]: dependency cycle a -> b -> c -> a",)


def test_two_disjoint_cycles_are_both_reported() -> None:
    graph = {"a": ["b"], "b": ["a"], "c": [], "d": ["c", "e"], "e": ["d"]}
    with pytest.raises(SpecError) as caught:
        resolve_spec(spec(graph))
    assert caught.value.errors == (
        "$.tasks[1].depends_on[0]: dependency cycle a -> b -> a",
        "$.tasks[4].depends_on[0]: dependency cycle d -> e -> d",
    )


def test_self_dependency_and_unknown_dependency() -> None:
    with pytest.raises(SpecError) as caught:
        resolve_spec(spec({"a": ["a"], "b": ["a", "nope"]}))
    errors = caught.value.errors
    assert "$.tasks[0].depends_on[0]: task 'a' depends on itself" in errors
    assert "$.tasks[1].depends_on[1]: unknown task 'nope'" in errors
    # A self-dependency may also be reported as the cycle it is, at the same path.
    assert set(errors) <= {
        "$.tasks[0].depends_on[0]: task 'a' depends on itself",
        "$.tasks[1].depends_on[1]: unknown task 'nope'",
        "$.tasks[0].depends_on[0]: dependency cycle a -> a",
    }


@st.composite
def messy_graphs(draw: st.DrawFn) -> Graph:
    """Any dependencies: cycles, self-dependencies, unknown names, repeats."""
    n = draw(st.integers(1, 6))
    names = [name(i) for i in range(n)]
    targets = st.sampled_from([*names, "ghost"])
    return {node: draw(st.lists(targets, max_size=3)) for node in names}


@SETTINGS
@given(graph=messy_graphs())
def test_any_dependency_mistake_is_a_spec_error_with_a_path(graph: Graph) -> None:
    tasks = spec(graph)["tasks"]
    try:
        job = resolve_spec(spec(graph))
    except SpecError as exc:
        errors = exc.errors
    else:
        assert is_acyclic(graph) and "ghost" not in str(graph)
        assert [list(t.depends_on) for t in job.tasks] == [
            list(dict.fromkeys(deps)) for deps in graph.values()
        ]
        return
    assert errors
    path = re.compile(r"\$\.tasks\[(\d+)\]\.depends_on\[(\d+)\]: (.+)")
    for error in errors:
        match = path.fullmatch(error)
        assert match is not None, error
        i, j, problem = int(match[1]), int(match[2]), match[3]
        dep = tasks[i]["depends_on"][j]
        assert problem in (
            f"unknown task {dep!r}",
            f"task {dep!r} depends on itself",
        ) or problem.startswith("dependency cycle "), error
        if problem.startswith("dependency cycle "):
            cycle = problem.removeprefix("dependency cycle ").split(" -> ")
            check_cycle_shape(graph, cycle)
            assert (tasks[i]["name"], dep) == (cycle[-2], cycle[-1])


def test_duplicate_task_names_in_a_cycle_are_reported_not_crashed() -> None:
    tasks = [
        {"name": "c", "command": "true", "depends_on": ["b"]},
        {"name": "a", "command": "true"},
        {"name": "b", "command": "true", "depends_on": ["a"]},
        {"name": "a", "command": "true", "depends_on": ["b"]},
    ]
    with pytest.raises(SpecError) as caught:
        resolve_spec({"name": "job", "tasks": tasks})
    assert "$.tasks[3].name: duplicate task name 'a' (first at $.tasks[1])" in caught.value.errors


@SETTINGS
@given(graph=acyclic_graphs())
def test_acyclic_spec_resolves(graph: Graph) -> None:
    job = resolve_spec(spec(graph))
    assert [t.name for t in job.tasks] == list(graph)
    assert [list(t.depends_on) for t in job.tasks] == list(graph.values())


@SETTINGS
@given(graph=acyclic_graphs(min_size=2), data=st.data())
def test_cyclic_spec_reports_each_cycle_with_its_field_path(
    graph: Graph, data: st.DataObject
) -> None:
    n = len(graph)
    high = data.draw(st.integers(1, n - 1))
    low = data.draw(st.integers(0, high - 1))
    hi, lo = name(high), name(low)
    if lo not in reachable(graph, hi):
        graph[hi].append(lo)
    graph[lo].append(hi)
    tasks = spec(graph)["tasks"]

    with pytest.raises(SpecError) as caught:
        resolve_spec(spec(graph))

    assert caught.value.errors
    for error in caught.value.errors:
        match = CYCLE_ERROR.fullmatch(error)
        assert match is not None, error
        i, j, text = int(match[1]), int(match[2]), match[3]
        cycle = text.split(" -> ")
        check_cycle_shape(graph, cycle)
        # The path points at the edge that closes the cycle: cycle[-2] depends on cycle[-1].
        assert tasks[i]["name"] == cycle[-2]
        assert tasks[i]["depends_on"][j] == cycle[-1]


WHEN = ["succeeded", "finished", "partly_succeeded"]


@SETTINGS
@given(graph=messy_graphs(), data=st.data())
def test_conditions_resolve_or_fail_with_a_path(graph: Graph, data: st.DataObject) -> None:
    """Entries written as names or as ``{task, when}``: a valid spec keeps each dependency once
    with its condition; a task listed twice with different conditions is an error at the
    second entry; the other mistakes read as before."""
    written: dict[str, list[Any]] = {}
    for node, deps in graph.items():
        written[node] = [
            dep if (when := data.draw(st.sampled_from([None, *WHEN]))) is None
            else {"task": dep, "when": when}
            for dep in deps
        ]  # fmt: skip
    tasks = [{"name": n, "command": "true", "depends_on": d} for n, d in written.items()]

    def when_of(entry: Any) -> str:
        return "succeeded" if isinstance(entry, str) else str(entry["when"])

    def target(entry: Any) -> str:
        return entry if isinstance(entry, str) else str(entry["task"])

    try:
        job = resolve_spec({"name": "job", "tasks": tasks})
    except SpecError as exc:
        errors = exc.errors
    else:
        assert is_acyclic(graph) and "ghost" not in str(graph)
        for task, entries in zip(job.tasks, written.values(), strict=True):
            expected = {target(e): when_of(e) for e in entries}
            assert list(task.depends_on) == list(expected)
            assert task.conditions == {k: w for k, w in expected.items() if w != "succeeded"}
        tolerated = {target(e) for es in written.values() for e in es if when_of(e) != "succeeded"}
        assert {t.name for t in job.tasks if t.on_failure == "continue"} == tolerated
        return
    path = re.compile(r"\$\.tasks\[(\d+)\]\.depends_on\[(\d+)\]: (.+)")
    for error in errors:
        match = path.fullmatch(error)
        assert match is not None, error
        i, j, problem = int(match[1]), int(match[2]), match[3]
        listed = tasks[i]["depends_on"]
        dep = target(listed[j])
        if problem.endswith("is listed twice with different conditions"):
            earlier = [when_of(e) for e in listed[:j] if target(e) == dep]
            assert earlier and earlier[0] != when_of(listed[j]), error
            continue
        assert problem in (
            f"unknown task {dep!r}",
            f"task {dep!r} depends on itself",
        ) or problem.startswith("dependency cycle "), error
