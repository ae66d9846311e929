"""DAG bookkeeping: which tasks a finished task makes READY or SKIPPED.

Each task counts its unmet dependencies; a SUCCEEDED task decrements its dependents' counts
(O(out-degree)); a task that ends any other way skips its PENDING descendants, transitively,
naming the task at the root of the failure.
"""

from __future__ import annotations

from aiobatch.model import TaskRec
from aiobatch.states import TaskState


def upstream_reason(task: TaskRec) -> str:
    """Why the dependents of a task that did not succeed are skipped."""
    if task.state is TaskState.SKIPPED and task.reason:
        return task.reason  # keep naming the root cause
    word = "upstream_failed" if task.state is TaskState.FAILED else "upstream_cancelled"
    return f"{word}: {task.name}"


def after_task_finished(task: TaskRec) -> tuple[list[TaskRec], list[TaskRec]]:
    """Dependents that became ready, and descendants to skip (PENDING ones only)."""
    ready: list[TaskRec] = []
    skipped: list[TaskRec] = []
    if task.state is TaskState.SUCCEEDED:
        for dependent in task.dependents:
            dependent.unmet -= 1
            if dependent.unmet == 0 and dependent.state is TaskState.PENDING:
                ready.append(dependent)
        return ready, skipped
    seen: set[int] = set()
    stack = [d for d in task.dependents]
    while stack:
        dependent = stack.pop()
        if dependent.state is not TaskState.PENDING or id(dependent) in seen:
            continue
        seen.add(id(dependent))
        skipped.append(dependent)
        stack.extend(dependent.dependents)
    return ready, skipped


def count_unmet(task: TaskRec) -> int:
    """Dependencies that have not SUCCEEDED, counted afresh (after a reload or a retry)."""
    tasks = task.job.tasks
    return sum(tasks[dep].state is not TaskState.SUCCEEDED for dep in set(task.defn.depends_on))


def waiting_for(task: TaskRec) -> list[str]:
    """Names of the dependencies a PENDING task still waits for."""
    tasks = task.job.tasks
    return [
        name
        for name in dict.fromkeys(task.defn.depends_on)
        if tasks[name].state is not TaskState.SUCCEEDED
    ]
