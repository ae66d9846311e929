"""Per-index dependency gates: index i of a task joined ``by_index`` to other tasks may
start once instance i of each of them has SUCCEEDED.

Each index of such a task counts its closed gates (``TaskRec.gates``, built by the
resolver). When the count reaches zero the index opens: a fresh one waits in ``task.open``,
a held record not waiting out a backoff joins the retry queue. When a dependency ends, the
indices whose counterpart did not succeed never open: they are taken out of waiting, for the
engine to cancel. These functions change records only; the engine records the transitions.

Part of the pure core: no I/O, and nothing from the executors, hooks or the runtime.
"""

from __future__ import annotations

from aiobatch import resolver
from aiobatch.model import InstanceRec, TaskRec
from aiobatch.states import TASK_TERMINAL, InstanceState


def all_closed(task: TaskRec) -> bool:
    """The task is joined by index, none of its indices is open and some still may open:
    it stays PENDING even once its whole-task dependencies are met."""
    return task.gates is not None and not task.dispatchable and task.index_deps_left != 0


def open_gate(task: TaskRec, index: int) -> bool:
    """Instance ``index`` of one of the task's by-index dependencies SUCCEEDED. True when
    that opened the index: the task may start, or dispatch it."""
    if task.gates is None or task.state in TASK_TERMINAL or task.job.stopping is not None:
        return False
    task.gates[index] -= 1
    if task.gates[index]:
        return False
    inst = task.instances[index]
    if inst is None:
        task.open.append(index)
    elif inst in task.held and inst.not_before is None:
        task.held.remove(inst)
        task.retry_queue.append(inst)
    else:
        return False  # stopped meanwhile
    return True


def never_opening(task: TaskRec, dep: TaskRec) -> list[tuple[InstanceRec, str]]:
    """``dep`` ended: the task's waiting instances whose counterpart did not succeed, taken
    out of waiting (a record made for a fresh one), each with the reason it is cancelled."""
    if task.state in TASK_TERMINAL or task.job.stopping is not None:
        return []  # a job winding down has cancelled what waits already
    reason = resolver.upstream_reason(dep)
    closed: list[tuple[InstanceRec, str]] = []
    for index, upstream in enumerate(dep.instances):
        if upstream is not None and upstream.state is InstanceState.SUCCEEDED:
            continue
        inst = task.instances[index]
        if inst is None:
            inst = task.record(index)
        elif inst in task.held:
            task.held.remove(inst)
        else:
            continue  # ran already (before a retry of the job), or stopped
        closed.append((inst, f"{reason}[{index}]"))
    return closed
