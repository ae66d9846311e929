"""Rebuild a job's in-memory records from its stored rows."""

from __future__ import annotations

from aiobatch.model import InstanceRec, JobRec
from aiobatch.states import TASK_TERMINAL, InstanceState, TaskState
from aiobatch.store import InstanceRow, JobRow


def restore_job(
    row: JobRow, tasks: dict[str, tuple[str, str | None]], instances: list[InstanceRow]
) -> tuple[JobRec, list[InstanceRec]]:
    """The job as stored, and its instances that were active (their runtime is gone)."""
    job = JobRec(row.id, row.defn, row.seq, row.submitted_at)
    job.state, job.reason, job.stopping = row.state, row.reason, row.stopping
    job.started_at, job.ended_at = row.started_at, row.ended_at
    for name, task in job.tasks.items():
        state, reason = tasks[name]
        task.state, task.reason = TaskState(state), reason
    for task in job.tasks.values():
        task.unmet = sum(
            job.tasks[dep].state is not TaskState.SUCCEEDED for dep in set(task.defn.depends_on)
        )
    job.unfinished_tasks = sum(task.state not in TASK_TERMINAL for task in job.tasks.values())
    lost: list[InstanceRec] = []
    for r in sorted(instances, key=lambda r: (r.task, r.index)):
        task = job.tasks[r.task]
        inst = task.record(r.index)
        inst.attempt, inst.state, inst.reason = r.attempt, r.state, r.reason
        inst.exit_code, inst.signal, inst.pid = r.exit_code, r.signal, r.pid
        inst.started_at, inst.ended_at, inst.duration_s = r.started_at, r.ended_at, r.duration_s
        if r.state is InstanceState.SUCCEEDED:
            task.succeeded += 1
        elif r.state is InstanceState.FAILED:
            task.failed += 1
        elif r.state is InstanceState.CANCELLED:
            task.cancelled += 1
        elif r.state is InstanceState.PENDING:
            task.retry_queue.append(inst)
        else:
            lost.append(inst)
    for task in job.tasks.values():
        if task.state in TASK_TERMINAL and task.state is not TaskState.SKIPPED:
            # As the engine does: never-started instances of an ended task count as cancelled.
            task.cancelled += task.fresh
            task.fresh = 0
    return job, lost
