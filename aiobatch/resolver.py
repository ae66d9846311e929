"""DAG bookkeeping: what a task's end means for the tasks that depend on it.

Each task counts its unmet whole-task dependencies. When a task ends, each edge to a dependent
is met or not by its condition (``succeeded``: it SUCCEEDED; ``finished``: any final state;
``partly_succeeded``: at least one instance SUCCEEDED), O(out-degree). A dependent whose edge
cannot be met any more is SKIPPED, and that is an end too: the walk goes on through its own
edges, so a ``finished`` dependent of a skipped task still runs.

By-index edges gate each index of the dependent (the engine opens them as instances of the
dependency succeed). When the dependency ends, a dependent still PENDING is skipped if not one
of its instances succeeded; otherwise the indices that will never open are swept (cancelled).
"""

from __future__ import annotations

from collections import deque

import msgspec

from aiobatch.model import TaskRec
from aiobatch.spec_types import When
from aiobatch.states import TASK_TERMINAL, InstanceState, TaskState


def upstream_reason(task: TaskRec) -> str:
    """Why the dependents of a task that did not succeed are skipped."""
    if task.state is TaskState.SKIPPED and task.reason:
        return task.reason  # keep naming the root cause
    word = "upstream_failed" if task.state is TaskState.FAILED else "upstream_cancelled"
    return f"{word}: {task.name}"


def edge_met(state: TaskState, succeeded: int, when: When) -> bool:
    """Whether a dependency that ended in ``state`` lets a dependent waiting ``when`` start."""
    if when == "finished":
        return True
    if when == "partly_succeeded":
        return succeeded > 0
    return state is TaskState.SUCCEEDED


class Settled(msgspec.Struct):
    """What the end of one task (and the skips it causes) means for the others."""

    # Whose whole-task dependencies may all be met now (the engine decides if they start).
    ready: list[TaskRec] = msgspec.field(default_factory=list)
    skipped: list[TaskRec] = msgspec.field(default_factory=list)  # PENDING tasks that never run
    # (dependent, ended by-index dependency): indices that will never open are cancelled.
    swept: list[tuple[TaskRec, TaskRec]] = msgspec.field(default_factory=list)


def after_task_finished(task: TaskRec) -> Settled:
    settled = Settled()
    skipped: set[int] = set()

    def skip(dependent: TaskRec) -> None:
        skipped.add(id(dependent))
        settled.skipped.append(dependent)
        work.append(dependent)

    work = [task]
    while work:
        ended = work.pop()
        state = TaskState.SKIPPED if id(ended) in skipped else ended.state
        for dependent, when in ended.dependents:
            if dependent.state is not TaskState.PENDING or id(dependent) in skipped:
                continue
            if edge_met(state, ended.succeeded, when):
                dependent.unmet -= 1
                if dependent.unmet == 0:
                    settled.ready.append(dependent)
            else:
                skip(dependent)
        for dependent in ended.index_dependents:
            if dependent.state in TASK_TERMINAL or id(dependent) in skipped:
                continue
            dependent.index_deps_left -= 1
            if state is not TaskState.SUCCEEDED:
                if ended.succeeded == 0 and dependent.state is TaskState.PENDING:
                    skip(dependent)
                    continue
                settled.swept.append((dependent, ended))
            if dependent.state is TaskState.PENDING and dependent.unmet == 0:
                settled.ready.append(dependent)
    return settled


def _met_now(dep: TaskRec, when: When) -> bool:
    return dep.state in TASK_TERMINAL and edge_met(dep.state, dep.succeeded, when)


def count_unmet(task: TaskRec) -> int:
    """Whole-task dependencies not met, counted afresh (after a reload or a retry)."""
    tasks, defn = task.job.tasks, task.defn
    return sum(
        not _met_now(tasks[name], defn.conditions.get(name, "succeeded"))
        for name in defn.depends_on
        if name not in defn.by_index
    )


def regate(task: TaskRec) -> None:
    """A by-index dependent's gates afresh from its dependencies' instances (after a reload
    or a retry): open fresh indices may start, waiting records whose counterpart has not
    succeeded are held until it does."""
    if task.gates is None:
        return
    gates = [0] * task.total
    left = 0
    for name in task.defn.by_index:
        dep = task.job.tasks[name]
        left += dep.state not in TASK_TERMINAL
        for i, inst in enumerate(dep.instances):
            if inst is None or inst.state is not InstanceState.SUCCEEDED:
                gates[i] += 1
    task.gates, task.index_deps_left = gates, left
    task.open = deque(i for i, inst in enumerate(task.instances) if inst is None and not gates[i])
    for inst in [i for i in task.retry_queue if gates[i.index]]:
        task.retry_queue.remove(inst)
        task.held.add(inst)


def waiting_for(task: TaskRec) -> list[str]:
    """Names of the dependencies a PENDING task still waits for."""
    tasks, defn = task.job.tasks, task.defn
    waiting = []
    for name in defn.depends_on:
        dep = tasks[name]
        if name in defn.by_index:
            if dep.state not in TASK_TERMINAL:
                waiting.append(name)
        elif not _met_now(dep, defn.conditions.get(name, "succeeded")):
            waiting.append(name)
    return waiting
