"""After a restart: rebuild a job's records from its stored rows, and match the attempts
still running (containers) to the instances that were active."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TypeVar

from aiobatch.attempt import AttemptKey, FoundAttempt, Usage
from aiobatch.model import InstanceRec, JobRec
from aiobatch.resolver import count_unmet, regate
from aiobatch.schema import InstanceRow, JobRow
from aiobatch.states import JOB_TERMINAL, TASK_TERMINAL, InstanceState, TaskState


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
    job.unfinished_tasks = sum(task.state not in TASK_TERMINAL for task in job.tasks.values())
    lost: list[InstanceRec] = []
    for r in sorted(instances, key=lambda r: (r.task, r.index)):
        if r.task not in job.tasks:  # a job whose stored spec cannot be read shows no tasks
            continue
        task = job.tasks[r.task]
        inst = task.record(r.index)
        inst.attempt, inst.state, inst.reason = r.attempt, r.state, r.reason
        inst.lost, inst.interrupted = r.lost, r.interrupted
        if r.state in (InstanceState.STAGING, InstanceState.RUNNING, InstanceState.UPLOADING):
            inst.stop_reason = r.stop_reason  # a stop asked for before the crash still holds
        inst.exit_code, inst.signal, inst.pid = r.exit_code, r.signal, r.pid
        inst.started_at, inst.ended_at, inst.duration_s = r.started_at, r.ended_at, r.duration_s
        inst.not_before = r.not_before if r.state is InstanceState.PENDING else None
        if r.cpu_user_s is not None or r.max_rss_bytes is not None:
            task.set_usage(inst, Usage(r.cpu_user_s, r.cpu_system_s, r.max_rss_bytes))
        if r.state is InstanceState.SUCCEEDED:
            task.succeeded += 1
        elif r.state is InstanceState.FAILED:
            task.failed += 1
        elif r.state is InstanceState.CANCELLED:
            task.cancelled += 1
        elif r.state is InstanceState.PENDING:
            # Waiting out a backoff: held until it ends (the engine times it).
            (task.held.add if inst.not_before is not None else task.retry_queue.append)(inst)
        else:
            lost.append(inst)
    for task in job.tasks.values():
        task.unmet = count_unmet(task)  # a condition may count the dependency's successes
        regate(task)
    for task in job.tasks.values():
        if task.state in TASK_TERMINAL and task.state is not TaskState.SKIPPED:
            # As the engine does: never-started instances of an ended task count as cancelled.
            task.cancelled += task.fresh
            task.fresh = 0
    return job, lost


F = TypeVar("F")


def take_over(
    job: JobRec, lost: list[InstanceRec], found: dict[AttemptKey, F]
) -> tuple[list[tuple[InstanceRec, F | None]], list[InstanceRec]]:
    """Match the attempts found after a restart (taken out of ``found``) to a job's instances.

    Returns the instances to adopt (with what was found of their attempt) and those really
    lost. An active instance whose attempt is found is adopted. One that was UPLOADING has
    ended and its end is stored: it is adopted with nothing found, to upload again (uploads
    are idempotent), never to run the program twice. A waiting one
    whose next attempt is found was started in the crash's commit window, before its start
    was stored: it is adopted too, so no attempt runs unrecorded or twice.
    """
    adopted: list[tuple[InstanceRec, F | None]] = []
    really_lost: list[InstanceRec] = []
    for inst in lost:
        key = (job.id, inst.task.name, inst.index, inst.attempt)
        if key in found:
            adopted.append((inst, found.pop(key)))
        elif inst.state is InstanceState.UPLOADING:
            adopted.append((inst, None))
        else:
            really_lost.append(inst)
    if job.state in JOB_TERMINAL:
        return adopted, really_lost
    for key in [k for k in found if k[0] == job.id]:
        unrecorded = _started_unrecorded(job, key)
        if unrecorded is not None:
            adopted.append((unrecorded, found.pop(key)))
    return adopted, really_lost


def claimable(
    jobs: list[tuple[JobRec, list[InstanceRec]]],
) -> Callable[[AttemptKey], bool]:
    """Whether ``take_over`` could match an attempt of these jobs (each with its instances
    that were active) to an instance: the active one's attempt, or the next attempt of one
    that waits. Any other attempt (one run again since, or of an instance that ended) is
    no instance's, whatever its record says."""
    active = {(job.id, i.task.name, i.index, i.attempt) for job, lost in jobs for i in lost}
    waiting = {job.id: job for job, _ in jobs if job.state not in JOB_TERMINAL}

    def claimed(key: AttemptKey) -> bool:
        if key in active:
            return True
        job = waiting.get(key[0])
        return job is not None and _may_have_started(job, key)

    return claimed


def _started_unrecorded(job: JobRec, key: AttemptKey) -> InstanceRec | None:
    """The waiting instance whose next attempt ``key`` is, if it could have been started
    (taken out of those waiting for a slot)."""
    if not _may_have_started(job, key):
        return None
    _, name, index, _ = key
    task = job.tasks[name]
    if task.instances[index] is None and index in task.open:  # no longer waiting for a slot
        task.open.remove(index)
    return task.record(index)


def _may_have_started(job: JobRec, key: AttemptKey) -> bool:
    """Whether ``key`` is the next attempt of a waiting instance of ``job``."""
    _, name, index, attempt = key
    task = job.tasks.get(name)
    if task is None or not 0 <= index < task.total:
        return False
    # Its start is on record, and the engine starts nothing whose dependencies (or by-index
    # counterparts) are not met: that they are not met as stored only means their ends were
    # in the same commit window. Their attempts are adopted too and end as they did.
    if task.state in TASK_TERMINAL:
        return False
    inst = task.instances[index]
    if inst is None:
        return attempt == 1
    return inst.state is InstanceState.PENDING and inst.attempt == attempt


def is_orphan(found: FoundAttempt, recovered: Mapping[str, JobRec]) -> bool:
    """Whether an attempt found at start, and claimed by no instance, may be removed.

    Attempts of jobs that had ended are left alone, and so are the failed attempts a task
    keeps (``keep_failed``): both are there on purpose.
    """
    job = recovered.get(found.job_id)
    if job is None:
        return not found.job_id  # ours, but with labels that name nothing
    task = job.tasks.get(found.task)
    if task is None or not 0 <= found.index < task.total:
        return True
    inst = task.instances[found.index]
    if inst is None or not task.defn.keep_failed:
        return True
    # An earlier attempt still there, or this one ended FAILED: it was kept.
    return not (
        found.attempt < inst.attempt
        or (found.attempt == inst.attempt and inst.state is InstanceState.FAILED)
    )
