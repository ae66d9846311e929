"""A job's ``depends_on`` entries: names or ``{task, when, by_index}``, checked (known,
not itself, not twice with different conditions, no cycle, ``by_index`` only between tasks of
the same instance count) and applied to the resolved tasks.

How a condition meets ``on_failure``: a task that a dependent waits on with ``finished`` or
``partly_succeeded`` is expected to fail in part, so its failure never winds the job down
(its ``on_failure`` reads ``continue``): the dependent runs, and the job still ends FAILED.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from msgspec.structs import replace

from aiobatch.dag import find_cycles
from aiobatch.spec_types import Dependency, TaskDef, TaskSpec, When
from aiobatch.units import shown

# Conditions under which a dependency that failed is still waited on, not a stop.
TOLERANT: frozenset[When] = frozenset({"finished", "partly_succeeded"})


def as_dependency(entry: str | Dependency) -> Dependency:
    return Dependency(task=entry) if isinstance(entry, str) else entry


def check_dependencies(
    tasks: Sequence[tuple[int, TaskSpec]], index_of: Mapping[str, int], errors: list[str]
) -> None:
    """Each entry names another task of the job, once, with one condition; no cycle."""
    edges: dict[str, list[str]] = {}
    for i, task in tasks:
        seen: dict[str, Dependency] = {}
        names: list[str] = []
        for j, entry in enumerate(task.depends_on):
            dep = as_dependency(entry)
            where = f"$.tasks[{i}].depends_on[{j}]"
            names.append(dep.task)
            if dep.task not in index_of:
                errors.append(f"{where}: unknown task {shown(dep.task)}")
            elif dep.task == task.name:
                errors.append(f"{where}: task {dep.task!r} depends on itself")
            if dep.by_index and dep.when != "succeeded":
                errors.append(
                    f"{where}.when: {dep.when!r} does not go with by_index: one instance "
                    "starts once its counterpart SUCCEEDED (use when: succeeded)"
                )
            first = seen.setdefault(dep.task, dep)
            if first != dep:
                errors.append(
                    f"{where}: task {dep.task!r} is listed twice with different conditions"
                )
        if index_of.get(task.name) == i:
            edges[task.name] = names
    for cycle in find_cycles(edges):
        if len(cycle) == 2:
            continue  # a self-dependency, reported above in plainer words
        # Point at the edge that closes the cycle; "a -> b" reads "a depends on b".
        last, first_name = cycle[-2], cycle[-1]
        j = edges[last].index(first_name)
        errors.append(
            f"$.tasks[{index_of[last]}].depends_on[{j}]: dependency cycle {' -> '.join(cycle)}"
        )


def apply_dependencies(
    specs: Sequence[tuple[int, TaskSpec]], resolved: Sequence[TaskDef], errors: list[str]
) -> list[TaskDef]:
    """The resolved tasks with their dependencies: names, conditions, by-index edges, and
    ``on_failure`` as a tolerant dependent makes it. Checked already by
    ``check_dependencies``; the instance counts of by-index edges are checked here."""
    by_name = {task.name: task for task in resolved}
    tolerated: set[str] = set()
    out: list[TaskDef] = []
    for (i, spec), task in zip(specs, resolved, strict=True):
        deps = {d.task: d for d in map(as_dependency, spec.depends_on)}
        for j, entry in enumerate(spec.depends_on):
            dep = as_dependency(entry)
            other = by_name.get(dep.task)
            if dep.by_index and other is not None and other.instances != task.instances:
                errors.append(
                    f"$.tasks[{i}].depends_on[{j}].by_index: {task.name!r} has "
                    f"{task.instances} instances and {dep.task!r} {other.instances}: by_index "
                    "joins tasks of the same instance count"
                )
        tolerated.update(d.task for d in deps.values() if d.when in TOLERANT)
        out.append(
            replace(
                task,
                depends_on=tuple(deps),
                conditions={n: d.when for n, d in deps.items() if d.when != "succeeded"},
                by_index=tuple(n for n, d in deps.items() if d.by_index),
            )
        )
    return [
        replace(task, on_failure="continue") if task.name in tolerated else task for task in out
    ]
